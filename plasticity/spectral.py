r"""Spectral regularization (Lewandowski et al., *Learning Continually by Spectral Regularization*).

Contains:
    SpectralRegularizer: the penalty λ Σ_ℓ (σ_max(W̃_ℓ)^k − 1)² with warm-started power iteration.
    spectral: its factory, registered as ``"spectral"`` in ``REGULARIZERS``.

Paper: arXiv 2406.06811 (ICLR 2025). Summary in docs/methods.md §2. The penalty keeps the largest
singular value of every layer near 1 — a partial measure of isometry: it bounds the layer's
Jacobian from above but says nothing about the smallest singular value.

.. math::
    R(\theta) = \lambda \sum_\ell \big(\sigma_{\max}(\tilde W_\ell)^k - 1\big)^2
                \;[+\; \lambda \sum_\ell \|b_\ell\|^2 \text{ with } \texttt{bias="zero"}]

Options (``regularizers: [{name: spectral, coef: 1e-3, <option>: ...}]``):

``power`` (k, default 2) **[ours]**
    The exponent; the paper leaves it open, docs/methods.md fixes 2.
``bias`` (``"zero"`` default, or ``"column"``)
    How a layer's bias enters. docs/methods.md §2 allows both: "bias pushed to 0, or as an extra
    column"; which one the paper's experiments use is not settled by the sources we have, so
    both are here and ``"zero"`` is the project's default. ``"zero"``: :math:`\tilde W = W` and
    the bias gets the L2 term :math:`\|b\|^2` (with the same λ), so it is pushed to 0.
    ``"column"``: :math:`\tilde W = [W \mid b]`, the affine map as one matrix acting on
    :math:`(x, 1)`; the bias then only counts through σ_max.
``include_head`` (default True)
    Also penalise the output head's weights (``kind="head"`` groups).
``n_power_iterations`` (default 1)
    Power-iteration steps per call; the paper uses one, warm-started. Its lag, measured, is in
    Note [One warm-started power iteration]; raise it when σ_max must be tracked closely.
``init`` (``"svd"`` default **[ours]**, or ``"random"``)
    Where (u, v) start: the exact top singular pair of the initial weights (one SVD per layer at
    construction), or random unit vectors as in a plain power method (Note [Cold start]).
``seed`` (default 0)
    Seed of the private generator that draws random initial vectors (the global RNG is never
    touched).

Which tensors: every ≥2-d parameter of the groups tagged ``kind="matrix"`` (and ``"head"`` if
``include_head``) by :func:`plasticrl.plasticity.optimizers.param_groups`; never ``"constrained"``
(unconstrained tensors of a parametrization) nor ``"vector"``. A conv kernel
``(C_out, C_in, kh, kw)`` is read as the matrix ``(C_out, C_in·kh·kw)``. The bias of a weight is the
``bias`` parameter of the module that owns it as ``weight``.

Note [One warm-started power iteration]
    Per call, σ_max is estimated, never computed by SVD. Each layer keeps unit vectors u (rows),
    v (columns) as buffers. A call does, without gradient, ``v ← normalize(W̃ᵀu)``, ``u ← normalize(W̃v)``, then
    computes :math:`\hat\sigma = u^\top \tilde W v` *with* gradient through W̃ only (u, v detached),
    so :math:`\partial\hat\sigma/\partial\tilde W = u v^\top` — the exact gradient of σ_max once
    (u, v) are the top singular pair. The weights move little per update, so one step per call
    tracks the top pair (tests: within 1 % through 30 SGD steps that rotate it). It lags when the
    top direction changes abruptly — since σ̂ = ‖W̃v‖ ≤ σ_max it then underestimates: measured on
    a random 64×64 regression under Adam lr 1e-3, up to 17 % in the first 50 updates (3 steps
    per call: 10 %; 10 steps: 6 %). That is the paper's method; ``n_power_iterations`` buys
    accuracy linearly in cost.

    Measured lag per step, ``(σ_max − σ̂)/σ_max`` of the σ̂ each update's penalty uses, every
    penalised layer (issue 17; script in ``tests/plasticity/test_spectral_lag.py``, which checks
    the trend on a shorter run). MLP 8→64→64→4 (ReLU), Adam lr 1e-3, batch 64, new regression
    targets every 250 updates, 1000 updates, 3 seeds, ``coef`` 1e-3:

    ==================  ==============  ==============  ========
    n_power_iterations  steps lag > 5 %  steps lag > 1 %  max lag
    ==================  ==============  ==============  ========
    1 (default)         3.7 %           40 %            15 %
    2                   0.9 %           28 %            9.2 %
    3                   0.1 %           23 %            6.9 %
    5                   0.1 %           14 %            6.7 %
    10                  0.03 %          5.7 %           6.0 %
    ==================  ==============  ==============  ========

    MinAtar-sized CNN (Conv(4,16,3) → 1024→128 → 6) under Adam lr 1e-4: below 0.25 % on every
    step with one iteration. The lag grows with the learning rate (how far W moves per update)
    and is largest right after a task change; the issue's report of > 5 % on ~45 % of steps was
    not reproduced in these settings, so measure yours with :meth:`SpectralRegularizer.sigmas`
    against ``torch.linalg.matrix_norm(W, 2)`` before relying on one iteration.

    u and v are in ``state_dict`` so a resumed run continues
    identically. If W̃v or W̃ᵀu is zero (a zero layer) the
    vectors are kept unchanged, so σ̂ = 0 and the iteration restarts once W̃ is nonzero.

Note [Cold start]
    From random vectors, one step per call converges slowly on the weights that matter most at
    the start of a run — freshly initialised random matrices, whose top singular values are
    bunched at the Marchenko–Pastur edge. Measured (``SpectralRegularizer(init="random")``, 20
    seeds, Gaussian weights scaled 1/√in): reaching 1 % relative error takes up to 77 calls for
    32×128, 48 for 128×32, 41 for 64×64, 17 for a (16, 4, 3, 3) kernel, so the penalty
    underestimates σ_max for the first ~100 updates. ``init="svd"`` (default, [ours]) starts from
    the exact top pair of the initial weights, one SVD per layer at construction and never again;
    from then on the warm-started single step tracks σ_max as the weights move (the tests check
    1 % tracking through optimizer steps). ``init="random"`` reproduces the plain power method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from plasticrl.plasticity.regularizers import REGULARIZERS, RegularizerConfig
from torch import Tensor, nn

__all__ = ["SpectralRegularizer", "spectral"]

BiasMode = Literal["zero", "column"]
InitMode = Literal["svd", "random"]
_BIAS_MODES: tuple[str, ...] = ("zero", "column")
_INIT_MODES: tuple[str, ...] = ("svd", "random")
_EPS = 1e-12


@dataclass(frozen=True)
class _Layer:
    """One penalised weight: its dotted name, the weight and its bias (or None)."""

    name: str
    weight: nn.Parameter
    bias: nn.Parameter | None


def _normalize_or_keep(x: Tensor, previous: Tensor) -> Tensor:
    # torch.where, not ``if norm > eps``: no host-device synchronisation per layer on a GPU.
    norm = x.norm()
    return torch.where(norm > _EPS, x / norm.clamp_min(_EPS), previous)


class _PowerIteration(nn.Module):
    """Top singular pair (u, v) of one matrix, kept between calls as buffers."""

    u: Tensor
    v: Tensor

    def __init__(self, matrix: Tensor, init: InitMode, generator: torch.Generator) -> None:
        super().__init__()
        rows, cols = matrix.shape
        if init == "svd" and matrix.numel():
            left, _, right_h = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
            u, v = left[:, 0], right_h[0]
        else:
            u = torch.randn(rows, generator=generator, dtype=torch.float64)
            v = torch.randn(cols, generator=generator, dtype=torch.float64)
            u, v = u / u.norm(), v / v.norm()
        self.register_buffer("u", u.to(matrix))
        self.register_buffer("v", v.to(matrix))

    def forward(self, matrix: Tensor, n_iterations: int) -> Tensor:
        """Advance the iteration ``n_iterations`` steps and return σ̂ = uᵀ W̃ v (grad via W̃)."""
        if self.u.device != matrix.device or self.u.dtype != matrix.dtype:
            self.u, self.v = self.u.to(matrix), self.v.to(matrix)
        with torch.no_grad():
            w = matrix.detach()
            u, v = self.u, self.v
            for _ in range(n_iterations):
                v = _normalize_or_keep(w.mT @ u, v)
                u = _normalize_or_keep(w @ v, u)
            self.u.copy_(u)
            self.v.copy_(v)
        # Clones: a second call before backward updates the buffers in place; the graph of the
        # first call must not see that.
        return torch.dot(self.u.clone(), matrix @ self.v.clone())


class SpectralRegularizer(nn.Module):
    r"""λ Σ_ℓ (σ_max(W̃_ℓ)^k − 1)², with σ_max from one warm-started power iteration per call.

    Build it with :func:`spectral` (from tagged groups) or directly from a list of layers. Call it
    with no arguments once per update and add the result to the task loss; it is differentiable
    w.r.t. the penalised weights (and biases). Move it with ``.to(device)`` alongside the model
    (it also follows the weights' device lazily). See the module docstring for the maths and
    options, and Note [One warm-started power iteration].

    Args:
        layers: ``(name, weight, bias)`` triples; ``bias`` may be None.
        coef: λ >= 0.
        power: k > 0.
        bias: ``"zero"`` or ``"column"``.
        n_power_iterations: >= 1 steps per call.
        init: ``"svd"`` or ``"random"`` starting vectors (Note [Cold start]).
        seed: seed of the random starting vectors.

    Raises:
        ValueError: a bad option value (the message names the option and the valid values), a
            weight with fewer than 2 dimensions, or a bias whose size is not the weight's dim 0.

    Example:
        >>> layer = nn.Linear(2, 2, bias=False)
        >>> with torch.no_grad():
        ...     _ = layer.weight.copy_(torch.diag(torch.tensor([3.0, 1.0])))
        >>> reg = SpectralRegularizer([("w", layer.weight, None)], coef=0.5)
        >>> for _ in range(30):
        ...     penalty = reg()
        >>> round(penalty.item(), 3)  # 0.5 · (3² − 1)² = 32
        32.0
    """

    name = "spectral"

    def __init__(
        self,
        layers: Sequence[tuple[str, nn.Parameter, nn.Parameter | None]],
        coef: float,
        *,
        power: float = 2.0,
        bias: BiasMode = "zero",
        n_power_iterations: int = 1,
        init: InitMode = "svd",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not coef >= 0:
            raise ValueError(f"spectral: coef must be >= 0, got {coef!r}")
        if isinstance(power, bool) or not isinstance(power, int | float) or not power > 0:
            raise ValueError(f"spectral: power must be a number > 0, got {power!r}")
        if bias not in _BIAS_MODES:
            raise ValueError(f"spectral: bias must be one of {list(_BIAS_MODES)}, got {bias!r}")
        if (
            isinstance(n_power_iterations, bool)
            or not isinstance(n_power_iterations, int)
            or n_power_iterations < 1
        ):
            raise ValueError(f"spectral: n_power_iterations must be an int >= 1, got {n_power_iterations!r}")
        if init not in _INIT_MODES:
            raise ValueError(f"spectral: init must be one of {list(_INIT_MODES)}, got {init!r}")
        self.coef = float(coef)
        self.power = float(power)
        self.bias_mode: BiasMode = bias
        self.n_power_iterations = n_power_iterations
        # A plain list: assigning Parameters to a Module attribute would register them here.
        self._layers: list[_Layer] = []
        generator = torch.Generator().manual_seed(seed)
        iterations = []
        for name, weight, b in layers:
            if weight.dim() < 2:
                raise ValueError(f"spectral: {name} has shape {tuple(weight.shape)}; needs >= 2 dims")
            if b is not None and b.shape != (weight.shape[0],):
                raise ValueError(
                    f"spectral: bias of {name} has shape {tuple(b.shape)}, expected ({weight.shape[0]},)"
                )
            layer = _Layer(name, weight, b)
            self._layers.append(layer)
            iterations.append(_PowerIteration(self._matrix(layer).detach(), init, generator))
        self.iterations = nn.ModuleList(iterations)

    @property
    def names(self) -> list[str]:
        """Dotted names of the penalised weights, in penalty order."""
        return [layer.name for layer in self._layers]

    def _matrix(self, layer: _Layer) -> Tensor:
        """W̃: the weight as ``(out, rest)``, with the bias as a last column in ``column`` mode."""
        w = layer.weight.flatten(1)
        if self.bias_mode == "column" and layer.bias is not None:
            w = torch.cat((w, layer.bias.unsqueeze(1)), dim=1)
        return w

    def sigmas(self) -> dict[str, Tensor]:
        """Current σ̂ per layer (``uᵀW̃v`` from the stored vectors, no iteration, no grad)."""
        with torch.no_grad():
            return {
                layer.name: torch.dot(it.u, self._matrix(layer) @ it.v)
                for layer, it in zip(self._layers, self.iterations, strict=True)
            }

    def forward(self) -> Tensor:
        """The scaled penalty ``coef · Σ_ℓ [(σ̂_ℓ^k − 1)² (+ ‖b_ℓ‖²)]``, a scalar tensor."""
        if not self._layers:
            return torch.zeros(())
        terms = []
        for layer, it in zip(self._layers, self.iterations, strict=True):
            sigma = it(self._matrix(layer), self.n_power_iterations)
            terms.append((sigma.pow(self.power) - 1.0).pow(2))
            if self.bias_mode == "zero" and layer.bias is not None:
                terms.append(layer.bias.pow(2).sum())
        return self.coef * torch.stack(terms).sum()

    def get_extra_state(self) -> dict[str, Any]:
        """Penalised names and matrix shapes, checked on load so vectors never meet the wrong layer."""
        return {"names": self.names, "shapes": [tuple(self._matrix(layer).shape) for layer in self._layers]}

    def set_extra_state(self, state: Any) -> None:
        """Reject a state saved for other layers or another bias mode."""
        mine = self.get_extra_state()
        if (
            not isinstance(state, Mapping)
            or list(state.get("names", [])) != mine["names"]
            or [tuple(s) for s in state.get("shapes", [])] != mine["shapes"]
        ):
            raise ValueError(
                f"spectral: state was saved for layers {dict(state).get('names')} with "
                f"shapes {dict(state).get('shapes')}; this regularizer penalises "
                f"{mine['names']} with shapes {mine['shapes']}"
            )

    def extra_repr(self) -> str:
        """Options and number of penalised layers."""
        return (
            f"coef={self.coef}, power={self.power}, bias={self.bias_mode!r}, "
            f"n_power_iterations={self.n_power_iterations}, layers={len(self._layers)}"
        )


def _penalised_layers(
    model: nn.Module, groups: list[dict[str, Any]], kinds: set[str]
) -> list[tuple[str, nn.Parameter, nn.Parameter | None]]:
    wanted = {id(p) for g in groups if g.get("kind") in kinds for p in g["params"] if p.dim() >= 2}
    found: list[tuple[str, nn.Parameter, nn.Parameter | None]] = []
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            if id(p) not in wanted:
                continue
            wanted.discard(id(p))
            bias = getattr(module, "bias", None) if p_name == "weight" else None
            bias = bias if isinstance(bias, nn.Parameter) and bias.requires_grad else None
            found.append((f"{mod_name}.{p_name}" if mod_name else p_name, p, bias))
    if wanted:
        raise ValueError(f"spectral: {len(wanted)} grouped parameter(s) are not parameters of the model")
    return found


@dataclass(frozen=True)
class SpectralOptions:
    """Options of the ``spectral`` regularizer entry (besides ``coef``; module docstring)."""

    power: float = 2.0
    """k in (σ_max^k − 1)² (docs/methods.md §3)."""
    bias: BiasMode = "zero"
    """How a layer's bias enters its matrix: ignored (``zero``) or appended as a column."""
    include_head: bool = True
    """Penalise the output layer too."""
    n_power_iterations: int = 1
    """Power-iteration steps per update (warm-started)."""
    init: InitMode = "svd"
    """Starting vectors of the power iteration: exact SVD or random (Note [Cold start])."""
    seed: int = 0
    """Seed of random starting vectors."""


@REGULARIZERS.register("spectral", options=SpectralOptions)
def spectral(model: nn.Module, groups: list[dict[str, Any]], cfg: RegularizerConfig) -> SpectralRegularizer:
    """Build the spectral regularizer for ``model`` from its tagged ``groups`` (``param_groups``).

    Args:
        model: the network (used to name weights and find their biases).
        groups: tagged parameter groups (Note [Parameter groups] in :mod:`plasticrl.plasticity.optimizers`).
        cfg: ``coef`` and the options ``power``, ``bias``, ``include_head``,
            ``n_power_iterations``, ``init``, ``seed`` (see the module docstring).

    Raises:
        TypeError: an unknown option (``make_regularizers`` turns it into a ValueError).
        ValueError: a bad option value.
    """
    options = dict(cfg.options)
    include_head = options.pop("include_head", True)
    if not isinstance(include_head, bool):
        raise ValueError(f"spectral: include_head must be true or false, got {include_head!r}")
    kinds = {"matrix", "head"} if include_head else {"matrix"}
    return SpectralRegularizer(_penalised_layers(model, groups, kinds), cfg.coef, **options)
