r"""Plasticity metrics (docs/methods.md §3): pure functions returning ``dict[str, float]``.

The collector that hooks a network and computes them all is
:class:`plasticrl.plasticity.probe.PlasticityProbe`.

Contains:
    MetricsConfig: the ``metrics.*`` config section.
    unit_activity: E|h_i| per unit of one hidden layer (the numerator of the ReDo score).
    dormant_masks / dormant_fraction: dormant units per layer and the unit-weighted total, per τ.
    persistent_dormant: the fraction of units dormant at two consecutive measurements.
    feature_rank: srank_δ, effective rank and mean row norm of the penultimate features.
    measured_weights / weight_stats: per-layer Frobenius norm, distance to init, σ_max, σ_min,
        stable rank and isometry gap.
    relu_linear_jacobian / relu_linear_jacobian_sv2: the closed-form Jacobian of Linear → ReLU.
    layer_jacobian / jacobian_sv2: per-sample layer Jacobians by ``torch.func`` and their σ² moments.
    empirical_ntk / ntk_stats: Θ = J_θ J_θᵀ on a small probe; its condition number and effective rank.
    grad_norm, param_rms, optimizer_stats: global gradient norm, parameter RMS, √v̂ statistics.
    custom_scalars_layout: the TensorBoard custom-scalars layout of the per-layer charts (pure data).
    ACTIVATION_TYPES, TAG_PREFIX, tau_tag: what counts as an activation; how tags are spelled.

Each metric has one definition, written in the docstring of the function that computes it; those
docstrings are the reference. Choices docs/methods.md leaves open are marked **[ours]**.

Note [Tags]
    The pure functions return keys *relative* to ``plasticity/`` (``"srank"``,
    ``"dormant_fraction/tau_0.025/fc_act"``) so they compose. :class:`PlasticityProbe` returns
    *full* TensorBoard tags (``TAG_PREFIX`` prepended: ``"plasticity/srank"``), so a trainer logs
    its result as it is. Per-layer keys end in the module's name from ``named_modules()``, joined
    with ``/``; names are never edited. τ is spelled by :func:`tau_tag` (``tau_0``, ``tau_0.025``).

Note [Hidden layers]
    *Units* are the outputs of activation modules (``isinstance`` of :data:`ACTIVATION_TYPES`:
    torch's elementwise activations, GroupSort and CReLU) that do not lie inside the head and are
    not fed by it (a ``Tanh`` after the output layer is an output transform, not hidden units);
    their tags carry the activation module's name (MinAtarCNN: ``conv_act``, ``fc_act``; ``mlp``:
    ``2``, ``4``). The unit axis is dim 1 (features of ``(B, F)``, channels of ``(B, C, ...)``);
    an activation applied after a conv's output was flattened (conv → Flatten → φ) is viewed back
    as ``(B, C, H·W)``, so its units are the conv's channels, not its pixels. A module called
    several times in one forward (a shared ``self.act``) gives one layer per call:
    ``<name>/call_<k>``.

    Which layer feeds which is read from the data flow (Note [Data flow] of
    :mod:`plasticrl.plasticity.probe`: a ``torch.fx`` trace of the forward), never from names or
    registration order. A layer whose units no activation module produces — ``F.relu`` /
    ``torch.tanh`` in ``forward``, in a functional or a mixed module/functional network — is
    measured at the input of the layer that reads it (its post-activation units, whatever the
    function; CReLU-like copies folded into their unit), tagged with the producing layer's name
    (``fc1``). Layers the probe cannot see — read together with another layer (a residual sum, a
    concatenation), or a forward ``torch.fx`` cannot trace — are named, with the reason, in one
    warning at construction and in ``PlasticityProbe.unseen``; an untraceable network falls back
    to activation modules only (and to the pre-activations of the weight modules when it has
    none). Pass ``layers=[...]`` to name the unit modules yourself.

    A *hidden layer* for the Jacobian is a pair (weight module, activation) in which the
    activation's input **is** the weight module's output tensor, or the output of normalisation
    modules (:data:`plasticrl.plasticity.units.NORM_TYPES`: LayerNorm, GroupNorm, BatchNorm) applied to it
    in a chain (found by forward hooks in the probe forward, so ``Linear → ReLU`` and ``Linear →
    LayerNorm → ReLU`` pair in forward order, whatever the module names); the layer's function is
    the whole chain, and it is named after the weight module (``conv``, ``fc``, like
    ``isometry_gap/<layer>``). Weights are named after their owning module (a tensor not called
    ``weight`` is ``<module>.<name>``).

Note [Layer Jacobian]
    For a layer ℓ = (weight module L, activation φ), ``f_ℓ(x) = φ(L(x))`` on **one** sample
    (``φ(N(L(x)))`` with normalisations N between them, in eval mode), and
    ``J_ℓ(x) = ∂ vec f_ℓ(x) / ∂ vec x``, an ``m × n`` matrix with m, n the numbers of output and
    input entries. For a convolution this is the Jacobian of the whole feature map,
    ``(C_out·H'·W') × (C_in·H·W)`` with the layer's own stride and padding — *not* the flattened
    kernel (whose σ are ``weight_sv_*``). We report the moments of the k = min(m, n) squared
    singular values (the smaller side, as the isometry gap), pooled over samples:
    mean σ² = ‖J‖²_F / k, mean σ⁴ = ‖J Jᵀ‖²_F / k (no SVD), variance = mean σ⁴ − (mean σ²)².
    An isometric layer gives 1 and 0. For a functional activation (Note [Hidden layers]) the
    layer is L alone (the activation is no module the probe can call; the warning says so);
    reshapes between L and φ (conv → Flatten → φ) are part of the layer.

    How it is computed:

    * **Closed form, every probe sample** — L affine (``Linear``, ``Conv1d/2d/3d``, plain or
      parametrized) and φ elementwise (every type of :data:`ACTIVATION_TYPES` but GroupSort and CReLU):
      ``J_n = diag(φ'(z_n)) T`` with z_n = L(x_n) and T = ∂L/∂x the same for every sample
      (``W`` for a Linear; for a conv, ``jacfwd`` of L at one sample). With G = T Tᵀ:
      ‖J_n‖²_F = Σ_i φ'(z_ni)² G_ii and ‖J_n J_nᵀ‖²_F = Σ_ij φ'(z_ni)² φ'(z_nj)² G_ij². For
      ``Linear → ReLU`` this is ``diag(1[z > 0]) W`` (docs/methods.md §3). Used while m ≤ 4096 (G is
      m × m).
    * **torch.func, the first ``metrics.jacobian_samples`` samples** — every other layer
      (GroupSort, normalised layers, custom modules, very wide convs): exact per-sample Jacobians from
      ``vmap(jacfwd)`` (or ``jacrev`` when m < n), see :func:`layer_jacobian`.

    Both are exact (no estimator). Their cost grows with m·n per layer, so for Atari-sized
    convolutions set ``metrics.jacobian=false``.

"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from plasticrl.plasticity.isometry import isometry_gap
from plasticrl.plasticity.layers import CReLU, GroupSort
from plasticrl.plasticity.optimizers import param_groups, state_keys_of
from torch import Tensor, nn
from torch.func import functional_call, jacfwd, jacrev, vmap
from torch.nn.utils import parametrize

__all__ = [
    "MetricsConfig",
    "ACTIVATION_TYPES",
    "TAG_PREFIX",
    "tau_tag",
    "unit_activity",
    "dormant_masks",
    "dormant_fraction",
    "persistent_dormant",
    "feature_rank",
    "measured_weights",
    "weight_stats",
    "relu_linear_jacobian",
    "relu_linear_jacobian_sv2",
    "layer_jacobian",
    "jacobian_sv2",
    "empirical_ntk",
    "NTK_MAX_BYTES",
    "ntk_stats",
    "grad_norm",
    "param_rms",
    "optimizer_stats",
    "custom_scalars_layout",
]

TAG_PREFIX = "plasticity/"
"""Prefix of every tag :class:`PlasticityProbe` returns (Note [Tags])."""

ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Softsign,
    nn.Threshold,
    GroupSort,
    CReLU,
)
"""Module types whose outputs are hidden units (Note [Hidden layers])."""

NTK_EIG_RTOL = 1e-6
"""Eigenvalues of Θ at or below this fraction of λ_max are numerically zero (docs/methods.md §3)."""

_ELEMENTWISE: tuple[type[nn.Module], ...] = tuple(t for t in ACTIVATION_TYPES if t not in (GroupSort, CReLU))
_AFFINE: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_MAX_CLOSED_FORM_OUTPUTS = 4096  # the closed form builds an m × m Gram
_GRAM_COLUMNS = 16384  # columns of J_θ per float64 block when accumulating Θ (bounds memory)
NTK_MAX_BYTES = 64 * 2**20
"""Default cap of :func:`empirical_ntk` on the Jacobian entries it holds at once (Note [Chunked
NTK]); [ours]: 64 MiB keeps one probe of the Nature CNN well under 1 GB of RSS."""


@dataclass(frozen=True)
class MetricsConfig:
    """The ``metrics`` section: when and how the plasticity metrics are measured."""

    every: int = 5000
    """Gradient updates between measurements; 0 turns the metrics off."""
    probe_size: int = 256
    """Observations in the probe batch (dormancy, feature rank, closed-form Jacobians)."""
    probe_chunk: int = 64
    """Observations per hooked probe forward; the batch runs in chunks, so the probe's memory is
    that of this many samples (Note [Probe chunks]); 0 = the whole batch in one forward. [ours]"""
    taus: tuple[float, ...] = (0.0, 0.025, 0.1)
    """Dormancy thresholds τ on the ReDo score (0 = exactly zero activity)."""
    srank_delta: float = 0.01
    """δ of srank_δ (Kumar et al. 2020)."""
    jacobian: bool = True
    """Measure layer-Jacobian σ² moments (Note [Layer Jacobian])."""
    jacobian_samples: int = 8
    """Probe samples for the torch.func layer Jacobians (layers without a closed form). [ours]"""
    ntk_every: int = 50000
    """Gradient updates between empirical-NTK measurements; a multiple of ``every``; 0 = off."""
    ntk_probe_size: int = 64
    """Observations (the first of the probe batch) for the NTK; Θ is (n·|A|)², keep n·|A| ≲ 2000."""
    iso_target: float = 1.0
    """s of the isometry gap ‖G − sI‖_F/√dim (2 is the natural target for ReLU layers)."""

    def __post_init__(self) -> None:
        checks = {
            "every": self.every >= 0,
            "probe_size": self.probe_size >= 1,
            "probe_chunk": self.probe_chunk >= 0,
            "taus": all(math.isfinite(t) and t >= 0 for t in self.taus)
            and len({tau_tag(t) for t in self.taus}) == len(self.taus),
            "srank_delta": 0.0 <= self.srank_delta < 1.0,
            "jacobian_samples": self.jacobian_samples >= 1,
            "ntk_every": self.ntk_every >= 0
            and (self.ntk_every == 0 or self.every == 0 or self.ntk_every % self.every == 0),
            "ntk_probe_size": 1 <= self.ntk_probe_size <= self.probe_size,
            "iso_target": math.isfinite(self.iso_target) and self.iso_target >= 0,
        }
        hints = {
            "every": ">= 0",
            "probe_size": ">= 1",
            "probe_chunk": ">= 0 (0 = one forward)",
            "jacobian_samples": ">= 1",
            "iso_target": "finite and >= 0",
            "taus": "finite, >= 0 and distinct",
            "srank_delta": "in [0, 1)",
            "ntk_every": ">= 0 and a multiple of metrics.every",
            "ntk_probe_size": "in [1, metrics.probe_size]",
        }
        for key, ok in checks.items():
            if not ok:
                hint = hints.get(key, "out of range")
                raise ValueError(f"invalid metrics.{key}: {getattr(self, key)!r} ({hint})")


def tau_tag(tau: float) -> str:
    """``tau_<τ>`` with τ in its shortest form.

    Example:
        >>> tau_tag(0.0), tau_tag(0.025), tau_tag(0.1)
        ('tau_0', 'tau_0.025', 'tau_0.1')
    """
    return f"tau_{tau:g}"


# ----------------------------------------------------------------------------- dormant units


def unit_activity(activation: Tensor) -> Tensor:
    """E|h_i| for every unit i of one layer: the mean of |h| over every axis but dim 1 (float64).

    Dim 1 is the unit axis: the features of ``(B, F)``, the channels of ``(B, C, H, W)`` (a conv
    channel is one unit, averaged over batch and space).

    Example:
        >>> unit_activity(torch.tensor([[1.0, 0.0, -2.0], [3.0, 0.0, 0.0]]))
        tensor([2., 0., 1.], dtype=torch.float64)
    """
    if activation.dim() < 2:
        raise ValueError(f"activations need a batch and a unit axis, got shape {tuple(activation.shape)}")
    dims = [d for d in range(activation.dim()) if d != 1]
    return activation.detach().abs().mean(dim=dims, dtype=torch.float64)


def _masks_from_activity(
    activity: Mapping[str, Tensor], taus: Sequence[float]
) -> dict[str, dict[str, Tensor]]:
    masks: dict[str, dict[str, Tensor]] = {tau_tag(t): {} for t in taus}
    for layer, e in activity.items():
        layer_mean = e.mean() if e.numel() else e.new_zeros(())
        for t in taus:
            # s_i ≤ τ  ⇔  E|h_i| ≤ τ · mean_k E|h_k|: no division, exact for τ = 0, and a layer
            # with zero mean activity has every unit dormant (all E|h_i| are 0).
            masks[tau_tag(t)][layer] = e <= t * layer_mean
    return masks


def dormant_masks(
    acts: Mapping[str, Tensor], taus: Sequence[float] = (0.0, 0.025, 0.1)
) -> dict[str, dict[str, Tensor]]:
    """Dormant masks ``{tau_tag(τ): {layer: (units,) bool}}``; the definition is :func:`dormant_fraction`."""
    return _masks_from_activity({layer: unit_activity(a) for layer, a in acts.items()}, taus)


def _fractions(metric: str, masks: Mapping[str, Mapping[str, Tensor]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for tau, per_layer in masks.items():
        dormant = units = 0
        for layer, mask in per_layer.items():
            n, d = mask.numel(), int(mask.sum())
            out[f"{metric}/{tau}/{layer}"] = d / n if n else 0.0
            dormant, units = dormant + d, units + n
        if per_layer:
            out[f"{metric}/{tau}"] = dormant / units if units else 0.0
    return out


def dormant_fraction(
    acts: Mapping[str, Tensor], taus: Sequence[float] = (0.0, 0.025, 0.1)
) -> dict[str, float]:
    """Fraction of dormant units per layer and over all layers, for each τ (Sokar et al. 2023).

    Definition: for unit i of a hidden layer with post-activation h (a conv channel is a unit),
    the score is ``s_i = E|h_i| / mean_k E|h_k|`` with E the mean over the batch (and space);
    unit i is dormant iff ``s_i ≤ τ``. τ = 0 means exactly zero activity on the whole batch. A
    layer whose mean activity is 0 has all its units dormant, for every τ **[ours]** (s is 0/0
    there; every unit is silent, so this is the only sensible value). The total is
    **unit-weighted**: dormant units over all layers / units over all layers **[ours]**, not the
    mean of the layer fractions.

    Args:
        acts: layer name → post-activation ``(B, units, ...)``.
        taus: thresholds τ ≥ 0.

    Returns:
        ``dormant_fraction/tau_<τ>/<layer>`` and ``dormant_fraction/tau_<τ>`` (the total).

    Example:
        >>> acts = {"a": torch.tensor([[1.0, 0.0], [1.0, 0.0]]), "b": torch.ones(2, 6)}
        >>> dormant_fraction(acts, taus=[0.0])
        {'dormant_fraction/tau_0/a': 0.5, 'dormant_fraction/tau_0/b': 0.0, 'dormant_fraction/tau_0': 0.125}
    """
    return _fractions("dormant_fraction", dormant_masks(acts, taus))


def reactivated_dormant(
    at_switch: Mapping[str, Mapping[str, Tensor]], current: Mapping[str, Mapping[str, Tensor]]
) -> dict[str, float]:
    """Of the units dormant at the last task switch, the fraction that are active now.

    Definition **[ours]**: with the masks of :func:`dormant_masks`, measured on a probe batch at
    the last task switch (``at_switch``) and now, the fraction is (units dormant then and not
    now) / (units dormant then), per layer and unit-weighted over layers. Whether an optimizer
    revives units that a task left dormant is one of AdamO's mechanism claims; ReDo and CBP
    revive them by re-initialisation. Layers or τ with no unit dormant at the switch (0/0), or
    whose size changed, are left out.

    Returns:
        ``dormant_reactivated/tau_<τ>/<layer>`` and ``dormant_reactivated/tau_<τ>``.

    Example:
        >>> then = {"tau_0": {"a": torch.tensor([True, True, False, False])}}
        >>> now = {"tau_0": {"a": torch.tensor([True, False, True, False])}}
        >>> reactivated_dormant(then, now)
        {'dormant_reactivated/tau_0/a': 0.5, 'dormant_reactivated/tau_0': 0.5}
    """
    out: dict[str, float] = {}
    for tau, per_layer in current.items():
        then_all = revived_all = 0
        for layer, mask in per_layer.items():
            old = at_switch.get(tau, {}).get(layer)
            if old is None or old.shape != mask.shape or not bool(old.any()):
                continue
            old = old.to(mask.device)
            then, revived = int(old.sum()), int((old & ~mask).sum())
            out[f"dormant_reactivated/{tau}/{layer}"] = revived / then
            then_all, revived_all = then_all + then, revived_all + revived
        if then_all:
            out[f"dormant_reactivated/{tau}"] = revived_all / then_all
    return out


def persistent_dormant(
    previous: Mapping[str, Mapping[str, Tensor]], current: Mapping[str, Mapping[str, Tensor]]
) -> dict[str, float]:
    """Fraction of units dormant at both of two consecutive measurements, per layer and in total.

    Definition **[ours]**: with the masks of :func:`dormant_masks`, unit i of a layer is
    persistently dormant iff it is dormant now *and* was dormant at the previous measurement
    (Dopamine's ReDo bookkeeping counts the same units). Fractions use the same denominators as
    :func:`dormant_fraction` (count = fraction × units). Layers or τ missing from ``previous``, or
    whose size changed, are left out.

    Returns:
        ``dormant_persistent/tau_<τ>/<layer>`` and ``dormant_persistent/tau_<τ>`` (unit-weighted).

    Example:
        >>> before = {"tau_0": {"a": torch.tensor([True, True, False])}}
        >>> now = {"tau_0": {"a": torch.tensor([True, False, False])}}
        >>> persistent_dormant(before, now)["dormant_persistent/tau_0"]
        0.3333333333333333
    """
    both: dict[str, dict[str, Tensor]] = {}
    for tau, per_layer in current.items():
        old = previous.get(tau, {})
        both[tau] = {
            layer: mask & old[layer].to(mask.device)
            for layer, mask in per_layer.items()
            if layer in old and old[layer].shape == mask.shape
        }
    return _fractions("dormant_persistent", both)


# ----------------------------------------------------------------------------- features


def _entropy_rank(values: Tensor) -> float:
    """exp(H(p)) with p = values / Σ values (0 log 0 = 0); 0 for an all-zero vector."""
    total = values.sum()
    if total <= 0:
        return 0.0
    p = values[values > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def feature_rank(features: Tensor, delta: float = 0.01) -> dict[str, float]:
    """Rank measures of the penultimate features Φ (N × d, the input of the head).

    Definitions, with σ_1 ≥ σ_2 ≥ … the singular values of Φ (uncentred, as Kumar et al.):

    * ``srank`` = min k such that Σ_{i≤k} σ_i / Σ_i σ_i ≥ 1 − δ (Kumar et al., arXiv 2010.14498);
    * ``effective_rank`` = exp(H(p)), p_i = σ_i / Σ σ (Roy & Vetterli 2007);
    * ``feature_norm`` = mean over rows of ‖φ_n‖₂ **[ours]** (collapse shows as rank falling while
      the norm grows).

    Both ranks are 0 for an all-zero Φ **[ours]**. Computed in float64; ties at exactly 1 − δ are
    resolved with a 1e-12 tolerance so that a spectrum built to sit on the threshold counts.

    Example:
        >>> phi = torch.diag(torch.tensor([3.0, 1.0, 0.0]))
        >>> feature_rank(phi, delta=0.3)["srank"], feature_rank(phi)["srank"]
        (1.0, 2.0)
    """
    phi = features.detach().reshape(features.shape[0], -1).to(torch.float64)
    norm = float(phi.norm(dim=1).mean()) if phi.shape[0] else 0.0
    sv = torch.linalg.svdvals(phi)
    total = sv.sum()
    if sv.numel() == 0 or total <= 0:
        return {"srank": 0.0, "effective_rank": 0.0, "feature_norm": norm}
    cumulative = sv.cumsum(0) / total
    srank = min(int((cumulative < 1.0 - delta - 1e-12).sum()) + 1, sv.numel())
    return {"srank": float(srank), "effective_rank": _entropy_rank(sv), "feature_norm": norm}


# ----------------------------------------------------------------------------- weights


def _layer_key(module_name: str, tensor_name: str) -> str:
    if not module_name:
        return tensor_name
    return module_name if tensor_name == "weight" else f"{module_name}.{tensor_name}"


def measured_weights(
    model: nn.Module, groups: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, Tensor]:
    """The weight matrices that :func:`weight_stats` measures, by layer name (detached).

    Which: every parameter of ≥ 2 dims in a group of kind ``matrix`` or ``head`` (hidden weights,
    conv kernels, output head; Note [Parameter groups] in :mod:`plasticrl.plasticity.optimizers`), and the
    **constrained** weight of every parametrized tensor of ≥ 2 dims (``module.weight`` of an
    orthogonal layer, not its unconstrained ``original``). A layer is named after the module
    owning the tensor (Note [Hidden layers]).

    Args:
        model: the network.
        groups: its tagged parameter groups; ``None`` builds them with ``param_groups(model)``.
    """
    if groups is None:
        groups = param_groups(model)
    kinds = {id(p): g.get("kind", "matrix") for g in groups for p in g["params"]}
    out: dict[str, Tensor] = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor_name in module.parametrizations:  # type: ignore[union-attr]
                value = getattr(module, tensor_name)
                if value.dim() >= 2:
                    out[_layer_key(name, tensor_name)] = value.detach()
        for p_name, p in module.named_parameters(recurse=False):
            if p.dim() >= 2 and kinds.get(id(p)) in ("matrix", "head"):
                out[_layer_key(name, p_name)] = p.detach()
    return out


def weight_stats(
    model: nn.Module,
    groups: Sequence[Mapping[str, Any]] | None = None,
    target: float = 1.0,
    init: Mapping[str, Tensor] | None = None,
) -> dict[str, float]:
    """Per-layer weight statistics of the matrices of :func:`measured_weights`.

    Definitions, for the matrix view W (a conv kernel ``(C_out, C_in, kh, kw)`` read as
    ``(C_out, C_in·kh·kw)``) with singular values σ_1 ≥ … ≥ σ_k, k = min(out, in):

    * ``weight_norm`` = ‖W‖_F;
    * ``weight_dist_init`` = ‖W − W₀‖_F, W₀ the weight at initialisation (only with ``init``);
    * ``weight_sv_max`` = σ_1; ``weight_sv_min`` = σ_k (the smaller side: a wide matrix's zero
      singular values of its null space are not counted);
    * ``stable_rank`` = ‖W‖²_F / σ_1² (0 for a zero matrix);
    * ``isometry_gap`` = ‖G − sI‖_F / √dim, G the Gram on the smaller side
      (:func:`plasticrl.plasticity.isometry.isometry_gap`; docs/methods.md §1.1).

    Args:
        model: the network.
        groups: its tagged parameter groups (``None``: ``param_groups(model)``).
        target: s of the isometry gap.
        init: layer name → initial weight (see :meth:`PlasticityProbe.state_dict`).

    Returns:
        ``<stat>/<layer>`` for every stat above and every measured layer.

    Example:
        >>> stats = weight_stats(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)))
        >>> sorted(k for k in stats if k.endswith("/0"))
        ['isometry_gap/0', 'stable_rank/0', 'weight_norm/0', 'weight_sv_max/0', 'weight_sv_min/0']
    """
    out: dict[str, float] = {}
    for layer, weight in measured_weights(model, groups).items():
        if weight.numel() == 0:
            continue
        matrix = weight.reshape(weight.shape[0], -1).to(torch.float64)
        sv = torch.linalg.svdvals(matrix)
        fro = float(matrix.norm())
        out[f"weight_norm/{layer}"] = fro
        if init is not None and layer in init:
            w0 = init[layer].to(matrix.device, torch.float64).reshape(matrix.shape)
            out[f"weight_dist_init/{layer}"] = float((matrix - w0).norm())
        out[f"weight_sv_max/{layer}"] = float(sv[0])
        out[f"weight_sv_min/{layer}"] = float(sv[-1])
        out[f"stable_rank/{layer}"] = fro**2 / float(sv[0]) ** 2 if sv[0] > 0 else 0.0
        out[f"isometry_gap/{layer}"] = float(isometry_gap(weight, target))
    return out


# ----------------------------------------------------------------------------- layer Jacobians


class _Moments(NamedTuple):
    """Pooled moments of the squared singular values of one layer's Jacobians."""

    sv2: float  # mean σ²
    sv4: float  # mean σ⁴
    k: int  # singular values per sample, min(m, n)


