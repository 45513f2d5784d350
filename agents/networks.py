"""Network factories: the registry, its config and the standard networks.

Contains:
    NetworkConfig: the ``network.*`` config section.
    NETWORKS: the registry; a factory is ``(observation_space, action_space, cfg) -> nn.Module``.
    make_network: build by registered name or ``package.module:callable``.
    mlp: a multilayer perceptron over flattened observations.
    minatar_cnn: the MinAtar reference network (Young & Tian 2019).
    orthogonal_init_: orthogonal *initialisation* (training leaves it; not a constraint).
    hidden_activation: a hidden activation module of a config (``groupsort`` with its group size).

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

Note [Plain-layer options]
    ``network.activation=groupsort``
        :class:`plasticrl.plasticity.layers.GroupSort` with ``network.group_size`` (2 = MaxMin), the
        activation of the isometric networks, in *plain* layers: with ``init=orthogonal`` the
        weights start orthogonal (``orthogonal_init_``, gain √2 hidden, 1 head) and training is free
        to leave that set — unlike ``isometric_*``, whose layers are orthogonal-*constrained*. In
        MinAtarCNN's conv it sorts each pixel's channels in groups. Widths (``hidden_sizes``,
        ``channels``) must be divisible by ``group_size`` (a start-up error otherwise). GroupSort is
        one of the metrics' activation types, so its outputs are the hidden units the dormant
        fractions and srank read, exactly as ReLU's. Unit *recycling* (``redo``, ``cbp``) refuses
        these networks at start-up: GroupSort mixes the units of a group, so an output unit is no
        single producer unit (:func:`plasticrl.plasticity.units.find_unit_layers` detects it).
    ``network.bias=false``
        Every Linear/Conv of the network, the head included, is built with ``bias=False``: the
        network has no bias parameters at all (and PPO's shared-trunk value head none either).
        Default true: the layers of every existing preset.

Note [NaP]
    ``network.nap=true`` is Normalize-and-Project (Lyle et al., arXiv 2407.01800;
    docs/methods.md §2.1), both halves under one key because neither is NaP alone. The network puts
    :func:`plasticrl.plasticity.nap.nap_norm` (``LayerNorm(width, elementwise_affine=False)``; for
    MinAtarCNN's conv ``GroupNorm(1, C, affine=False)``, over (C, H, W) as ``layernorm`` does)
    where ``layernorm`` puts its norm (same module indices), and after initialisation records
    every hidden Linear/Conv's ‖W₀‖_F as a buffer (``nap_init_norm``: in the state dict, so
    checkpoints carry it). :func:`plasticrl.trainers.learning.build_learning` attaches the
    projection ``W ← ‖W₀‖_F · W/‖W‖_F`` to the optimizer as a step post-hook, so it runs after
    every ``optimizer.step()`` in both loops, with any optimizer. Heads and biases are never
    projected. ``nap`` and ``layernorm`` exclude each other. An intervention entry was not chosen:
    interventions run per update, not per optimizer step, and cannot change the architecture, so
    NaP there would need two entries that only work together.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
from plasticrl.agents.precision import INPUT_PRECISIONS, ReducedPrecisionLinear
from plasticrl.plasticity.layers import ORTHOGONAL_MAPS, CReLU, GroupSort
from plasticrl.plasticity.nap import mark_projected_, nap_norm
from plasticrl.plasticity.registry import Registry, options_of
from torch import Tensor, nn

__all__ = [
    "NetworkConfig",
    "NetworkFactory",
    "NETWORKS",
    "make_network",
    "ACTIVATIONS",
    "activation_expansion",
    "hidden_activation",
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
    """Hidden activation: one of ACTIVATIONS; ``crelu`` doubles the next layer's fan-in;
    ``groupsort`` sorts groups of ``group_size`` features (Notes [Architecture variants],
    [Plain-layer options])."""
    layernorm: bool = False
    """mlp / minatar_cnn: LayerNorm after every hidden Linear (GroupNorm(1, C) after the conv),
    before the activation; never on the head (Note [Architecture variants])."""
    nap: bool = False
    """mlp / minatar_cnn: NaP (Lyle et al. 2024): a norm without learnable parameters before every
    hidden activation, and every hidden weight projected back to its initial Frobenius norm after
    every optimizer step; output layers and biases are never projected (Note [NaP])."""
    bias: bool = True
    """mlp / minatar_cnn: false builds every layer, heads included, without a bias parameter."""
    init: Literal["default", "orthogonal"] = "default"
    """Weight initialisation: torch's default, or orthogonal init (gain √2 hidden, 1 head)."""
    group_size: int = 2
    """GroupSort group size (2 = MaxMin): of isometric networks, and of ``activation=groupsort``
    in mlp / minatar_cnn (hidden widths and channels must be divisible by it)."""
    orthogonal_map: str | None = None
    """Isometric networks: the orthogonal constraint's map (plasticrl.plasticity.layers.ORTHOGONAL_MAPS);
    None = its default (qr)."""
    orthogonal_head: bool = False
    """Isometric networks: also constrain the output head (off: a free head keeps Q-value scale)."""
    input_precision: str = "float32"
    """mlp: the dtype of the first Linear's matrix product, ``float32`` or ``bfloat16`` (faster on
    CPUs with bfloat16 units and on GPUs; parameters and outputs stay float32; Note [Input
    precision] in :mod:`plasticrl.agents.precision`)."""

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
        if self.input_precision not in INPUT_PRECISIONS:
            raise ValueError(
                f"unknown network.input_precision {self.input_precision!r}; valid: {sorted(INPUT_PRECISIONS)}"
            )
        for key in ("layernorm", "nap", "bias"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"network.{key} must be true or false, got {getattr(self, key)!r}")
        if self.nap and self.layernorm:
            raise ValueError(
                "network.nap and network.layernorm both put a norm before every hidden activation; "
                "choose one (nap's norm has no learnable parameters)"
            )


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
    "crelu": CReLU,
    "groupsort": GroupSort,
}
"""Hidden activations by config name; each is constructed with no arguments, except that the
standard networks build ``groupsort`` as ``GroupSort(network.group_size)`` (:func:`hidden_activation`)."""

