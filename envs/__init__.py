"""Environments: MinAtar construction and the non-stationarity wrapper."""

from envs.nonstationary import NonStationary

__all__ = ["NonStationary"]