def _moment_dict(moments: _Moments) -> dict[str, float]:
    return {"jacobian_sv2_mean": moments.sv2, "jacobian_sv2_var": max(moments.sv4 - moments.sv2**2, 0.0)}


def relu_linear_jacobian(weight: Tensor, pre_activation: Tensor) -> Tensor:
    """The Jacobian of x ↦ ReLU(Wx + b) at every sample: ``J_n = diag(1[z_n > 0]) W``, shape (N, out, in).

    ``1[z > 0]`` is the derivative autograd uses for ReLU (0 at z = 0).

    Args:
        weight: W, ``(out, in)``.
        pre_activation: z = Wx + b, ``(N, out)``.
    """
    return (pre_activation > 0).to(weight.dtype).unsqueeze(-1) * weight


def _diag_scaled_moments(transfer: Tensor, derivative: Tensor) -> _Moments:
    """σ² moments of J_n = diag(d_n) T for every row d_n of ``derivative`` (Note [Layer Jacobian])."""
    t = transfer.detach()
    m, n = t.shape
    k = min(m, n)
    d2 = derivative.detach().reshape(-1, m).to(t.dtype).square()  # (N, m)
    if k == 0 or d2.shape[0] == 0:
        return _Moments(0.0, 0.0, k)
    gram = t @ t.T
    # Sums of non-negative terms: float32 loses nothing that matters (relative error ~1e-6).
    sv2 = (d2 @ gram.diagonal()).to(torch.float64) / k
    sv4 = ((d2 @ gram.square()) * d2).sum(1, dtype=torch.float64) / k
    return _Moments(float(sv2.mean()), float(sv4.mean()), k)


