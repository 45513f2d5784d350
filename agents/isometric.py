r"""Isometric networks: orthogonal-constrained layers with GroupSort activations (docs/methods.md §1.3).

Contains:
    IsometricMLP / isometric_mlp: flatten → [orthogonal Linear → GroupSort] × len(hidden_sizes) → head.
    IsometricMinAtarCNN / isometric_minatar_cnn: the MinAtar reference shape, made isometric where
        it can be: orthogonal Conv(C, channels, 3) → GroupSort → orthogonal Linear → GroupSort → head.

Both factories are registered in ``NETWORKS``. They read ``hidden_sizes``, ``channels``,
``group_size`` and ``init`` from :class:`~plasticrl.agents.networks.NetworkConfig`; ``activation`` is ignored
(GroupSort *is* the activation), except that the plasticity variants ``activation=crelu`` and
``layernorm=true`` are rejected: both would change the architecture a preset asks for, and a
normalisation between an orthogonal layer and GroupSort would break the layer's isometry.

Which layers are isometric (J = layer Jacobian w.r.t. its input, ``m × n`` for ``n`` inputs and
``m`` outputs; GroupSort multiplies J by a permutation, which changes no singular value):

================================  ===================  ==============================================
layer                             kind                 singular values of J
================================  ===================  ==============================================
orthogonal Linear, square         exact                all n equal 1 (J orthogonal)
orthogonal Linear, tall (m > n)   exact (isometry      all n equal 1: JᵀJ = I_n, ‖Jx‖ = ‖x‖
                                  onto its image)
orthogonal Linear, wide (m < n)   exact on its row     all m equal 1: JJᵀ = I_m; the n − m
                                  space (coisometry)   directions of its null space are dropped
GroupSort                         exact                all 1 (J is a permutation, a.e.)
orthogonal Conv2d (3×3, s1,       approximate          not all 1. Flattened kernel wide (C_out <
flattened kernel)                                      9·C_in, MinAtar C ≥ 2): spread in
                                                       (0, 3]; measured for C=4, 16 channels:
                                                       σ ∈ [0.22, 2.66]; C=10: σ_min ≈ 1e-3.
                                                       Tall (C=1): exactly √(patch coverage) ∈ [1, 3]
head (plain Linear)               not constrained      whatever training makes them
================================  ===================  ==============================================

A rectangular J cannot have all singular values 1 "in both directions"; the meaningful, tested
statement (``tests/agents/test_isometric.py``) is that its min(m, n) singular values equal 1.

Note [Plain output head]
    The head stays an unconstrained ``nn.Linear`` by default, as the isometry penalty leaves it out
    by default (docs/methods.md §1.1). An orthogonal head with fewer actions than features would force
    W Wᵀ = I: every action's value direction has unit norm and is orthogonal to every other
    action's. Actions with near-equal values (NOOP vs FIRE) need near-equal rows, which that
    forbids, and Q-values would be bounded by the feature norm (‖Q(s) − b‖ ≤ ‖h(s)‖) instead of
    scaling with the return. The head decides what is read out, not how gradients propagate
    through the body, so leaving it free costs the body's isometry nothing. ``orthogonal_head=True``
    on the classes constrains it anyway (for ablations).

Note [Training and acting with isometric networks]
    Every access of a constrained weight recomputes its orthogonal map (the default ``"qr"`` map;
    Note [Default map] in :mod:`plasticrl.plasticity.layers`). Measured by ``benchmarks/bench_isometric.py``
    (1 thread): a batch-32 update costs 5.2 ms against 1.1 ms for ``minatar_cnn`` (torch's
    householder map: 227 ms), and a batch-1 acting forward 1.96 ms, or 0.15 ms inside
    :func:`plasticrl.plasticity.layers.acting_cache` (``minatar_cnn``: 0.05 ms). So trainers and agents should

    - run acting forwards (and target-network forwards, whose weights change only at syncs) as
      ``with torch.no_grad(), acting_cache(net): ...``;
    - call :func:`plasticrl.plasticity.layers.retract_` on the online network every few hundred updates,
      which keeps the QR map's effective learning rate from decaying (a no-op for networks
      without ``"qr"`` layers).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from plasticrl.agents.networks import NETWORKS, NetworkConfig, _n_actions, _obs_shape, orthogonal_init_
from plasticrl.plasticity.layers import GroupSort, orthogonal_

# The private helpers are shared on purpose, so every network rejects bad spaces with one message.
from plasticrl.plasticity.registry import options_of
from torch import Tensor, nn

__all__ = ["IsometricMLP", "IsometricMinAtarCNN", "isometric_mlp", "isometric_minatar_cnn"]


def _reject_variants(cfg: NetworkConfig) -> None:
    """Refuse the standard nets' architecture options rather than silently drop them."""
    if cfg.layernorm:
        raise ValueError(
            f"network.layernorm is not supported by {cfg.name!r} (it would break the "
            "layer isometry); use mlp or minatar_cnn"
        )
    if cfg.nap or not cfg.bias:
        raise ValueError(
            f"network.nap and network.bias=false are options of mlp and minatar_cnn, not of {cfg.name!r}"
        )
    if cfg.activation == "crelu":
        raise ValueError(
            f"network.activation=crelu is not supported by {cfg.name!r} (its activation "
            "is GroupSort); use mlp or minatar_cnn"
        )


