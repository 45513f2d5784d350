"""Environments: MinAtar construction and the non-stationarity wrapper."""

from plasticrl.envs.nonstationary import NonStationary

__all__ = ["NonStationary"]