def relu_linear_jacobian_sv2(weight: Tensor, pre_activation: Tensor) -> dict[str, float]:
    """σ² moments of :func:`relu_linear_jacobian`, in closed form without forming J or an SVD.

    With D = diag(1[z > 0]) and G = W Wᵀ: Σσ² = Σ_{i active} G_ii and Σσ⁴ = Σ_{i,j active} G_ij²
    per sample; definitions as in :func:`jacobian_sv2`. Computed in float64.

    Example:
        >>> w = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> relu_linear_jacobian_sv2(w, torch.tensor([[1.0, -1.0]]))  # J = diag(2, 0)
        {'jacobian_sv2_mean': 2.0, 'jacobian_sv2_var': 4.0}
    """
    w = weight.detach().to(torch.float64)
    return _moment_dict(_diag_scaled_moments(w, (pre_activation.reshape(-1, w.shape[0]) > 0).to(w.dtype)))


def layer_jacobian(layer: Callable[[Tensor], Tensor], inputs: Tensor) -> Tensor:
    """Per-sample Jacobians of a batched layer function, ``(N, m, n)`` (Note [Layer Jacobian]).

    ``layer`` maps a batch ``(B, *in_shape)`` to ``(B, *out_shape)`` and treats samples
    independently; J_n = ∂ vec layer(x_n) / ∂ vec x_n with m, n the numbers of output and input
    entries. Forward mode (n JVPs) when n ≤ m, reverse mode (m VJPs) otherwise, vectorised over
    samples with ``torch.func.vmap``; exact, no estimator. Works under ``torch.no_grad()``.

    Example:
        >>> w = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
        >>> layer_jacobian(lambda x: x @ w.T, torch.ones(2, 2)).shape
        torch.Size([2, 3, 2])
    """

    def single(x: Tensor) -> Tensor:
        return layer(x.unsqueeze(0)).squeeze(0)

    n_in = inputs[0].numel()
    n_out = single(inputs[0]).numel()
    transform = jacfwd if n_in <= n_out else jacrev
    jac = vmap(transform(single))(inputs)
    return jac.reshape(inputs.shape[0], n_out, n_in)