def _check_divisible(what: str, width: int, group_size: int) -> None:
    if width % group_size:
        raise ValueError(f"{what} ({width}) must be divisible by network.group_size ({group_size})")


def _make_head(in_dim: int, n_actions: int, orthogonal_head: bool, init: str) -> nn.Linear:
    head = nn.Linear(in_dim, n_actions)
    if orthogonal_head:
        orthogonal_(head)
    elif init == "orthogonal":
        orthogonal_init_(head, gain=1.0)
    return head


class IsometricMLP(nn.Module):
    """Flatten → [orthogonal Linear → GroupSort] × len(hidden_sizes) → Linear head.

    Every hidden block is exactly isometric in the sense of the module table: its Jacobian
    ``P(x) W`` has all min(in, out) singular values equal to 1.

    Args:
        in_dim: number of input features (the flattened observation).
        hidden_sizes: width of each hidden block; each divisible by ``group_size``.
        n_actions: output size.
        group_size: GroupSort group size (2 = MaxMin).
        orthogonal_map: map of :func:`plasticrl.plasticity.layers.orthogonal_` (None: its default).
        orthogonal_head: also constrain the head (Note [Plain output head]).
        init: ``"orthogonal"`` gives the plain head an orthogonal initial value (gain 1); the
            hidden weights are orthogonal anyway.

    Raises:
        ValueError: a hidden width not divisible by ``group_size``.
    """

    head_names = ("head",)

    def __init__(
        self,
        in_dim: int,
        hidden_sizes: tuple[int, ...],
        n_actions: int,
        group_size: int = 2,
        *,
        orthogonal_map: str | None = None,
        orthogonal_head: bool = False,
        init: str = "default",
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for i, width in enumerate(hidden_sizes):
            _check_divisible(f"network.hidden_sizes[{i}]", width, group_size)
            blocks.append(
                nn.Sequential(
                    orthogonal_(nn.Linear(in_dim, width), map=orthogonal_map), GroupSort(group_size)
                )
            )
            in_dim = width
        self.hidden = nn.Sequential(*blocks)
        self.head = _make_head(in_dim, n_actions, orthogonal_head, init)

    def forward(self, x: Tensor) -> Tensor:
        """Q-values / logits ``(B, n_actions)`` from observations ``(B, *obs_shape)``."""
        return self.head(self.hidden(x.flatten(1)))


class IsometricMinAtarCNN(nn.Module):
    """The MinAtar reference shape with orthogonal weights and GroupSort activations.

    ``Conv(C, channels, 3, s1)`` (flattened-kernel orthogonal: approximately isometric) →
    GroupSort over channels → ``Linear(channels·(H−2)(W−2), hidden)`` (orthogonal: exact) →
    GroupSort → head. Expects channel-first ``(B, C, H, W)`` observations, like ``MinAtarCNN``.

    Args:
        obs_shape: ``(C, H, W)``.
        n_actions: output size.
        channels: conv output channels; divisible by ``group_size``.
        hidden: dense width; divisible by ``group_size``.
        group_size: GroupSort group size (2 = MaxMin).
        orthogonal_map: map of :func:`plasticrl.plasticity.layers.orthogonal_` (None: its default).
        orthogonal_head: also constrain the head (Note [Plain output head]).
        init: ``"orthogonal"`` gives the plain head an orthogonal initial value (gain 1).

    Raises:
        ValueError: a shape that is not ``(C, H, W)`` with ``H, W >= 3``, or a width not
            divisible by ``group_size``.
    """

    head_names = ("head",)

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        n_actions: int,
        channels: int = 16,
        hidden: int = 128,
        group_size: int = 2,
        *,
        orthogonal_map: str | None = None,
        orthogonal_head: bool = False,
        init: str = "default",
    ) -> None:
        super().__init__()
        if len(obs_shape) != 3 or obs_shape[1] < 3 or obs_shape[2] < 3:
            raise ValueError(
                f"isometric_minatar_cnn needs (C, H, W) observations with H, W >= 3, got shape {obs_shape}"
            )
        c, h, w = obs_shape
        _check_divisible("network.channels", channels, group_size)
        _check_divisible("network.hidden_sizes[-1]", hidden, group_size)
        self.conv = orthogonal_(nn.Conv2d(c, channels, kernel_size=3, stride=1), map=orthogonal_map)
        self.conv_act = GroupSort(group_size, dim=1)  # sorts channels, pixel by pixel
        self.fc = orthogonal_(nn.Linear(channels * (h - 2) * (w - 2), hidden), map=orthogonal_map)
        self.fc_act = GroupSort(group_size, dim=1)
        self.head = _make_head(hidden, n_actions, orthogonal_head, init)

    def forward(self, x: Tensor) -> Tensor:
        """Q-values ``(B, n_actions)`` from ``(B, C, H, W)`` observations."""
        x = self.conv_act(self.conv(x))
        x = self.fc_act(self.fc(x.flatten(1)))
        return self.head(x)


