"""Network factories: the registry, its config and the standard networks.

Contains:
    NetworkConfig: the ``network.*`` config section.
    NETWORKS: the registry; a factory is ``(observation_space, action_space, cfg) -> nn.Module``.
    make_network: build by registered name or ``package.module:callable``.
    mlp: a multilayer perceptron over flattened observations.
    minatar_cnn: the MinAtar reference network (Young & Tian 2019).
    orthogonal_init_: orthogonal *initialisation* (training leaves it; not a constraint).

A network maps a batch of observations ``(B, *obs_shape)`` (float32) to ``(B, n_actions)``.
It may declare ``head_names`` (module names of its output layers); otherwise the last layer with a
weight matrix is its head (see Note [Parameter groups] in :mod:`plasticity.optimizers`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
from torch import Tensor, nn

from plasticity.layers import ORTHOGONAL_MAPS
from plasticity.registry import Registry

__all__ = [
    "NetworkConfig",
    "NetworkFactory",
    "NETWORKS",
    "make_network",
    "ACTIVATIONS",
    "orthogonal_init_",
]


@dataclass(frozen=True)
class NetworkConfig:
    """The ``network`` section: which network factory and its options."""

    name: str = "mlp"
    """Key in NETWORKS (``plasticrl list``) or ``package.module:callable``."""
    hidden_sizes: tuple[int, ...] = (128, 128)
    """MLP hidden widths; minatar_cnn uses ``hidden_sizes[-1]`` for its dense layer."""
    channels: int = 16
    """Convolutional channels (minatar_cnn)."""
    activation: str = "relu"
    """Hidden activation: one of ACTIVATIONS."""
    init: Literal["default", "orthogonal"] = "default"
    """Weight initialisation: torch's default, or orthogonal init (gain √2 hidden, 1 head)."""
    group_size: int = 2
    """GroupSort group size for isometric networks (2 = MaxMin)."""
    orthogonal_map: str | None = None
    """Isometric networks: the orthogonal constraint's map (plasticity.layers.ORTHOGONAL_MAPS);
    None = its default (qr)."""
    orthogonal_head: bool = False
    """Isometric networks: also constrain the output head (off: a free head keeps Q-value scale)."""

    def __post_init__(self) -> None:
        if not self.hidden_sizes or any(h <= 0 for h in self.hidden_sizes):
            raise ValueError(f"network.hidden_sizes must be positive widths, got {self.hidden_sizes}")
        if self.channels <= 0:
            raise ValueError(f"network.channels must be > 0, got {self.channels}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown network.activation {self.activation!r}; valid: {sorted(ACTIVATIONS)}")
        if self.orthogonal_map is not None and self.orthogonal_map not in ORTHOGONAL_MAPS:
            raise ValueError(
                f"unknown network.orthogonal_map {self.orthogonal_map!r}; valid: {sorted(ORTHOGONAL_MAPS)}"
            )
        if self.group_size < 2:
            raise ValueError(f"network.group_size must be >= 2, got {self.group_size}")


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}

NetworkFactory = Callable[[gym.Space, gym.Space, NetworkConfig], nn.Module]
NETWORKS: Registry[NetworkFactory] = Registry("network")


def _n_actions(action_space: gym.Space) -> int:
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(f"this network needs a Discrete action space, got {action_space}")
    return int(action_space.n)


def _obs_shape(observation_space: gym.Space) -> tuple[int, ...]:
    if not isinstance(observation_space, gym.spaces.Box):
        raise ValueError(f"this network needs a Box observation space, got {observation_space}")
    return tuple(observation_space.shape)


def make_network(observation_space: gym.Space, action_space: gym.Space, cfg: NetworkConfig) -> nn.Module:
    """Build the network ``cfg.name`` for the given spaces."""
    return NETWORKS.get(cfg.name)(observation_space, action_space, cfg)


def orthogonal_init_(module: nn.Module, gain: float = math.sqrt(2.0)) -> nn.Module:
    """Orthogonal **initialisation** of every Linear/Conv weight (zero biases), in place.

    This is an initial value only: training leaves the orthogonal set immediately. For weights
    that *stay* orthogonal use an orthogonal constraint (``plasticity.layers``).
    """
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.orthogonal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def _apply_init(net: nn.Module, head: nn.Module, cfg: NetworkConfig) -> nn.Module:
    if cfg.init == "orthogonal":
        orthogonal_init_(net, gain=math.sqrt(2.0))
        orthogonal_init_(head, gain=1.0)
    return net


@NETWORKS.register("mlp")
def mlp(observation_space: gym.Space, action_space: gym.Space, cfg: NetworkConfig) -> nn.Module:
    """Flatten → [Linear → activation] × len(hidden_sizes) → Linear(n_actions)."""
    in_dim = int(np.prod(_obs_shape(observation_space)))
    layers: list[nn.Module] = [nn.Flatten()]
    for width in cfg.hidden_sizes:
        layers += [nn.Linear(in_dim, width), ACTIVATIONS[cfg.activation]()]
        in_dim = width
    head = nn.Linear(in_dim, _n_actions(action_space))
    net = nn.Sequential(*layers, head)
    return _apply_init(net, head, cfg)


class MinAtarCNN(nn.Module):
    """The MinAtar reference Q-network: Conv(C,16,3,s1) → act → Linear(16·(H−2)(W−2), 128) → act → head.

    Expects channel-first ``(B, C, H, W)`` float observations (10×10 for MinAtar).
    """

    head_names = ("head",)

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, cfg: NetworkConfig) -> None:
        super().__init__()
        if len(obs_shape) != 3:
            raise ValueError(f"minatar_cnn needs (C, H, W) observations, got shape {obs_shape}")
        c, h, w = obs_shape
        if h < 3 or w < 3:
            raise ValueError(f"minatar_cnn needs H, W >= 3, got shape {obs_shape}")
        act = ACTIVATIONS[cfg.activation]
        hidden = cfg.hidden_sizes[-1]
        self.conv = nn.Conv2d(c, cfg.channels, kernel_size=3, stride=1)
        self.conv_act = act()
        self.fc = nn.Linear(cfg.channels * (h - 2) * (w - 2), hidden)
        self.fc_act = act()
        self.head = nn.Linear(hidden, n_actions)

    def forward(self, x: Tensor) -> Tensor:
        """Q-values ``(B, n_actions)``."""
        x = self.conv_act(self.conv(x))
        x = self.fc_act(self.fc(x.flatten(1)))
        return self.head(x)


@NETWORKS.register("minatar_cnn")
def minatar_cnn(observation_space: gym.Space, action_space: gym.Space, cfg: NetworkConfig) -> nn.Module:
    """The MinAtar reference network (METHODS.md §4)."""
    net = MinAtarCNN(_obs_shape(observation_space), _n_actions(action_space), cfg)
    return _apply_init(net, net.head, cfg)
