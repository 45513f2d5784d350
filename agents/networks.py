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
weight matrix is its head (see Note [Parameter groups] in :mod:`plasticrl.plasticity.optimizers`).

Note [Architecture variants]
    Two plasticity baselines of docs/methods.md §2 are options of the standard networks (``mlp`` and
    ``minatar_cnn``, and so of PPO's actor-critics built from them), not networks of their own:

    ``network.activation=crelu``
        :class:`plasticrl.plasticity.layers.CReLU`, ``[ReLU(x), ReLU(−x)]`` (Abbas et al., arXiv
        2303.07507). Hidden widths keep their meaning (the number of pre-activation units:
        ``hidden_sizes``, ``channels``); each CReLU doubles the fan-in of the layer after it
        (``activation_expansion``), so the next Linear, MinAtarCNN's ``fc`` and the head are
        built wider and the network has about twice the weights of its ReLU twin. A
        parameter-matched comparison halves ``hidden_sizes``/``channels`` instead.
    ``network.layernorm=true``
        A normalisation between every hidden weight layer and its activation: ``Linear → LN →
        act`` (``nn.LayerNorm(width)``) and, for MinAtarCNN's conv, ``Conv → GroupNorm(1, C) →
        act``. GroupNorm with one group normalises each sample over all of (C, H, W), exactly the
        statistic of a LayerNorm over the flattened feature map, but its affine gain and bias
        are per channel (``C`` each) rather than per entry (``C·H·W``): a channel is one unit
        (docs/methods.md §3), the parameters stay 1-d — so ``param_groups`` tags them ``"vector"``
        like LayerNorm's, and no isometry step, Parseval or spectral penalty ever reads them (a
        ``LayerNorm((C, H, W))`` gain is 3-d and would be grouped as a weight matrix) — and the
        layer does not depend on the input's spatial size. The head is never normalised.
        In ``mlp`` the norm sits at the index after its Linear (``Flatten, Linear, LayerNorm,
        act, …``); in MinAtarCNN the modules are ``conv, conv_norm, conv_act, fc, fc_norm,
        fc_act, head``. Without ``layernorm`` the networks are module-for-module the plain ones.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
from plasticrl.plasticity.layers import ORTHOGONAL_MAPS, CReLU
from plasticrl.plasticity.registry import Registry, options_of
from torch import Tensor, nn