IsometricMLPOptions = options_of(
    NetworkConfig, "IsometricMLPOptions", ("group_size", "orthogonal_map", "orthogonal_head", "init")
)
"""Options of ``isometric_mlp`` (no ``activation``/``layernorm``: GroupSort, and norms break isometry)."""
IsometricCNNOptions = options_of(
    NetworkConfig,
    "IsometricCNNOptions",
    ("channels", "group_size", "orthogonal_map", "orthogonal_head", "init"),
)
"""Options of ``isometric_minatar_cnn``."""


@NETWORKS.register("isometric_mlp", options=IsometricMLPOptions)
def isometric_mlp(observation_space: gym.Space, action_space: gym.Space, cfg: NetworkConfig) -> nn.Module:
    """:class:`IsometricMLP` over flattened Box observations (``hidden_sizes``, ``group_size``)."""
    _reject_variants(cfg)
    in_dim = int(np.prod(_obs_shape(observation_space)))
    return IsometricMLP(
        in_dim,
        tuple(cfg.hidden_sizes),
        _n_actions(action_space),
        cfg.group_size,
        init=cfg.init,
        orthogonal_map=cfg.orthogonal_map,
        orthogonal_head=cfg.orthogonal_head,
    )


@NETWORKS.register("isometric_minatar_cnn", options=IsometricCNNOptions)
def isometric_minatar_cnn(
    observation_space: gym.Space, action_space: gym.Space, cfg: NetworkConfig
) -> nn.Module:
    """:class:`IsometricMinAtarCNN` (``channels``, ``hidden_sizes[-1]``, ``group_size``)."""
    _reject_variants(cfg)
    return IsometricMinAtarCNN(
        _obs_shape(observation_space),
        _n_actions(action_space),
        channels=cfg.channels,
        hidden=cfg.hidden_sizes[-1],
        group_size=cfg.group_size,
        init=cfg.init,
        orthogonal_map=cfg.orthogonal_map,
        orthogonal_head=cfg.orthogonal_head,
    )
