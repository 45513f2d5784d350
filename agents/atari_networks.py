"""Convolutional networks for pixel observations: the Nature CNN and the IMPALA CNN.

Contains:
    NatureCNN / nature_cnn: the DQN network of Mnih et al. 2015 ("Human-level control through deep
        reinforcement learning", Nature 518), for ``(C, 84, 84)`` frame stacks.
    ImpalaCNN / impala_cnn: the residual network of Espeholt et al. 2018 ("IMPALA", ICML; the
        "deep" network of its Figure 3), used for Procgen (Cobbe et al. 2020).

Both take channel-first ``(B, C, H, W)`` observations. When the observation space is uint8 (ALE
frames through ``AtariPreprocessing`` and ``FrameStackObservation``) the network divides its input
by 255 first, so that the replay buffer and the rollout keep raw frames; float spaces are used as
they come. Both declare ``head_names = ("head",)`` and name their layers in forward order, so the
plasticity probe, the regularizers, the interventions (ReDo, Shrink & Perturb, CBP) and the
optimizer's parameter groups find the hidden layers and the head the way they do for
``minatar_cnn``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from plasticrl.agents.networks import (
    NETWORKS,
    NetworkConfig,
    _apply_init,
    _n_actions,
    _obs_shape,
    activation_expansion,
    hidden_activation,
)
from plasticrl.plasticity.registry import options_of
from torch import Tensor, nn

__all__ = ["NatureCNN", "ImpalaCNN", "nature_cnn", "impala_cnn", "NatureCNNOptions", "ImpalaCNNOptions"]


def _input_scale(observation_space: gym.Space) -> float:
    """1/255 for uint8 pixel spaces, else 1."""
    return 1.0 / 255.0 if observation_space.dtype == np.uint8 else 1.0


def _conv_out(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


class NatureCNN(nn.Module):
    """Conv(C,32,8,s4) → act → Conv(32,64,4,s2) → act → Conv(64,64,3,s1) → act → Linear(·, hidden) → head.

    (An activation after every layer but the head.)

    ``hidden`` is 512 in Mnih et al. (``network.hidden_sizes: [512]``); 84×84 inputs give 64·7·7 = 3136
    features after the convs.
    """

    head_names = ("head",)

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, cfg: NetworkConfig, scale: float) -> None:
        super().__init__()
        if len(obs_shape) != 3:
            raise ValueError(f"nature_cnn needs (C, H, W) observations, got shape {obs_shape}")
        c, h, w = obs_shape
        for k, s in ((8, 4), (4, 2), (3, 1)):
            h, w = _conv_out(h, k, s), _conv_out(w, k, s)
        if h < 1 or w < 1:
            raise ValueError(f"nature_cnn needs H, W >= 36, got shape {obs_shape}")
        e = activation_expansion(cfg.activation)
        hidden = cfg.hidden_sizes[-1]
        self.scale = scale
        self.conv1 = nn.Conv2d(c, 32, 8, stride=4)
        self.act1 = hidden_activation(cfg)
        self.conv2 = nn.Conv2d(32 * e, 64, 4, stride=2)
        self.act2 = hidden_activation(cfg)
        self.conv3 = nn.Conv2d(64 * e, 64, 3, stride=1)
        self.act3 = hidden_activation(cfg)
        self.fc = nn.Linear(64 * e * h * w, hidden)
        self.fc_act = hidden_activation(cfg)
        self.head = nn.Linear(hidden * e, n_actions)

    def forward(self, x: Tensor) -> Tensor:
        """Outputs ``(B, n_actions)`` (Q-values or logits) from ``(B, C, H, W)`` observations."""
        if self.scale != 1.0:
            x = x * self.scale
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        x = self.act3(self.conv3(x))
        return self.head(self.fc_act(self.fc(x.flatten(1))))


class ResidualBlock(nn.Module):
    """x + Conv3×3(act(Conv3×3(act(x)))), channels kept (IMPALA)."""

    def __init__(self, channels: int, cfg: NetworkConfig) -> None:
        super().__init__()
        e = activation_expansion(cfg.activation)
        self.act0 = hidden_activation(cfg)
        self.conv0 = nn.Conv2d(channels * e, channels, 3, padding=1)
        self.act1 = hidden_activation(cfg)
        self.conv1 = nn.Conv2d(channels * e, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """The block's output, same shape as ``x``."""
        return x + self.conv1(self.act1(self.conv0(self.act0(x))))


