"""ReDo, recycling dormant neurons (Sokar, Agarwal, Castro, Evci, ICML 2023, arXiv 2302.12902).

Contains:
    ReDoOptions: the options of an ``{name: redo, ...}`` entry.
    ReDo: the intervention, registered as ``redo`` in
    :data:`plasticrl.plasticity.interventions.INTERVENTIONS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from plasticrl.plasticity.interventions import (
    TAG_PREFIX,
    InterventionContext,
    ProbeSource,
    UnitIntervention,
    check_values,
    probe_batch,
    register_intervention,
)
from plasticrl.plasticity.metrics import dormant_masks, tau_tag
from plasticrl.plasticity.surgery import AdamStep, InitKind
from torch import nn

__all__ = ["ReDoOptions", "ReDo"]


@dataclass(frozen=True)
class ReDoOptions:
    """Options of ``redo`` (Sokar et al. 2023, docs/methods.md §2)."""

    tau: float = 0.1
    """τ: a unit with ReDo score s ≤ τ is recycled. docs/methods.md lists 0.025 and 0.1; [ours] 0.1, the
    more inclusive one, so a reset also takes units that are nearly (not only exactly) silent;
    0.025 is one override away."""
    every: int = 1000
    """F: recycle every this many updates (Note [Update counter])."""
    batch_size: int = 256
    """Probe observations the scores are measured on (the metrics' default probe size)."""
    init: InitKind | None = None
    """Distribution of the fresh incoming weights; null follows ``network.init``."""
    adam_step: AdamStep = "keep"
    """Adam's step count of recycled slices: ``keep`` the tensor's, or ``reset`` it per slice
    (per-slice bias correction; Note [Step count] in plasticrl.plasticity.surgery). Default
    ``keep``: Dopamine's ReDo zeroes the moments and keeps the count."""

    def __post_init__(self) -> None:
        checks = {
            "tau": math.isfinite(self.tau) and self.tau >= 0,
            "every": self.every >= 1,
            "batch_size": self.batch_size >= 1,
        }
        check_values(checks, self, {"tau": "finite and >= 0", "every": ">= 1", "batch_size": ">= 1"})


class ReDo(UnitIntervention):
    r"""Recycling dormant neurons (Sokar, Agarwal, Castro, Evci, ICML 2023, arXiv 2302.12902).

    Every ``every`` updates, on a probe batch: the score of unit i of a hidden layer is
    ``s_i = E|h_i| / mean_k E|h_k|`` (:func:`plasticrl.plasticity.metrics.dormant_fraction`'s definition,
    computed by its ``dormant_masks``; a conv channel is a unit, averaged over batch and space);
    every unit with ``s_i ≤ τ`` is recycled by :func:`plasticrl.plasticity.surgery.reinit_units_`: fresh
    incoming weights from the layer's own initialisation, zero bias, zero outgoing weights (the
    output loses only the recycled units' former contributions: none for silent units, little
    for dormant ones), and the optimizer moments of exactly those slices zeroed.

    The units are the producer's outputs (the pre-activation features), read where the next layer
    reads them; with CReLU both halves of a unit count (E|h| over the pair), so a unit is dormant
    only when its pre-activation is silent. The hidden layers are found by
    :func:`plasticrl.plasticity.surgery.find_unit_layers`; the heads are never recycled.

    Note [Order]
        Layers are recycled in forward order, each with the scores of the same probe forward.
        A weight that is both an outgoing weight of a recycled unit and an incoming weight of a
        recycled unit of the next layer therefore ends fresh (the later layer's re-initialisation
        wins): the next layer's recycled unit gets a whole fresh row, and the output is still
        unchanged, since that unit's own outgoing weights are zero.

    Logs ``interventions/redo/reset_units`` (units recycled), ``.../reset_units/<layer>`` and
    ``interventions/redo/reset_fraction`` (recycled / all hidden units) at every reset.
    """

    name = "redo"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        options: ReDoOptions,
        ctx: InterventionContext,
    ) -> None:
        super().__init__(model, optimizer, ctx, options.init, options.adam_step)
        self.options = options
        self.resets = 0  # resets performed
        self.recycled = 0  # units recycled over the run

    def after_update(
        self,
        update: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        probe_obs: ProbeSource,
        *,
        task_switched: bool = False,
    ) -> dict[str, float]:
        """Recycle the dormant units when ``update`` is a multiple of ``every``."""
        self.check_bound(model, optimizer)
        if update <= 0 or update % self.options.every:
            return {}
        tau = self.options.tau
        views = self.unit_inputs(probe_batch(probe_obs, self.options.batch_size))
        masks = dormant_masks(views, [tau])[tau_tag(tau)]
        out: dict[str, float] = {}
        total = units = 0
        for layer in self.layers:
            dormant = masks[layer.name].nonzero().flatten()
            self.recycle(layer, dormant)
            out[f"{TAG_PREFIX}redo/reset_units/{layer.name}"] = float(dormant.numel())
            total, units = total + dormant.numel(), units + layer.n_units
        self.resets += 1
        self.recycled += total
        out[f"{TAG_PREFIX}redo/reset_units"] = float(total)
        out[f"{TAG_PREFIX}redo/reset_fraction"] = total / units
        return out

    def state_dict(self) -> dict[str, Any]:
        """Generator and counters."""
        steps = self.steps.state_dict() if self.steps is not None else {}
        return self.base_state() | {"resets": self.resets, "recycled": self.recycled, "slice_steps": steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.load_base_state(state)
        self.resets, self.recycled = int(state["resets"]), int(state["recycled"])
        if self.steps is not None:
            self.steps.load_state_dict(state.get("slice_steps", {}))


register_intervention("redo", ReDo, ReDoOptions)
