r"""Continual backpropagation (Dohare, Hernandez-Garcia, Lan, Rahman, Mahmood, Sutton; Nature 2024).

Contains:
    CBPOptions: the options of an ``{name: cbp, ...}`` entry.
    ContinualBackprop: the intervention, registered as ``cbp`` in
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
    model_device,
    probe_batch,
    register_intervention,
)
from plasticrl.plasticity.metrics import unit_activity
from plasticrl.plasticity.surgery import AdamStep, InitKind
from torch import nn

__all__ = ["CBPOptions", "ContinualBackprop"]


@dataclass(frozen=True)
class CBPOptions:
    """Options of ``cbp`` (Dohare et al., Nature 2024, docs/methods.md §2)."""

    replacement_rate: float = 1e-4
    """ρ: units replaced per eligible unit per update, accumulated per layer."""
    maturity: int = 100
    """m: units younger than this many updates are never replaced (METHODS: 100–10 000)."""
    decay: float = 0.99
    """η of the utility's exponential moving average."""
    batch_size: int = 32
    """Probe observations per update on which |h| is measured ([ours]: one DQN batch)."""
    bias_correction: bool = True
    """Rank by u / (1 − η^age) ([ours]; Note [CBP utility])."""
    init: InitKind | None = None
    """Distribution of the fresh incoming weights; null follows ``network.init``."""
    adam_step: AdamStep = "reset"
    """Adam's step count of recycled slices: ``keep`` the tensor's, or ``reset`` it per slice
    (per-slice bias correction; Note [Step count] in plasticrl.plasticity.surgery). Default
    ``reset``: Dohare et al.'s AdamGnT resets the step of replaced features."""

    def __post_init__(self) -> None:
        checks = {
            "replacement_rate": math.isfinite(self.replacement_rate) and 0 <= self.replacement_rate <= 1,
            "maturity": self.maturity >= 0,
            "decay": 0.0 <= self.decay < 1.0,
            "batch_size": self.batch_size >= 1,
        }
        valid = {
            "replacement_rate": "in [0, 1]",
            "maturity": ">= 0",
            "decay": "in [0, 1)",
            "batch_size": ">= 1",
        }
        check_values(checks, self, valid)


class ContinualBackprop(UnitIntervention):
    r"""Continual backpropagation (Dohare, Hernandez-Garcia, Lan, Rahman, Mahmood, Sutton; Nature 2024).

    After every update, for every hidden layer (units as in :class:`plasticrl.plasticity.redo.ReDo`), on a
    probe batch:

    .. math::
        a_i \leftarrow a_i + 1, \qquad
        u_i \leftarrow \eta\,u_i + (1-\eta)\;\mathbb{E}|h_i| \cdot \overline{|w_{\text{out},i}|}

    with η = ``decay``, E|h_i| over the batch (and space, and CReLU's pair) and
    ``mean |w_out|`` over every outgoing weight of unit i. Units older than the maturity threshold
    m are *eligible*; the layer's replacement credit grows by ρ · (number eligible) per update,
    and while it is ≥ 1 the eligible unit with the lowest utility is replaced (credit − 1):
    fresh incoming weights, zero bias, zero outgoing weights and the optimizer state of those
    slices reset (:func:`plasticrl.plasticity.surgery.reinit_units_`), ``u_i = a_i = 0``.

    Note [CBP utility]
        The contribution utility of Dohare et al. multiplies |h_i| by the *sum* of the unit's
        outgoing weight magnitudes; docs/methods.md §2 writes the mean. The two differ by the
        consumer's fan-out, a constant per layer, and units are only ranked within their layer,
        so the replaced units are identical; the mean keeps utilities comparable across layers
        in the logs. u starts at 0 and is an exponential average, so a young unit's u is biased
        low by the factor 1 − η^a; with ``bias_correction`` (default, **[ours]**, as in Adam) the
        ranking uses u / (1 − η^a), so a unit that matured recently is not replaced for being
        young. |h| is measured on a probe batch (``batch_size`` observations from the trainer's
        probe stream), not on the update's own minibatch: one extra forward per update, and no
        change to the agent.

    Logs ``interventions/cbp/replaced_units`` (this update), ``.../replaced_units/<layer>`` and
    ``interventions/cbp/replaced_total`` whenever a unit is replaced.
    """

    name = "cbp"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        options: CBPOptions,
        ctx: InterventionContext,
    ) -> None:
        super().__init__(model, optimizer, ctx, options.init, options.adam_step)
        self.options = options
        device = model_device(model)
        self.utility = {
            u.name: torch.zeros(u.n_units, dtype=torch.float64, device=device) for u in self.layers
        }
        self.age = {u.name: torch.zeros(u.n_units, dtype=torch.long, device=device) for u in self.layers}
        self.credit = {u.name: 0.0 for u in self.layers}
        self.replaced = 0

    def after_update(
        self,
        update: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        probe_obs: ProbeSource,
        *,
        task_switched: bool = False,
    ) -> dict[str, float]:
        """Update utilities and ages; replace the lowest-utility mature units the credit allows."""
        self.check_bound(model, optimizer)
        opts = self.options
        views = self.unit_inputs(probe_batch(probe_obs, opts.batch_size))
        out: dict[str, float] = {}
        replaced_now = 0
        for layer in self.layers:
            name = layer.name
            contribution = unit_activity(views[name]) * layer.outgoing_magnitude()
            utility, age = self.utility[name], self.age[name]
            utility.mul_(opts.decay).add_(contribution, alpha=1.0 - opts.decay)
            age.add_(1)
            eligible = age > opts.maturity
            n_eligible = int(eligible.sum())
            if n_eligible == 0:
                continue
            self.credit[name] += opts.replacement_rate * n_eligible
            count = min(int(self.credit[name]), n_eligible)
            if count == 0:
                continue
            self.credit[name] -= count
            ranked = utility / (1.0 - opts.decay ** age.double()) if opts.bias_correction else utility.clone()
            ranked[~eligible] = math.inf
            units = torch.topk(ranked, count, largest=False).indices
            self.recycle(layer, units)
            utility[units] = 0.0
            age[units] = 0
            replaced_now += count
            out[f"{TAG_PREFIX}cbp/replaced_units/{name}"] = float(count)
        if replaced_now:
            self.replaced += replaced_now
            out[f"{TAG_PREFIX}cbp/replaced_units"] = float(replaced_now)
            out[f"{TAG_PREFIX}cbp/replaced_total"] = float(self.replaced)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Generator, utilities, ages, replacement credits and the replacement count."""
        return self.base_state() | {
            "utility": {k: v.clone() for k, v in self.utility.items()},
            "age": {k: v.clone() for k, v in self.age.items()},
            "credit": dict(self.credit),
            "replaced": self.replaced,
            "slice_steps": self.steps.state_dict() if self.steps is not None else {},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: the state was saved for other layers.
        """
        self.load_base_state(state)
        if set(state["utility"]) != set(self.utility) or any(
            state["utility"][k].shape != v.shape for k, v in self.utility.items()
        ):
            raise ValueError(
                f"cbp state holds layers {sorted(state['utility'])}, the model has {sorted(self.utility)}"
            )
        for key in self.utility:
            self.utility[key].copy_(state["utility"][key])
            self.age[key].copy_(state["age"][key])
        self.credit = {k: float(v) for k, v in state["credit"].items()}
        self.replaced = int(state["replaced"])
        if self.steps is not None:
            self.steps.load_state_dict(state.get("slice_steps", {}))


register_intervention("cbp", ContinualBackprop, CBPOptions)
