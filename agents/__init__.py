"""Agents (DQN, PPO), replay buffers and network factories.

Contains:
    AGENTS: agent name → its agent class, registered with its config class as options (the
        schema of the ``agent`` section); the class's ``loop`` names the training loop.
    AgentConfig: the union of agent config classes.

``agents`` never imports a logger: agents return metric dicts and trainers log them.
"""

import plasticrl.agents.atari_networks  # noqa: F401  (registers nature_cnn, impala_cnn)
import plasticrl.agents.isometric  # noqa: F401  (registers isometric_mlp, isometric_minatar_cnn)
from plasticrl.agents.dqn import DQNAgent, DQNConfig
from plasticrl.agents.networks import NETWORKS, NetworkConfig, make_network
from plasticrl.agents.ppo import PPOAgent, PPOConfig
from plasticrl.plasticity.registry import Registry

AgentConfig = DQNConfig | PPOConfig
"""Union of the agent config classes."""

AGENTS: Registry[type] = Registry("agent")
AGENTS.register("dqn", options=DQNConfig)(DQNAgent)
AGENTS.register("ppo", options=PPOConfig)(PPOAgent)

__all__ = [
    "AGENTS",
    "AgentConfig",
    "DQNAgent",
    "DQNConfig",
    "PPOAgent",
    "PPOConfig",
    "NETWORKS",
    "NetworkConfig",
    "make_network",
]