def _jacobian_moments(jacobians: Tensor) -> _Moments:
    j = jacobians.detach()
    _, m, n = j.shape
    k = min(m, n)
    if k == 0 or j.shape[0] == 0:
        return _Moments(0.0, 0.0, k)
    # The Gram is the costly part (N·k²·max(m, n)); it stays in J's dtype, and only the sums of
    # its non-negative squares are accumulated in float64 (2× faster than a float64 Gram; the
    # relative error of σ⁴ sums of float32 Grams is ~1e-7).
    gram = j @ j.mT if m <= n else j.mT @ j
    sv2 = j.square().sum((1, 2), dtype=torch.float64) / k
    sv4 = gram.square().sum((1, 2), dtype=torch.float64) / k
    return _Moments(float(sv2.mean()), float(sv4.mean()), k)


def jacobian_sv2(jacobians: Tensor) -> dict[str, float]:
    """Mean and variance of the squared singular values of per-sample Jacobians ``(N, m, n)``.

    Definition: each J_n has k = min(m, n) singular values (the smaller side); σ² is pooled over
    the N samples and the k values: ``jacobian_sv2_mean`` = E σ² = mean_n ‖J_n‖²_F / k,
    ``jacobian_sv2_var`` = E σ⁴ − (E σ²)² with E σ⁴ = mean_n ‖J_n J_nᵀ‖²_F / k (no SVD). An
    isometry gives 1 and 0.

    Example:
        >>> jacobian_sv2(torch.eye(3).expand(2, 3, 3))
        {'jacobian_sv2_mean': 1.0, 'jacobian_sv2_var': 0.0}
    """
    return _moment_dict(_jacobian_moments(jacobians))


