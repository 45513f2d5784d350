r"""Shrink and Perturb (Ash & Adams, NeurIPS 2020, arXiv 1910.08475).

Contains:
    ShrinkPerturbOptions: the options of an ``{name: shrink_perturb, ...}`` entry.
    ShrinkPerturb: the intervention, registered as ``shrink_perturb`` in
        :data:`plasticrl.plasticity.interventions.INTERVENTIONS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from plasticrl.plasticity.interventions import (
    HIDDEN_GAIN,
    TAG_PREFIX,
    InterventionBase,
    InterventionContext,
    ProbeSource,
    check_values,
    refuse_parametrized,
    register_intervention,
)
from plasticrl.plasticity.optimizers import head_module_names
from plasticrl.plasticity.surgery import InitKind, check_optimizer, init_sample, reset_state_
from torch import nn

__all__ = ["ShrinkPerturbOptions", "ShrinkPerturb"]


@dataclass(frozen=True)
class ShrinkPerturbOptions:
    """Options of ``shrink_perturb`` (Ash & Adams 2020, docs/methods.md §2)."""

    p: float = 1.0 - 1e-4
    """Shrink factor p of θ ← pθ + σε. [ours] default for per-update use (METHODS: 1−1e-4…1−1e-3)."""
    sigma: float = 1e-3
    """Noise scale σ. [ours] default (METHODS: 1e-2…1e-4 per update)."""
    every: int = 1
    """Apply every this many updates; 0 = never periodically (use ``on_task_switch``)."""
    on_task_switch: bool = False
    """Apply when the environment's task changes (at the first update after the switch)."""
    reset_optimizer: bool = False
    """Also zero the optimizer state of every edited parameter (Note [S&P and optimizer state])."""
    init: InitKind | None = None
    """Distribution of ε; null follows ``network.init``."""

    def __post_init__(self) -> None:
        checks = {
            "p": math.isfinite(self.p) and 0.0 <= self.p <= 1.0,
            "sigma": math.isfinite(self.sigma) and self.sigma >= 0.0,
            "every": self.every >= 0,
        }
        check_values(checks, self, {"p": "in [0, 1]", "sigma": "finite and >= 0", "every": ">= 0"})
        if self.every == 0 and not self.on_task_switch:
            raise ValueError("every=0 without on_task_switch=true would never apply")


class ShrinkPerturb(InterventionBase):
    r"""Shrink and Perturb (Ash & Adams, NeurIPS 2020, arXiv 1910.08475).

    .. math::
        \theta \leftarrow p\,\theta + \sigma\,\varepsilon, \qquad
        \varepsilon \sim \text{the layer's own initialisation distribution}

    applied every ``every`` updates and/or at the first update after a task switch. ε is a fresh
    draw of each layer's initialisation (:func:`plasticrl.plasticity.surgery.init_sample`): torch's default
    ``U(±1/√fan_in)`` for weights and biases, or orthogonal weights and zero biases under
    ``init: orthogonal`` (gain √2 hidden, 1 for the heads, the networks' convention) — so
    ``p = 1, σ = 0`` is the identity, and ``p = 0, σ = 1`` is a full re-initialisation.

    Note [S&P scope]
        Every Linear/Conv layer — weights and biases, heads included (Ash & Adams shrink the whole
        network) — and nothing else **[ours]**: normalisation gains and biases have a constant
        initialisation (1, 0), so "pθ + σε" would drift a LayerNorm gain towards σ/(1−p) instead
        of perturbing it. A parametrized (constrained) layer is refused, as in ReDo.

    Note [S&P and optimizer state]
        Ash & Adams leave the optimizer alone, and per-update S&P must: zeroing Adam's moments
        every update would turn it into a sign method. ``reset_optimizer: true`` zeroes the whole
        state of every edited parameter at each application (for S&P at task switches as a soft
        reset) **[ours]**. Parameters are edited in place, so the optimizer keeps training them.

    Logs ``interventions/shrink_perturb/applied`` (applications so far) at every application at
    a task switch, and of the periodic ones at every ``⌈1000/every⌉``-th (each one when
    ``every ≥ 1000``), so a per-update S&P does not write a scalar per update.
    """

    name = "shrink_perturb"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        options: ShrinkPerturbOptions,
        ctx: InterventionContext,
    ) -> None:
        refuse_parametrized(self.name, model)
        if options.reset_optimizer:
            check_optimizer(optimizer)
        super().__init__(model, optimizer, ctx)
        self.options = options
        self.init: InitKind = ctx.init if options.init is None else options.init
        heads = head_module_names(model)
        self.layers: list[tuple[str, nn.Module, float]] = [
            (name, m, 1.0 if any(name == h or name.startswith(h + ".") for h in heads) else HIDDEN_GAIN)
            for name, m in model.named_modules()
            if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d)
        ]
        if not self.layers:
            raise ValueError(f"{self.name}: {type(model).__name__} has no Linear or Conv layer")
        self.applications = 0
        self._periodic = 0  # periodic applications (the report cadence counts these)
        self._report_every = max(1, math.ceil(1000 / max(options.every, 1)))

    def due(self, update: int, task_switched: bool) -> bool:
        """Whether S&P applies after ``update``."""
        every = self.options.every
        periodic = every > 0 and update > 0 and update % every == 0
        return periodic or (self.options.on_task_switch and task_switched)

    def after_update(
        self,
        update: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        probe_obs: ProbeSource,
        *,
        task_switched: bool = False,
    ) -> dict[str, float]:
        """θ ← pθ + σε on every Linear/Conv parameter when due."""
        self.check_bound(model, optimizer)
        if not self.due(update, task_switched):
            return {}
        self.apply()
        at_switch = self.options.on_task_switch and task_switched
        if not at_switch:
            self._periodic += 1
            if self._periodic % self._report_every:
                return {}
        return {f"{TAG_PREFIX}shrink_perturb/applied": float(self.applications)}

    @torch.no_grad()
    def apply(self) -> None:
        """One application of θ ← pθ + σε (in place; Note [S&P and optimizer state])."""
        p, sigma = self.options.p, self.options.sigma
        for _, module, gain in self.layers:
            noise = init_sample(module, generator=self.generator, init=self.init, gain=gain) if sigma else {}
            for name, param in module.named_parameters(recurse=False):
                param.mul_(p)
                if sigma:
                    param.add_(noise[name], alpha=sigma)
                if self.options.reset_optimizer:
                    reset_state_(self.optimizer, param, ...)
        self.applications += 1

    def state_dict(self) -> dict[str, Any]:
        """Generator and application count."""
        return self.base_state() | {"applications": self.applications, "periodic": self._periodic}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.load_base_state(state)
        self.applications, self._periodic = int(state["applications"]), int(state["periodic"])


register_intervention("shrink_perturb", ShrinkPerturb, ShrinkPerturbOptions)