__all__ = [
    "NetworkConfig",
    "NetworkFactory",
    "NETWORKS",
    "make_network",
    "ACTIVATIONS",
    "activation_expansion",
    "orthogonal_init_",
    "applicable_keys",
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
    """Hidden activation: one of ACTIVATIONS; ``crelu`` doubles the next layer's fan-in
    (Note [Architecture variants])."""
    layernorm: bool = False
    """mlp / minatar_cnn: LayerNorm after every hidden Linear (GroupNorm(1, C) after the conv),
    before the activation; never on the head (Note [Architecture variants])."""
    init: Literal["default", "orthogonal"] = "default"
    """Weight initialisation: torch's default, or orthogonal init (gain √2 hidden, 1 head)."""
    group_size: int = 2
    """GroupSort group size for isometric networks (2 = MaxMin)."""
    orthogonal_map: str | None = None
    """Isometric networks: the orthogonal constraint's map (plasticrl.plasticity.layers.ORTHOGONAL_MAPS);
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
        if not isinstance(self.layernorm, bool):
            raise ValueError(f"network.layernorm must be true or false, got {self.layernorm!r}")


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "crelu": CReLU,
}
"""Hidden activations by config name; each is constructed with no arguments."""

NetworkFactory = Callable[[gym.Space, gym.Space, NetworkConfig], nn.Module]
NETWORKS: Registry[NetworkFactory] = Registry("network")

COMMON_KEYS = ("name", "hidden_sizes")
"""``network.*`` keys that apply to every registered network."""
MLPOptions = options_of(NetworkConfig, "MLPOptions", ("activation", "layernorm", "init"))
"""Options of ``mlp``."""
MinAtarCNNOptions = options_of(
    NetworkConfig, "MinAtarCNNOptions", ("channels", "activation", "layernorm", "init")
)
"""Options of ``minatar_cnn``."""


def applicable_keys(name: str) -> frozenset[str]:
    """The ``network.*`` keys that apply to network ``name``.

    A registered network: the common keys plus its options. A ``package.module:callable``
    factory receives the whole :class:`NetworkConfig`, so every key applies to it.
    """
    options = NETWORKS.options(name)
    if options is None:
        return frozenset(f.name for f in dataclasses.fields(NetworkConfig))
    return frozenset(COMMON_KEYS) | {f.name for f in dataclasses.fields(options)}


def _n_actions(action_space: gym.Space) -> int:
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(f"this network needs a Discrete action space, got {action_space}")
    return int(action_space.n)


def _obs_shape(observation_space: gym.Space) -> tuple[int, ...]:
    if not isinstance(observation_space, gym.spaces.Box):
        raise ValueError(f"this network needs a Box observation space, got {observation_space}")
    return tuple(observation_space.shape)


def activation_expansion(name: str) -> int:
    """How many times wider an activation's output is than its input (2 for ``crelu``, else 1).

    Read from the activation class's ``expansion`` attribute, so an activation added to
    ``ACTIVATIONS`` with one is sized correctly too.

    Example:
        >>> activation_expansion("crelu"), activation_expansion("relu")
        (2, 1)
    """
    return int(getattr(ACTIVATIONS[name], "expansion", 1))


def make_network(observation_space: gym.Space, action_space: gym.Space, cfg: NetworkConfig) -> nn.Module:
    """Build the network ``cfg.name`` for the given spaces."""
    return NETWORKS.get(cfg.name)(observation_space, action_space, cfg)


def orthogonal_init_(module: nn.Module, gain: float = math.sqrt(2.0)) -> nn.Module:
    """Orthogonal **initialisation** of every Linear/Conv weight (zero biases), in place.

    This is an initial value only: training leaves the orthogonal set immediately. For weights
    that *stay* orthogonal use an orthogonal constraint (``plasticrl.plasticity.layers``).
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


@NETWORKS.register("mlp", options=MLPOptions)
def mlp(observation_space: gym.Space, action_space: gym.Space, cfg: NetworkConfig) -> nn.Module:
    """Flatten → [Linear → (LayerNorm) → activation] × len(hidden_sizes) → Linear(n_actions).

    With ``activation=crelu`` each Linear after a hidden layer (and the head) takes twice that
    layer's width as input (Note [Architecture variants]).
    """
    in_dim = int(np.prod(_obs_shape(observation_space)))
    expansion = activation_expansion(cfg.activation)
    layers: list[nn.Module] = [nn.Flatten()]
    for width in cfg.hidden_sizes:
        layers.append(nn.Linear(in_dim, width))
        if cfg.layernorm:
            layers.append(nn.LayerNorm(width))
        layers.append(ACTIVATIONS[cfg.activation]())
        in_dim = width * expansion
    head = nn.Linear(in_dim, _n_actions(action_space))
    net = nn.Sequential(*layers, head)
    return _apply_init(net, head, cfg)


class MinAtarCNN(nn.Module):
    """The MinAtar reference Q-network: Conv(C,16,3,s1) → act → Linear(16·(H−2)(W−2), 128) → act → head.

    Expects channel-first ``(B, C, H, W)`` float observations (10×10 for MinAtar). With
    ``cfg.layernorm``, ``conv_norm`` (GroupNorm(1, channels)) and ``fc_norm`` (LayerNorm(hidden))
    sit before ``conv_act`` and ``fc_act``; with ``activation=crelu`` the dense layer's fan-in is
    ``2·channels·(H−2)(W−2)`` and the head's ``2·hidden`` (Note [Architecture variants]).

    Attributes:
        conv_norm: the conv's normalisation, or None without ``layernorm``.
        fc_norm: the dense layer's normalisation, or None without ``layernorm``.
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
        expansion = activation_expansion(cfg.activation)
        hidden = cfg.hidden_sizes[-1]
        # Assigned in forward order, so named_modules() lists them as they run.
        self.conv = nn.Conv2d(c, cfg.channels, kernel_size=3, stride=1)
        self.conv_norm: nn.Module | None = nn.GroupNorm(1, cfg.channels) if cfg.layernorm else None
        self.conv_act = act()
        self.fc = nn.Linear(expansion * cfg.channels * (h - 2) * (w - 2), hidden)
        self.fc_norm: nn.Module | None = nn.LayerNorm(hidden) if cfg.layernorm else None
        self.fc_act = act()
        self.head = nn.Linear(expansion * hidden, n_actions)

    def forward(self, x: Tensor) -> Tensor:
        """Q-values ``(B, n_actions)``."""
        x = self.conv(x)
        if self.conv_norm is not None:
            x = self.conv_norm(x)
        x = self.fc(self.conv_act(x).flatten(1))
        if self.fc_norm is not None:
            x = self.fc_norm(x)
        return self.head(self.fc_act(x))


@NETWORKS.register("minatar_cnn", options=MinAtarCNNOptions)
def minatar_cnn(observation_space: gym.Space, action_space: gym.Space, cfg: NetworkConfig) -> nn.Module:
    """The MinAtar reference network (docs/methods.md §4)."""
    net = MinAtarCNN(_obs_shape(observation_space), _n_actions(action_space), cfg)
    return _apply_init(net, net.head, cfg)
