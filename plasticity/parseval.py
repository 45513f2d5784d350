r"""Parseval regularization (Chung, Cherif, Meger, Precup): hidden weight rows kept orthogonal.

Contains:
    parseval_penalty: R(W) = ‖W Wᵀ − s I_out‖²_F, the Gram of the rows (the differentiable definition).
    parseval_grad: its closed-form gradient 4 (W Wᵀ − s I) W.
    ParsevalRegularizer: ``coef · Σ_hidden R(W)`` added to the loss.
    parseval: its factory, registered as ``"parseval"`` in ``REGULARIZERS``.

Paper: *Parseval Regularization for Continual Reinforcement Learning*, arXiv 2412.07224 (NeurIPS
2024). Summary in docs/methods.md §2:

.. math::
    \mathcal{L} \mathrel{+}= \lambda \sum_{\ell\ \mathrm{hidden}} \|W_\ell W_\ell^\top - s I\|_F^2,
    \qquad \nabla_W = 4\,(W W^\top - s I)\,W,

with ``s = 2`` (the squared ReLU gain, so a Parseval layer followed by ReLU keeps the signal's
scale), coupled (through the optimizer's moments), λ 1e-3 or 1e-4. A conv kernel
``(C_out, C_in, kh, kw)`` is the matrix ``(C_out, C_in·kh·kw)``: its rows are the output channels.

Options (``regularizers: [{name: parseval, coef: 1e-3, <option>: ...}]``):

``target`` (s, default 2.0)
    The target of ``W Wᵀ``: the rows of every hidden weight pushed to norm √s and to be mutually
    orthogonal.
``include_head`` (default False)
    Also penalise the output head (``kind="head"`` groups). The paper regularises hidden layers
    only: the head must be free to scale Q-values / logits.

Not implemented: the paper's relaxations of the constraint (extra diagonal layers, input scaling,
Parseval on subgroups of rows).

Which tensors: every ≥2-d parameter of the groups tagged ``kind="matrix"`` by
:func:`plasticrl.plasticity.optimizers.param_groups` (plus ``"head"`` with ``include_head``); never
``"vector"`` (biases, LayerNorm/GroupNorm gains) nor ``"constrained"`` (the unconstrained tensor of
an orthogonal constraint, whose layer is orthogonal by construction). The ``isometry`` tag
(``optimizer.iso_head``) does not apply: it belongs to AdamO and the ``isometry`` penalty.

Note [Parseval vs the isometry penalty]
    The ``isometry`` regularizer (:mod:`plasticrl.plasticity.isometry`, docs/methods.md §1.1) takes the
    Gram of
    the *smaller* side, ``‖Wᵀ W − s I_in‖²`` for a tall ``W`` (out > in), and defaults to s = 1.
    Parseval takes the rows' Gram ``W Wᵀ`` whatever the shape, and s = 2. For a wide or square
    ``W`` (every hidden layer of the MinAtar network: conv 16 × 36, fc 128 × 1024) the two
    penalties are the same function. For a tall ``W`` with ``k = out − in > 0``, ``W Wᵀ`` has rank
    at most ``in``: its ``k`` extra eigenvalues are 0, each adding ``(0 − s)²``, and since
    ``tr((WWᵀ)²) = tr((WᵀW)²)`` and ``tr(WWᵀ) = tr(WᵀW)``,

        ‖W Wᵀ − s I_out‖²_F = ‖Wᵀ W − s I_in‖²_F + (out − in) · s²,

    a constant: the gradients are identical (``(WWᵀ − sI)W = W(WᵀW − sI)``), only the logged value
    differs — by a floor that no ``W`` can remove. So, with equal ``s``, Parseval and the coupled
    isometry penalty train identically; they differ in their defaults (s = 2 vs 1, head never
    vs ``iso_head``) and in what the logged ``losses/reg_parseval`` means. Parseval is computed
    through the smaller Gram plus that constant (cheaper for tall layers), and the tests check it
    against the literal rows-Gram definition.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

# The private helpers are shared on purpose: one Gram and one matmul per layer, as for isometry.
from plasticrl.plasticity.isometry import _as_matrix, _PenaltyFn
from plasticrl.plasticity.regularizers import REGULARIZERS, RegularizerConfig
from torch import Tensor, nn

__all__ = ["parseval_penalty", "parseval_grad", "ParsevalRegularizer", "parseval"]


def parseval_penalty(weight: Tensor, target: float = 2.0) -> Tensor:
    """R(W) = ‖W Wᵀ − s I_out‖²_F, the Gram of the rows (differentiable; the reference definition).

    Args:
        weight: a matrix ``(out, in)`` or a conv kernel ``(C_out, C_in, kh, kw)``.
        target: s.

    Returns:
        A scalar tensor.

    Example:
        >>> parseval_penalty(torch.eye(2), target=2.0).item()  # W Wᵀ − 2I = −I
        2.0
        >>> parseval_penalty(torch.ones(2, 1), target=1.0).item()  # tall: W Wᵀ = [[1, 1], [1, 1]]
        2.0
    """
    matrix = _as_matrix(weight)
    gram = matrix @ matrix.mT
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return (gram - target * eye).square().sum()


def parseval_grad(weight: Tensor, target: float = 2.0) -> Tensor:
    """∇R(W) = 4 (W Wᵀ − s I) W in closed form, shaped like ``weight`` (no autograd).

    Args:
        weight: a matrix or conv kernel (read as ``(C_out, C_in·kh·kw)``).
        target: s.

    Returns:
        A new tensor with ``weight``'s shape, detached from any graph.

    Example:
        >>> parseval_grad(torch.tensor([[2.0, 0.0]]), target=2.0)  # 4 · (4 − 2) · [2, 0]
        tensor([[16.,  0.]])
    """
    with torch.no_grad():
        matrix = _as_matrix(weight.detach())
        gram = matrix @ matrix.mT
        return torch.addmm(matrix, gram, matrix, beta=-4.0 * target, alpha=4.0).view(weight.shape)


class ParsevalRegularizer:
    """The Parseval penalty ``coef · Σ_W ‖W Wᵀ − s I‖²_F`` over hidden weights (coupled).

    Computed as the smaller-side Gram penalty plus the constant ``s² · max(out − in, 0)`` (Note
    [Parseval vs the isometry penalty]), with the analytic backward ``4 (G − sI) W`` of
    :mod:`plasticrl.plasticity.isometry`: one Gram and one matmul per layer. Stateless.

    Args:
        params: the ≥2-d tensors to penalise.
        coef: λ >= 0.
        target: s >= 0.

    Raises:
        ValueError: a bad ``coef``/``target`` or a tensor with fewer than 2 dimensions.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> from plasticrl.plasticity.optimizers import param_groups
        >>> reg = parseval(net, param_groups(net), RegularizerConfig("parseval", 1e-3))
        >>> [tuple(p.shape) for p in reg.params]  # hidden only: the head Linear(2, 1) is free
        [(2, 3)]
    """

    name: str = "parseval"

    def __init__(self, params: list[Tensor], coef: float, *, target: float = 2.0) -> None:
        if not coef >= 0:
            raise ValueError(f"parseval: coef must be >= 0, got {coef!r}")
        if isinstance(target, bool) or not (
            isinstance(target, int | float) and math.isfinite(target) and target >= 0
        ):
            raise ValueError(f"parseval: target must be a finite number >= 0, got {target!r}")
        bad = [tuple(p.shape) for p in params if p.dim() < 2]
        if bad:
            raise ValueError(f"parseval: needs tensors with >= 2 dims, got shapes {bad}")
        self.coef = float(coef)
        self.target = float(target)
        self.params = list(params)
        # Σ s² · (out − in)⁺: the part of the rows-Gram penalty that no weight can remove.
        self._floor = self.target**2 * sum(max(m.shape[0] - m.shape[1], 0) for m in map(_as_matrix, params))

    def __call__(self) -> Tensor:
        """``coef · Σ_W ‖W Wᵀ − s I‖²``, differentiable w.r.t. the penalised weights."""
        if not self.params:
            return torch.zeros(())
        if self.coef == 0.0:
            return torch.zeros((), device=self.params[0].device)
        terms = [_PenaltyFn.apply(_as_matrix(p), self.target) for p in self.params]  # type: ignore[no-untyped-call]
        return self.coef * (torch.stack(terms).sum() + self._floor)

    def state_dict(self) -> dict[str, Any]:
        """Stateless: an empty dict."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Accept the empty state of :meth:`state_dict`."""
        if state:
            raise ValueError(f"parseval regularizer has no state, got keys {sorted(state)}")