class ImpalaStack(nn.Module):
    """Conv3×3 → MaxPool(3, s2, pad 1) → two residual blocks (IMPALA)."""

    def __init__(self, in_channels: int, channels: int, cfg: NetworkConfig) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.res0 = ResidualBlock(channels, cfg)
        self.res1 = ResidualBlock(channels, cfg)

    def forward(self, x: Tensor) -> Tensor:
        """Half the spatial size (rounded up), ``channels`` channels."""
        return self.res1(self.res0(self.pool(self.conv(x))))


class ImpalaCNN(nn.Module):
    """Three IMPALA stacks of ``(channels, 2·channels, 2·channels)`` → act → Linear(·, hidden) → act → head.

    ``channels=16`` and ``hidden_sizes: [256]`` are Espeholt et al.'s (16, 32, 32) and 256.
    """

    head_names = ("head",)

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, cfg: NetworkConfig, scale: float) -> None:
        super().__init__()
        if len(obs_shape) != 3:
            raise ValueError(f"impala_cnn needs (C, H, W) observations, got shape {obs_shape}")
        c, h, w = obs_shape
        e = activation_expansion(cfg.activation)
        self.scale = scale
        widths = (cfg.channels, 2 * cfg.channels, 2 * cfg.channels)
        stacks = []
        in_channels = c
        for width in widths:
            stacks.append(ImpalaStack(in_channels, width, cfg))
            in_channels = width
            h, w = (h + 1) // 2, (w + 1) // 2
        self.stacks = nn.Sequential(*stacks)
        self.out_act = hidden_activation(cfg)
        hidden = cfg.hidden_sizes[-1]
        self.fc = nn.Linear(in_channels * e * h * w, hidden)
        self.fc_act = hidden_activation(cfg)
        self.head = nn.Linear(hidden * e, n_actions)

    def forward(self, x: Tensor) -> Tensor:
        """Outputs ``(B, n_actions)`` from ``(B, C, H, W)`` observations."""
        if self.scale != 1.0:
            x = x * self.scale
        x = self.out_act(self.stacks(x))
        return self.head(self.fc_act(self.fc(x.flatten(1))))


NatureCNNOptions = options_of(NetworkConfig, "NatureCNNOptions", ("hidden_sizes", "activation", "init"))
"""Options of ``nature_cnn``: the dense width (``hidden_sizes[-1]``, 512 in the paper), activation, init."""
ImpalaCNNOptions = options_of(
    NetworkConfig, "ImpalaCNNOptions", ("hidden_sizes", "channels", "activation", "init")
)
"""Options of ``impala_cnn``: the dense width (256), the first stack's ``channels`` (16), activation, init."""


def _hidden_layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, nn.Linear | nn.Conv2d) and m is not net.head]


@NETWORKS.register("nature_cnn", options=NatureCNNOptions)
def nature_cnn(observation_space: gym.Space, action_space: gym.Space, cfg: NetworkConfig) -> nn.Module:
    """:class:`NatureCNN` (Mnih et al. 2015); inputs scaled by 1/255 for uint8 spaces."""
    net = NatureCNN(
        _obs_shape(observation_space), _n_actions(action_space), cfg, _input_scale(observation_space)
    )
    return _apply_init(net, net.head, cfg, _hidden_layers(net))


@NETWORKS.register("impala_cnn", options=ImpalaCNNOptions)
def impala_cnn(observation_space: gym.Space, action_space: gym.Space, cfg: NetworkConfig) -> nn.Module:
    """:class:`ImpalaCNN` (Espeholt et al. 2018); inputs scaled by 1/255 for uint8 spaces."""
    net = ImpalaCNN(
        _obs_shape(observation_space), _n_actions(action_space), cfg, _input_scale(observation_space)
    )
    return _apply_init(net, net.head, cfg, _hidden_layers(net))