NetworkFactory = Callable[[gym.Space, gym.Space, NetworkConfig], nn.Module]
NETWORKS: Registry[NetworkFactory] = Registry("network")

COMMON_KEYS = ("name", "hidden_sizes")
"""``network.*`` keys that apply to every registered network."""
MLPOptions = options_of(
    NetworkConfig,
    "MLPOptions",
    ("activation", "layernorm", "nap", "bias", "init", "group_size", "input_precision"),
)
"""Options of ``mlp``."""
MinAtarCNNOptions = options_of(
    NetworkConfig,
    "MinAtarCNNOptions",
    ("channels", "activation", "layernorm", "nap", "bias", "init", "group_size"),
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


def hidden_activation(cfg: NetworkConfig) -> nn.Module:
    """A new hidden activation module of ``cfg``.

    ``GroupSort(cfg.group_size)`` (over dim 1: features, or a conv's channels pixel by pixel) for
    ``groupsort``, else ``ACTIVATIONS[cfg.activation]()``.
    """
    if cfg.activation == "groupsort":
        return GroupSort(cfg.group_size)
    return ACTIVATIONS[cfg.activation]()


def _check_groups(cfg: NetworkConfig, widths: dict[str, int]) -> None:
    """Refuse, at construction, a width that ``activation=groupsort`` cannot split into groups."""
    if cfg.activation != "groupsort":
        return
    for key, width in widths.items():
        if width % cfg.group_size:
            raise ValueError(
                f"{key} ({width}) must be divisible by network.group_size ({cfg.group_size}) "
                "with network.activation=groupsort"
            )


def _hidden_norm(cfg: NetworkConfig, width: int, *, conv: bool = False) -> nn.Module | None:
    """The norm between a hidden layer and its activation: LayerNorm/GroupNorm, NaP's, or None."""
    if cfg.layernorm:
        return nn.GroupNorm(1, width) if conv else nn.LayerNorm(width)
    if cfg.nap:
        return nap_norm(width, conv=conv)
    return None


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


def _apply_init(net: nn.Module, head: nn.Module, cfg: NetworkConfig, hidden: list[nn.Module]) -> nn.Module:
    """Initialise, then (``nap``) record the initial norms of the ``hidden`` layers (Note [NaP])."""
    if cfg.init == "orthogonal":
        orthogonal_init_(net, gain=math.sqrt(2.0))
        orthogonal_init_(head, gain=1.0)
    if cfg.nap:
        for layer in hidden:
            mark_projected_(layer)
    return net


@NETWORKS.register("mlp", options=MLPOptions)
def mlp(observation_space: gym.Space, action_space: gym.Space, cfg: NetworkConfig) -> nn.Module:
    """Flatten → [Linear → (norm) → activation] × len(hidden_sizes) → Linear(n_actions).

    With ``activation=crelu`` each Linear after a hidden layer (and the head) takes twice that
    layer's width as input (Note [Architecture variants]). The norm is ``layernorm``'s or
    ``nap``'s; ``bias=false`` drops every bias (Note [Plain-layer options]).
    """
    in_dim = int(np.prod(_obs_shape(observation_space)))
    _check_groups(cfg, {f"network.hidden_sizes[{i}]": w for i, w in enumerate(cfg.hidden_sizes)})
    expansion = activation_expansion(cfg.activation)
    layers: list[nn.Module] = [nn.Flatten()]
    hidden: list[nn.Module] = []
    for width in cfg.hidden_sizes:
        if not hidden and cfg.input_precision != "float32":
            dtype = INPUT_PRECISIONS[cfg.input_precision]
            hidden.append(ReducedPrecisionLinear(in_dim, width, bias=cfg.bias, compute_dtype=dtype))
        else:
            hidden.append(nn.Linear(in_dim, width, bias=cfg.bias))
        layers.append(hidden[-1])
        norm = _hidden_norm(cfg, width)
        if norm is not None:
            layers.append(norm)
        layers.append(hidden_activation(cfg))
        in_dim = width * expansion
    head = nn.Linear(in_dim, _n_actions(action_space), bias=cfg.bias)
    net = nn.Sequential(*layers, head)
    return _apply_init(net, head, cfg, hidden)


class MinAtarCNN(nn.Module):
    """The MinAtar reference Q-network: Conv(C,16,3,s1) → act → Linear(16·(H−2)(W−2), 128) → act → head.

    Expects channel-first ``(B, C, H, W)`` float observations (10×10 for MinAtar). With
    ``cfg.layernorm``, ``conv_norm`` (GroupNorm(1, channels)) and ``fc_norm`` (LayerNorm(hidden))
    sit before ``conv_act`` and ``fc_act`` (with ``cfg.nap``, the same without affine parameters);
    with ``activation=crelu`` the dense layer's fan-in is
    ``2·channels·(H−2)(W−2)`` and the head's ``2·hidden`` (Note [Architecture variants]).

    Attributes:
        conv_norm: the conv's normalisation, or None without ``layernorm``/``nap``.
        fc_norm: the dense layer's normalisation, or None without ``layernorm``/``nap``.
    """

    head_names = ("head",)

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, cfg: NetworkConfig) -> None:
        super().__init__()
        if len(obs_shape) != 3:
            raise ValueError(f"minatar_cnn needs (C, H, W) observations, got shape {obs_shape}")
        c, h, w = obs_shape
        if h < 3 or w < 3:
            raise ValueError(f"minatar_cnn needs H, W >= 3, got shape {obs_shape}")
        expansion = activation_expansion(cfg.activation)
        hidden = cfg.hidden_sizes[-1]
        _check_groups(cfg, {"network.channels": cfg.channels, "network.hidden_sizes[-1]": hidden})
        # Assigned in forward order, so named_modules() lists them as they run.
        self.conv = nn.Conv2d(c, cfg.channels, kernel_size=3, stride=1, bias=cfg.bias)
        self.conv_norm: nn.Module | None = _hidden_norm(cfg, cfg.channels, conv=True)
        self.conv_act = hidden_activation(cfg)
        self.fc = nn.Linear(expansion * cfg.channels * (h - 2) * (w - 2), hidden, bias=cfg.bias)
        self.fc_norm: nn.Module | None = _hidden_norm(cfg, hidden)
        self.fc_act = hidden_activation(cfg)
        self.head = nn.Linear(expansion * hidden, n_actions, bias=cfg.bias)

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
    return _apply_init(net, net.head, cfg, [net.conv, net.fc])