@dataclass(frozen=True)
class ParsevalOptions:
    """Options of the ``parseval`` regularizer entry (besides ``coef``)."""

    target: float = 2.0
    """s in ‖WWᵀ − sI‖²_F (docs/methods.md §3)."""
    include_head: bool = False
    """Penalise the output layer too."""


@REGULARIZERS.register("parseval", options=ParsevalOptions)
def parseval(model: nn.Module, groups: list[dict[str, Any]], cfg: RegularizerConfig) -> ParsevalRegularizer:
    """Build the Parseval regularizer over ``model``'s hidden weights (tagged ``groups``).

    Args:
        model: the network (unused beyond the groups; kept for the factory signature).
        groups: tagged parameter groups from ``param_groups(model)``.
        cfg: ``{name: parseval, coef: λ, target: s, include_head: false}``.

    Raises:
        TypeError: an unknown option (``make_regularizers`` reports it as a ``ValueError``).
        ValueError: a bad option value.
    """
    return _build(groups, cfg.coef, **cfg.options)


def _build(
    groups: list[dict[str, Any]], coef: float, *, target: float = 2.0, include_head: bool = False
) -> ParsevalRegularizer:
    if not isinstance(include_head, bool):
        raise ValueError(f"parseval: include_head must be true or false, got {include_head!r}")
    kinds = {"matrix", "head"} if include_head else {"matrix"}
    params = [p for g in groups if g.get("kind") in kinds for p in g["params"] if p.dim() >= 2]
    return ParsevalRegularizer(params, coef, target=target)
