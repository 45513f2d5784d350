r"""L2-Init: regularization toward the initial parameters (Kumar, Marklund, Van Roy).

Contains:
    l2_init_penalty: ‖θ − θ₀‖²₂ summed over tensors (the differentiable definition).
    L2InitRegularizer: ``coef · ‖θ − θ₀‖²`` with θ₀ captured at construction, in its ``state_dict``.
    l2_init: its factory, registered as ``"l2_init"`` in ``REGULARIZERS``.

Paper: *Maintaining Plasticity in Continual Learning via Regenerative Regularization*, arXiv
2308.11958. Summary in docs/methods.md §2. Plain L2 (weight decay) pulls the weights toward 0; L2-Init
pulls them toward where training started, a point known to be trainable (the paper's argument).
The penalty and its gradient are

.. math::
    R(\theta) = \lambda \|\theta - \theta_0\|_2^2 = \lambda \sum_p \sum_i (p_i - p_{0,i})^2,
    \qquad \nabla_\theta R = 2\lambda(\theta - \theta_0),

added to the loss (coupled: its gradient goes through the optimizer's moments, as in the paper).
λ = 1e-2 was best overall in the paper's sweep (docs/methods.md).

Which tensors (option ``kinds``, default all): every trainable parameter the optimizer sees, by the
``kind`` tags of :func:`plasticrl.plasticity.optimizers.param_groups` — hidden weights (``matrix``), the
output head (``head``), biases and normalisation parameters (``vector``) and the unconstrained
tensors of orthogonal constraints (``constrained``). The paper regularises all parameters;
``kinds: [matrix, head]`` restricts it to weights.

Note [Anchor]
    θ₀ is a detached copy of each penalised parameter taken when the regularizer is built, which the
    trainers do right after the network, before any update. The copies are buffers, so
    ``state_dict`` carries them and a resumed run keeps the anchor of the original run (not the
    weights it resumed from). Nothing ever writes to them: interventions that re-initialise units
    (ReDo, CBP, Shrink & Perturb) leave the anchor at the first initialisation, as the method
    defines it. The regularizer keeps references to the parameter *objects*, so weight edits must
    be in place (as every intervention here does), never by swapping in new ``Parameter``\ s.

Note [Analytic backward]
    The penalty is a custom autograd function: the forward takes ``d = θ − θ₀`` with one
    multi-tensor subtraction and returns Σ‖d‖²; the backward returns ``2·d·grad`` for every
    tensor. Autograd of the plain formula records three operations per tensor and a stack; this
    records one node for the whole network (forward + backward on the MinAtar network, one CPU
    thread: 0.26 ms against 0.41 ms).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from plasticrl.plasticity.regularizers import REGULARIZERS, RegularizerConfig
from torch import Tensor, nn

__all__ = ["l2_init_penalty", "L2InitRegularizer", "l2_init", "PARAM_KINDS"]

PARAM_KINDS: tuple[str, ...] = ("matrix", "head", "vector", "constrained")
"""The ``kind`` tags of :func:`plasticrl.plasticity.optimizers.param_groups` (the values of option
``kinds``)."""


def l2_init_penalty(params: Sequence[Tensor], inits: Sequence[Tensor]) -> Tensor:
    """‖θ − θ₀‖²₂ = Σ_p ‖p − p₀‖²_F, differentiable w.r.t. ``params`` (the reference definition).

    Args:
        params: the current tensors θ.
        inits: θ₀, one tensor of the same shape per entry of ``params``.

    Returns:
        A scalar tensor (0 for empty sequences).

    Example:
        >>> l2_init_penalty([torch.tensor([1.0, 2.0])], [torch.tensor([0.0, 4.0])])  # 1 + 4
        tensor(5.)
    """
    if len(params) != len(inits):
        raise ValueError(f"l2_init_penalty: {len(params)} params but {len(inits)} initial values")
    if not params:
        return torch.zeros(())
    return torch.stack([(p - p0).square().sum() for p, p0 in zip(params, inits, strict=True)]).sum()


class _SquaredDistance(torch.autograd.Function):
    """Σ_p ‖p − p₀‖² with the backward ``2 (p − p₀) · grad`` (Note [Analytic backward])."""

    @staticmethod
    def forward(ctx: Any, inits: list[Tensor], *params: Tensor) -> Tensor:  # type: ignore[override]
        diffs = torch._foreach_sub(list(params), inits)
        ctx.save_for_backward(*diffs)
        return torch.stack(torch._foreach_norm(diffs)).square().sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        grads = torch._foreach_mul(list(ctx.saved_tensors), 2.0 * grad_output)
        return (None, *grads)


class L2InitRegularizer(nn.Module):
    r"""λ ‖θ − θ₀‖²₂ over the given parameters, θ₀ captured at construction (Note [Anchor]).

    Build it with :func:`l2_init` (from tagged groups) or from ``(name, parameter)`` pairs. Call it
    with no arguments once per update and add the result to the task loss; its gradient w.r.t.
    each parameter is exactly ``2·coef·(p − p₀)``. ``state_dict`` holds θ₀ (buffers ``init_<i>``,
    in the order of :attr:`names`) and, as extra state, the names and shapes, checked on load.

    Args:
        params: ``(name, parameter)`` pairs to penalise; names are for messages and checks.
        coef: λ >= 0.

    Raises:
        ValueError: a negative ``coef`` or a repeated parameter.

    Example:
        >>> layer = nn.Linear(2, 1)
        >>> _ = nn.init.zeros_(layer.bias)  # (a random bias + 2 − bias need not be 2 in float32)
        >>> reg = L2InitRegularizer(list(layer.named_parameters()), coef=0.5)
        >>> reg().item()  # at θ₀
        0.0
        >>> with torch.no_grad():
        ...     _ = layer.bias.add_(2.0)
        >>> reg().item()  # 0.5 · 2²
        2.0
    """

    name = "l2_init"

    def __init__(self, params: Sequence[tuple[str, nn.Parameter]], coef: float) -> None:
        super().__init__()
        if not coef >= 0:
            raise ValueError(f"l2_init: coef must be >= 0, got {coef!r}")
        if len({id(p) for _, p in params}) != len(params):
            raise ValueError("l2_init: a parameter is listed twice")
        self.coef = float(coef)
        self.names: list[str] = [name for name, _ in params]
        # A plain list: assigning Parameters to a Module attribute would register them here.
        self._params: list[nn.Parameter] = [p for _, p in params]
        for i, p in enumerate(self._params):
            self.register_buffer(f"init_{i}", p.detach().clone())

    @property
    def inits(self) -> list[Tensor]:
        """θ₀, one tensor per penalised parameter (the buffers themselves; do not write to them)."""
        return [getattr(self, f"init_{i}") for i in range(len(self._params))]

    def forward(self) -> Tensor:
        """The scaled penalty ``coef · Σ_p ‖p − p₀‖²``, a scalar tensor."""
        if not self._params:
            return torch.zeros(())
        if self.coef == 0.0:
            return torch.zeros((), device=self._params[0].device)
        if self.inits[0].device != self._params[0].device:
            self.to(self._params[0].device)  # the model moved after construction
        return self.coef * _SquaredDistance.apply(self.inits, *self._params)  # type: ignore[no-untyped-call]

    @torch.no_grad()
    def distance(self) -> float:
        """‖θ − θ₀‖₂ over the penalised parameters (unscaled; no graph)."""
        if not self._params:
            return 0.0
        diffs = torch._foreach_sub([p.detach() for p in self._params], self.inits)
        return float(torch.stack(torch._foreach_norm(diffs)).square().sum().sqrt())

    def get_extra_state(self) -> dict[str, Any]:
        """Names and shapes of the penalised parameters, checked on load."""
        return {"names": list(self.names), "shapes": [tuple(p.shape) for p in self._params]}

    def set_extra_state(self, state: Any) -> None:
        """Reject an anchor saved for other parameters (their θ₀ would be meaningless here)."""
        mine = self.get_extra_state()
        names = list(state.get("names", [])) if isinstance(state, dict) else None
        shapes = [tuple(s) for s in state.get("shapes", [])] if isinstance(state, dict) else None
        if names != mine["names"] or shapes != mine["shapes"]:
            raise ValueError(
                f"l2_init: state was saved for parameters {names} with shapes {shapes}; this "
                f"regularizer penalises {mine['names']} with shapes {mine['shapes']}"
            )

    def extra_repr(self) -> str:
        """Coefficient and number of penalised tensors."""
        return f"coef={self.coef}, tensors={len(self._params)}"


def _named(model: nn.Module, params: list[nn.Parameter]) -> list[tuple[str, nn.Parameter]]:
    """``params`` with their names in ``model`` (in ``named_parameters`` order)."""
    wanted = {id(p) for p in params}
    found = [(name, p) for name, p in model.named_parameters() if id(p) in wanted]
    if len(found) != len(wanted):
        raise ValueError(
            f"l2_init: {len(wanted) - len(found)} grouped parameter(s) are not parameters of the model"
        )
    return found


@dataclass(frozen=True)
class L2InitOptions:
    """Options of the ``l2_init`` regularizer entry (besides ``coef``)."""

    kinds: tuple[str, ...] = PARAM_KINDS
    """Parameter groups (``param_groups`` kinds) pulled towards their initial values."""


@REGULARIZERS.register("l2_init", options=L2InitOptions)
def l2_init(model: nn.Module, groups: list[dict[str, Any]], cfg: RegularizerConfig) -> L2InitRegularizer:
    """Build L2-Init for ``model``: θ₀ is a copy of the parameters *now* (Note [Anchor]).

    Args:
        model: the network, at its initial weights.
        groups: tagged parameter groups from ``param_groups(model)``.
        cfg: ``{name: l2_init, coef: λ, kinds: [...]}``; ``kinds`` (default: all of
            :data:`PARAM_KINDS`) picks the groups whose parameters are penalised.

    Raises:
        TypeError: an unknown option (``make_regularizers`` reports it as a ``ValueError``).
        ValueError: an unknown kind, or grouped tensors that are not parameters of ``model``.
    """
    return _build(model, groups, cfg.coef, **cfg.options)


def _build(
    model: nn.Module, groups: list[dict[str, Any]], coef: float, *, kinds: Sequence[str] = PARAM_KINDS
) -> L2InitRegularizer:
    if isinstance(kinds, str) or not all(k in PARAM_KINDS for k in kinds):
        raise ValueError(f"l2_init: kinds must be a list drawn from {list(PARAM_KINDS)}, got {kinds!r}")
    params = [p for g in groups if g.get("kind") in kinds for p in g["params"]]
    return L2InitRegularizer(_named(model, params), coef)