# ----------------------------------------------------------------------------- NTK


def empirical_ntk(model: nn.Module, inputs: Tensor, *, max_bytes: int = NTK_MAX_BYTES) -> Tensor:
    """The empirical NTK Θ = J_θ J_θᵀ of ``model`` on ``inputs``, float64 ``(N·A, N·A)``.

    J_θ is the Jacobian of the flattened outputs (row ``n·A + a`` = output a of sample n) with
    respect to every trainable parameter (for a parametrized layer, its unconstrained tensor: the
    one gradient descent moves). Θ is exact: the same matrix as forming J_θ whole and multiplying,
    up to float64 rounding (``tests/plasticity/test_ntk_chunked.py``), accumulated in float64 so
    the condition number is not limited by float32 rounding. Works under ``torch.no_grad()``.

    Note [Chunked NTK]
        J_θ whole is N·A·P floats (P parameters): 384 × 1.7M floats, 2.6 GB, for the Nature CNN at
        N = 64, A = 6, and ``vmap(jacrev)`` holds as much again while forming it. Θ = Σ J_b J_bᵀ
        is instead summed over parts of the parameters, each formed and dropped in turn:

        * **Linear layers, factored** (:func:`_factored_linears`): for a plain ``Linear`` called
          once on ``(N, in)``, the gradient of output a of sample n is δ_{n,a} ⊗ x_n (δ the
          derivative of that output with respect to the layer's output, x the layer's input), so
          its term is Θ_W = (δ·δ')(x·x') and Θ_b = δ·δ': (N·A)² × (in + out) work on N·A × out
          derivatives, never the N·A × in·out gradients. The dense layers hold most parameters
          of a CNN (1.6M of the Nature CNN's 1.7M).
        * **Everything else, in blocks** (:func:`_ntk_blocks`): the remaining flattened parameters
          are cut into column blocks of at most ``max_bytes / (N·A·itemsize)`` entries (slices of
          one or more tensors). Each J_b comes from ``vmap(jacrev)`` with respect to the block's
          slices only, over sample chunks small enough that the transient per-sample gradients of
          the tensors the block touches (autograd forms a tensor's whole gradient before slicing
          it) and the activations also stay near ``max_bytes``. A tensor cut into k slices is
          differentiated k times: memory is bought with backward passes.

        Peak memory is a small multiple of ``max_bytes`` plus Θ itself; both parts are exact
        (``tests/plasticity/test_ntk_chunked.py`` compares them with J_θ J_θᵀ in float64). Measured
        by ``benchmarks/probe_memory.py``.

    Args:
        model: the network; its outputs for one sample are flattened to A entries.
        inputs: ``(N, *obs_shape)``.
        max_bytes: cap on the Jacobian entries held at once (:data:`NTK_MAX_BYTES`).

    Example:
        >>> lin = nn.Linear(2, 1)
        >>> empirical_ntk(lin, torch.tensor([[1.0, 2.0], [3.0, 0.0]]))  # xᵀx' + 1
        tensor([[ 6.,  4.],
                [ 4., 10.]], dtype=torch.float64)
    """
    if max_bytes < 1:
        raise ValueError(f"empirical_ntk: max_bytes must be >= 1, got {max_bytes}")
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())
    n = inputs.shape[0]
    if n == 0 or not params:
        outs = 0 if n == 0 else functional_call(model, (params, buffers), (inputs[:1],)).numel()
        return torch.zeros(n * outs, n * outs, dtype=torch.float64, device=inputs.device)
    linears, x_in, act = _factored_linears(model, params, inputs)
    a = functional_call(model, (params, buffers), (inputs[:1],)).numel()
    rows = n * a
    itemsize = max(p.element_size() for p in params.values())
    chunk_of = lambda touched: max(1, min(n, max_bytes // max(1, a * (touched + act) * itemsize)))  # noqa: E731
    theta = torch.zeros(rows, rows, dtype=torch.float64, device=inputs.device)
    if linears:  # Θ_W = (D Dᵀ) ⊙ (X Xᵀ ⊗ 1_A) per Linear, Θ_b = D Dᵀ (Note [Chunked NTK])
        deltas = _output_jacobians(model, params, buffers, linears, inputs, chunk_of(0))
        for name, _, bias in linears:
            d = deltas[name].to(torch.float64)  # (N·A, out)
            x = x_in[name].to(torch.float64)  # (N, in)
            kernel = (x @ x.T).repeat_interleave(a, 0).repeat_interleave(a, 1)
            theta.add_((d @ d.T) * (kernel + 1.0 if bias is not None else kernel))
    factored = {p for _, w, b in linears for p in (w, b) if p is not None}
    rest = {k: v for k, v in params.items() if k not in factored}
    gram_cols = max(1, min(_GRAM_COLUMNS, max_bytes // (rows * 8)))
    for block in _ntk_blocks(rest, max(1, max_bytes // (rows * itemsize))):
        touched = sum(params[name].numel() for name, _, _ in block)  # whole gradients, transient
        j = _block_jacobian(model, params, buffers, block, inputs, chunk_of(touched))  # (rows, columns)
        for start in range(0, j.shape[1], gram_cols):
            sub = j[:, start : start + gram_cols].to(torch.float64)
            theta.addmm_(sub, sub.T)
        del j
    return theta


def _factored_linears(
    model: nn.Module, params: Mapping[str, Tensor], inputs: Tensor
) -> tuple[list[tuple[str, str, str | None]], dict[str, Tensor], int]:
    """The Linear layers whose NTK term factors, their inputs, and the activations per sample.

    A ``Linear`` qualifies when it is called once per forward on a ``(N, in)`` batch, with a plain
    (not parametrized, not shared) trainable weight: its per-sample gradient for output a of sample
    n is δ_{n,a} ⊗ x_n, so its NTK term is (δ·δ')(x·x') (and δ·δ' for the bias) without forming
    the gradient. Returns ``[(module name, weight name, bias name or None)]``, each one's input
    ``(N, in)``, and the number of activation entries per sample (summed over leaf modules: what
    the vmapped backward holds per output, for the sample chunks).
    """
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None:
                owners[id(p)] = owners.get(id(p), 0) + 1
    calls: dict[str, list[Tensor]] = {}
    sizes: list[int] = []
    handles = []

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if isinstance(module, nn.Linear) and args and isinstance(args[0], Tensor):
                calls.setdefault(name, []).append(args[0].detach())
            if isinstance(output, Tensor) and output.dim() > 0:
                sizes.append(output[0].numel())

        return hook

    for name, module in model.named_modules():
        if not list(module.children()):
            handles.append(module.register_forward_hook(record(name)))
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    linears: list[tuple[str, str, str | None]] = []
    x_in: dict[str, Tensor] = {}
    modules = dict(model.named_modules())
    for name, seen in calls.items():
        module = modules[name]
        weight, bias = f"{name}.weight" if name else "weight", f"{name}.bias" if name else "bias"
        plain = (
            len(seen) == 1
            and seen[0].shape == (inputs.shape[0], module.in_features)
            and not parametrize.is_parametrized(module)
            and weight in params
            and owners.get(id(module.weight), 0) == 1
            and (module.bias is None or not module.bias.requires_grad or owners.get(id(module.bias), 0) == 1)
        )
        if plain:
            has_bias = module.bias is not None and module.bias.requires_grad and bias in params
            linears.append((name, weight, bias if has_bias else None))
            x_in[name] = seen[0]
    return linears, x_in, sum(sizes)


def _output_jacobians(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    linears: Sequence[tuple[str, str, str | None]],
    inputs: Tensor,
    chunk: int,
) -> dict[str, Tensor]:
    """δ = ∂ outputs / ∂ (each Linear's output), per sample: ``{name: (N·A, out)}``.

    A zero added to each Linear's output by a forward hook is the variable ``jacrev``
    differentiates; ``chunk`` samples at a time.
    """
    modules = dict(model.named_modules())
    names = [name for name, _, _ in linears]
    theta, own_buffers = dict(params), dict(buffers)

    def outputs(eps: dict[str, Tensor], x: Tensor) -> Tensor:
        handles = [
            modules[name].register_forward_hook(lambda m, args, out, name=name: out + eps[name])
            for name in names
        ]
        try:
            return functional_call(model, (theta, own_buffers), (x.unsqueeze(0),)).reshape(-1)
        finally:
            for handle in handles:
                handle.remove()

    like = next(iter(params.values()))
    eps = {
        name: torch.zeros(1, modules[name].out_features, dtype=like.dtype, device=like.device)
        for name in names
    }
    jacobian = vmap(jacrev(outputs), in_dims=(None, 0))
    parts: dict[str, list[Tensor]] = {name: [] for name in names}
    for begin in range(0, inputs.shape[0], chunk):
        jac = jacobian(eps, inputs[begin : begin + chunk])  # per name: (chunk, A, 1, out)
        for name in names:
            parts[name].append(jac[name].reshape(-1, jac[name].shape[-1]))
    return {name: torch.cat(p) for name, p in parts.items()}


def _ntk_blocks(params: Mapping[str, Tensor], columns: int) -> list[list[tuple[str, int, int]]]:
    """The flattened parameters cut into blocks of at most ``columns`` entries, in order.

    A block is a list of ``(name, start, stop)`` slices of flattened tensors; small tensors share
    a block, a large one is cut into several.
    """
    blocks: list[list[tuple[str, int, int]]] = []
    current: list[tuple[str, int, int]] = []
    room = columns
    for name, p in params.items():
        start, size = 0, p.numel()
        while start < size:
            stop = min(size, start + room)
            current.append((name, start, stop))
            room -= stop - start
            start = stop
            if room == 0:
                blocks.append(current)
                current, room = [], columns
    if current:
        blocks.append(current)
    return blocks


def _block_jacobian(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    block: Sequence[tuple[str, int, int]],
    inputs: Tensor,
    chunk: int,
) -> Tensor:
    """J_θ restricted to the columns of ``block``, ``(N·A, columns)``, ``chunk`` samples at a time."""

    def outputs(pieces: tuple[Tensor, ...], x: Tensor) -> Tensor:
        theta = dict(params)
        for (name, start, stop), piece in zip(block, pieces, strict=True):
            flat = theta[name].reshape(-1)
            if start == 0 and stop == flat.numel():
                theta[name] = piece.reshape(params[name].shape)
            else:  # this block's slice is a variable; the rest of the tensor is a constant
                theta[name] = torch.cat([flat[:start], piece, flat[stop:]]).reshape(params[name].shape)
        return functional_call(model, (theta, dict(buffers)), (x.unsqueeze(0),)).reshape(-1)

    pieces = tuple(params[name].reshape(-1)[start:stop] for name, start, stop in block)
    jacobian = vmap(jacrev(outputs), in_dims=(None, 0))
    n = inputs.shape[0]
    out: Tensor | None = None
    for begin in range(0, n, chunk):
        jac = jacobian(pieces, inputs[begin : begin + chunk])  # per piece: (chunk, A, slice)
        if out is None:
            a = jac[0].shape[1]
            out = torch.empty(n * a, sum(p.numel() for p in pieces), dtype=jac[0].dtype, device=inputs.device)
        rows, col = slice(begin * a, (begin + jac[0].shape[0]) * a), 0
        for j in jac:
            out[rows, col : col + j.shape[2]] = j.reshape(-1, j.shape[2])
            col += j.shape[2]
        del jac
    assert out is not None
    return out


def ntk_stats(ntk: Tensor) -> dict[str, float]:
    """Conditioning of an empirical NTK Θ (symmetric PSD).

    Definitions, with λ the eigenvalues of Θ (negatives from rounding clamped to 0):

    * ``ntk_condition_number`` = λ_max / λ_min⁺, λ_min⁺ the smallest eigenvalue above
      1e-6·λ_max (docs/methods.md §3); infinite for Θ = 0;
    * ``ntk_rank`` = the number of eigenvalues above 1e-6·λ_max;
    * ``ntk_effective_rank`` = exp(H(λ/Σλ)) (the effective rank of the features, applied to Θ);
    * ``ntk_lambda_max`` = λ_max (the scale; docs/methods.md: plasticity is about the conditioning).

    Example:
        >>> ntk_stats(torch.diag(torch.tensor([4.0, 1.0, 0.0])))["ntk_condition_number"]
        4.0
    """
    eig = torch.linalg.eigvalsh(ntk.detach().to(torch.float64)).clamp_min(0.0)
    lam_max = float(eig[-1]) if eig.numel() else 0.0
    if lam_max <= 0:
        return {
            "ntk_condition_number": math.inf,
            "ntk_rank": 0.0,
            "ntk_effective_rank": 0.0,
            "ntk_lambda_max": 0.0,
        }
    kept = eig[eig > NTK_EIG_RTOL * lam_max]
    return {
        "ntk_condition_number": lam_max / float(kept[0]),
        "ntk_rank": float(kept.numel()),
        "ntk_effective_rank": _entropy_rank(eig),
        "ntk_lambda_max": lam_max,
    }


# ----------------------------------------------------------------------------- optimisation


def grad_norm(model: nn.Module) -> float | None:
    """Global L2 norm of the current ``.grad`` of every parameter; None when no parameter has one.

    Call it between ``backward`` and any clipping (clipping rewrites ``.grad``). After an update
    without clipping the gradients are still there, so calling it after the update is equivalent.
    """
    grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
    if not grads:
        return None
    norms = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float64) for g in grads])
    return float(torch.linalg.vector_norm(norms))


def param_rms(model: nn.Module) -> float:
    """Root mean square of every trainable parameter entry: sqrt(Σ θ² / #θ) (0 for no parameters)."""
    params = [p.detach() for p in model.parameters() if p.requires_grad]
    count = sum(p.numel() for p in params)
    if count == 0:
        return 0.0
    total = sum(p.to(torch.float64).square().sum() for p in params)
    return math.sqrt(float(total) / count)


def optimizer_stats(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Statistics of the second-moment denominator √v̂ per parameter-group kind.

    Definition **[ours]**: for every parameter with optimizer state, √v̂ elementwise, where v is
    the second moment its optimizer's registry entry declares (Note [Optimizer state keys] in
    :mod:`plasticrl.plasticity.optimizers`; a subclass reads its nearest declared base's):
    v̂ = v / (1 − β₂^t) for the Adam family (Adam, AdamW, AdamO, fused or not; bias-corrected),
    and v̂ = v minus the first moment squared for centred RMSprop (v itself uncentred). This is
    the per-coordinate scale the step divides by; a dead unit's rows have √v̂ → 0. Entries are
    pooled over the groups of one kind (``kind`` tag, or ``group_<i>`` for untagged groups).
    Optimizers that declare no second moment (SGD) or no keys at all give an empty dict.

    Returns:
        ``sqrt_v_mean/<kind>``, ``sqrt_v_max/<kind>``, ``sqrt_v_min/<kind>``.
    """
    keys = state_keys_of(optimizer, exact=False)
    if keys is None or keys.second_moment is None:
        return {}
    pooled: dict[str, list[Tensor]] = {}
    for i, group in enumerate(optimizer.param_groups):
        kind = str(group.get("kind", f"group_{i}"))
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if keys.second_moment not in state:
                continue
            v = state[keys.second_moment].detach().to(torch.float64)
            step = float(state[keys.step]) if keys.step in state else 0.0
            if keys.bias_corrected and step > 0:
                v = v / (1.0 - float(group["betas"][1]) ** step)
            if keys.centred and keys.first_moment in state:
                v = v - state[keys.first_moment].detach().to(torch.float64).square()
            pooled.setdefault(kind, []).append(v.clamp_min(0.0).sqrt().flatten())
    out: dict[str, float] = {}
    for kind, parts in pooled.items():
        flat = torch.cat(parts)
        if flat.numel():
            out[f"sqrt_v_mean/{kind}"] = float(flat.mean())
            out[f"sqrt_v_max/{kind}"] = float(flat.max())
            out[f"sqrt_v_min/{kind}"] = float(flat.min())
    return out


# ----------------------------------------------------------------------------- TensorBoard layout


def custom_scalars_layout(
    layer_names: Sequence[str], taus: Sequence[float], weight_names: Sequence[str] = ()
) -> dict[str, dict[str, list[Any]]]:
    """The TensorBoard custom-scalars layout for the per-layer plasticity curves (pure data).

    One chart per τ with the total and every layer's dormant fraction, one chart of isometry
    gaps, one of Jacobian σ² means and one of feature ranks. Entries are anchored regular
    expressions (``Multiline`` charts match tags by regex); a layer also matches its
    ``/call_<k>`` sites. Without ``weight_names`` the weight charts match every layer. The
    trainers' logger passes the result to ``SummaryWriter.add_custom_scalars``.

    Args:
        layer_names: unit layers (:attr:`PlasticityProbe.unit_layers`).
        taus: the dormancy thresholds.
        weight_names: weight layers (:attr:`PlasticityProbe.weight_layers`).

    Returns:
        ``{category: {chart title: ["Multiline", [regex, ...]]}}``.

    Example:
        >>> layout = custom_scalars_layout(["fc_act"], [0.1])
        >>> chart = layout["plasticity/dormant"]["dormant fraction, tau_0.1"]
        >>> chart[0], [bool(re.match(r, "plasticity/dormant_fraction/tau_0.1/fc_act")) for r in chart[1]]
        ('Multiline', [False, True])
    """

    def per_layer(metric: str, names: Sequence[str]) -> list[str]:
        base = re.escape(f"{TAG_PREFIX}{metric}/")
        if not names:
            return [f"^{base}"]
        return [f"^{base}{re.escape(n)}(/call_\\d+)?$" for n in names]

    dormant = {}
    for tau in taus:
        total = re.escape(f"{TAG_PREFIX}dormant_fraction/{tau_tag(tau)}")
        dormant[f"dormant fraction, {tau_tag(tau)}"] = [
            "Multiline",
            [f"^{total}$", *per_layer(f"dormant_fraction/{tau_tag(tau)}", layer_names)],
        ]
    rank = re.escape(TAG_PREFIX)
    return {
        "plasticity/dormant": dormant,
        "plasticity/isometry": {
            "isometry gap": ["Multiline", per_layer("isometry_gap", weight_names)],
            "Jacobian mean sigma^2": ["Multiline", [f"^{rank}jacobian_sv2_mean(/.*)?$"]],
        },
        "plasticity/features": {
            "feature rank": ["Multiline", [f"^{rank}srank(/.*)?$", f"^{rank}effective_rank(/.*)?$"]],
        },
    }
