"""Agents (DQN, PPO), replay buffers and network factories.

``agents`` never imports a logger: agents return metric dicts and trainers log them.
"""

from agents.networks import NETWORKS, NetworkConfig, make_network

__all__ = ["NETWORKS", "NetworkConfig", "make_network"]
