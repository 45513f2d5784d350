"""Dynamical-isometry maths (docs/methods.md §1.1) and the coupled isometry regularizer.

Contains:
    isometry_penalty: R(W) = ‖G − sI‖²_F with the Gram G on the smaller side (differentiable).
    isometry_grad: the analytic ∇R(W), one Gram and one fused matmul, no autograd, no SVD.
    isometry_gap: ‖G − sI‖_F / √dim, the logged distance from isometry.
    IsometryPenalty: the *coupled* variant, ``coef · Σ R(W)`` added to the loss, registered in
        REGULARIZERS as ``"isometry"`` (the ablation the paper argues against; AdamO is the
        decoupled method).

Note [Gram on the smaller side]
    A weight ``W ∈ R^{out × in}`` (a conv kernel ``(C_out, C_in, kh, kw)`` read as the matrix
    ``(C_out, C_in·kh·kw)``) can only reach ``G = sI`` exactly when ``G`` is the Gram of its smaller
    side, because the rank of ``W`` is at most ``min(out, in)``:

        out ≤ in (wide/square):  G = W Wᵀ (out × out)   ∇R = 4 (W Wᵀ − sI) W
        out > in (tall):         G = Wᵀ W (in × in)     ∇R = 4 W (Wᵀ W − sI)

    ``R`` is a quartic in ``W`` with no data term, so a zero matrix has ``∇R = 0`` exactly: a
    zero-initialised layer stays zero under the isometry step alone.

Note [Fast isometry gradient]
    For the MinAtar ``Linear(1024, 128)`` the gradient is two 128×128×1024 matmuls (~67 MFLOP,
    ~0.7 ms on one core). ``torch.addmm(W, G, W, beta=-4s, alpha=4)`` fuses ``−sW`` and the factor
    4 into the second matmul, so no ``G − sI`` or scaled copies are made; the matmuls dominate, so
    it times like the naive ``4 * (W @ W.T - I) @ W``. Exploiting the symmetry of ``G`` (computing
    only its upper blocks) saved at most ~7 % in ``benchmarks/bench_adamo.py``, within noise, and
    is not worth the code. The way to make the step cheap is to move it off the critical path:
    see Note [Isometry prefetch] in :mod:`plasticrl.plasticity.adamo`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from plasticrl.plasticity.regularizers import REGULARIZERS, RegularizerConfig
from torch import Tensor, nn

__all__ = ["isometry_penalty", "isometry_grad", "isometry_gap", "IsometryPenalty"]


def _as_matrix(weight: Tensor) -> Tensor:
    """``weight`` as the matrix ``(out, prod(rest))``: a conv kernel becomes ``(C_out, C_in·kh·kw)``."""
    if weight.dim() < 2:
        raise ValueError(f"isometry needs a tensor with >= 2 dims, got shape {tuple(weight.shape)}")
    return weight.reshape(weight.shape[0], math.prod(weight.shape[1:]))


def _centred_gram(matrix: Tensor, target: float) -> Tensor:
    """``G − sI`` with ``G`` the Gram of the smaller side of ``matrix`` (differentiable)."""
    rows, cols = matrix.shape
    gram = matrix @ matrix.mT if rows <= cols else matrix.mT @ matrix
    return gram - target * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)


def isometry_penalty(weight: Tensor, target: float = 1.0) -> Tensor:
    """R(W) = ‖G − sI‖²_F, Gram on the smaller side (Note [Gram on the smaller side]).

    Differentiable with autograd; this is the definition that :func:`isometry_grad` is tested
    against.

    Args:
        weight: a matrix ``(out, in)`` or a conv kernel ``(C_out, C_in, kh, kw)``.
        target: s, the target squared singular value (1; 2 is an option for ReLU layers).

    Returns:
        A scalar tensor.

    Example:
        >>> isometry_penalty(torch.eye(3)).item()
        0.0
        >>> isometry_penalty(2 * torch.eye(2), target=1.0).item()  # G = 4I: 2 * (4 - 1)^2
        18.0
    """
    return _centred_gram(_as_matrix(weight), target).square().sum()


def isometry_grad(weight: Tensor, target: float = 1.0) -> Tensor:
    """The analytic ∇R(W) of :func:`isometry_penalty`, same shape as ``weight``.

    ``4 (W Wᵀ − sI) W`` when ``out ≤ in``, ``4 W (Wᵀ W − sI)`` when ``out > in`` (conv kernels read
    as ``(C_out, C_in·kh·kw)`` and reshaped back). One Gram and one ``addmm`` that fuses ``−sW``
    (Note [Fast isometry gradient]); no autograd graph is built and no SVD is taken. A zero matrix
    has a zero gradient.

    Args:
        weight: a matrix or conv kernel; it is read, never modified, and need not be contiguous.
        target: s in ‖G − sI‖².

    Returns:
        A new tensor with ``weight``'s shape (contiguous), detached from any graph.

    Example:
        >>> isometry_grad(torch.tensor([[2.0, 0.0]]))  # G = 4: 4 * (4 - 1) * [2, 0]
        tensor([[24.,  0.]])
    """
    with torch.no_grad():
        matrix = _as_matrix(weight.detach())
        rows, cols = matrix.shape
        if rows <= cols:
            gram = torch.mm(matrix, matrix.mT)
            grad = torch.addmm(matrix, gram, matrix, beta=-4.0 * target, alpha=4.0)
        else:
            gram = torch.mm(matrix.mT, matrix)
            grad = torch.addmm(matrix, matrix, gram, beta=-4.0 * target, alpha=4.0)
        return grad.view(weight.shape)


def isometry_gap(weight: Tensor, target: float = 1.0) -> Tensor:
    """‖G − sI‖_F / √dim, the per-layer distance from isometry (docs/methods.md §3, ``dim`` = size of G).

    Zero iff every singular value of the matrix view of ``weight`` equals √s; 0 for a zero-size
    Gram.

    Args:
        weight: a matrix or conv kernel.
        target: s.

    Returns:
        A scalar tensor (no graph).

    Example:
        >>> isometry_gap(torch.zeros(2, 5)).item()  # G = 0: ‖−I‖_F / √2
        1.0
    """
    with torch.no_grad():
        centred = _centred_gram(_as_matrix(weight.detach()), target)
        dim = centred.shape[0]
        if dim == 0:
            return centred.new_zeros(())
        return torch.linalg.matrix_norm(centred) / math.sqrt(dim)


class _PenaltyFn(torch.autograd.Function):
    """R(W) with the analytic backward ``dR · 4 (G − sI) W``, reusing the forward's ``G − sI``.

    Plain autograd of ``‖W Wᵀ − sI‖²`` needs three matmuls (one forward, two backward, since ``W``
    enters the Gram twice); saving the small centred Gram makes it two, as in :func:`isometry_grad`.
    """

    @staticmethod
    def forward(ctx: Any, matrix: Tensor, target: float) -> Tensor:  # type: ignore[override]
        centred = _centred_gram(matrix, target)
        ctx.save_for_backward(matrix, centred)
        return centred.square().sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        matrix, centred = ctx.saved_tensors
        if matrix.shape[0] <= matrix.shape[1]:
            grad = centred @ matrix
        else:
            grad = matrix @ centred
        return grad.mul_(4.0 * grad_output), None


@dataclass(frozen=True)
class IsometryPenaltyOptions:
    """Options of the ``isometry`` regularizer entry (besides ``coef``)."""

    target: float = 1.0
    """s, the Gram target ``G = sI`` (AdamO's ``optimizer.iso_target``)."""


@REGULARIZERS.register("isometry", options=IsometryPenaltyOptions)
class IsometryPenalty:
    """The coupled isometry regularizer: ``coef · Σ_W R(W)`` added to the task loss.

    Penalises every tensor of two or more dimensions in the groups tagged ``isometry=True`` by
    :func:`plasticrl.plasticity.optimizers.param_groups` (hidden weight matrices and conv kernels; the head
    only with ``optimizer.iso_head``). Because the penalty's gradient goes through Adam's moments,
    it is divided by √v̂ like the task gradient: this is the ablation of docs/methods.md §1.2; the
    method itself is the decoupled step of :class:`plasticrl.plasticity.adamo.AdamO`.

    Args:
        model: the network (unused beyond the groups; kept for the factory signature).
        groups: tagged parameter groups from ``param_groups(model)``.
        cfg: ``{name: isometry, coef: λ, target: s}``; ``target`` defaults to 1.0.

    Raises:
        TypeError: an unknown option (``make_regularizers`` reports it as a ``ValueError``).

    Example:
        >>> from plasticrl.plasticity.optimizers import param_groups
        >>> net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> reg = IsometryPenalty(net, param_groups(net), RegularizerConfig("isometry", 0.1))
        >>> [tuple(p.shape) for p in reg.params]  # the head Linear(2, 1) is not penalised
        [(2, 3)]
    """

    name: str = "isometry"

    def __init__(self, model: nn.Module, groups: list[dict[str, Any]], cfg: RegularizerConfig) -> None:
        self._configure(**cfg.options)
        self.coef = float(cfg.coef)
        self.params: list[Tensor] = [
            p for g in groups if g.get("isometry", False) for p in g["params"] if p.dim() >= 2
        ]
        self._device = next(model.parameters(), torch.zeros(())).device

    def _configure(self, *, target: float = 1.0) -> None:
        if not (isinstance(target, int | float) and math.isfinite(target) and target >= 0):
            raise ValueError(f"Invalid target: {target}")
        self.target = float(target)

    def __call__(self) -> Tensor:
        """``coef · Σ R(W)``, differentiable with respect to the penalised parameters."""
        if not self.params or self.coef == 0.0:
            return torch.zeros((), device=self._device)
        total = torch.stack(
            [_PenaltyFn.apply(_as_matrix(p), self.target) for p in self.params]  # type: ignore[no-untyped-call]
        ).sum()
        return self.coef * total

    def state_dict(self) -> dict[str, Any]:
        """Stateless: an empty dict."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Accept the empty state of :meth:`state_dict`."""
        if state:
            raise ValueError(f"isometry regularizer has no state, got keys {sorted(state)}")
