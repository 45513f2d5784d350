r"""Interventions: objects the trainer calls after every update, which edit weights and optimizer state.

Contains:
    InterventionConfig: one entry of the ``interventions`` config list (``{name, ...options}``).
    InterventionContext: what a factory gets besides the model and optimizer (example input, seed,
        the network's initialisation).
    Intervention: the protocol — ``after_update(update, model, optimizer, probe_obs, *,
        task_switched)`` returning scalars to log, and ``state_dict``/``load_state_dict``.
    INTERVENTIONS: the registry: ``redo``, ``shrink_perturb``, ``cbp``.
    ReDo / ShrinkPerturb / ContinualBackprop and their option dataclasses.
    make_interventions / check_intervention: build the configured list; validate one entry's
        name and options without a model (start-up checks).

Every edit goes through :mod:`plasticity.surgery`: parameters are changed in place (never
replaced), and ReDo and CBP reset the optimizer state of exactly the slices they edit. All
randomness comes from one ``torch.Generator`` per intervention, seeded from the run seed and
checkpointed in ``state_dict``. Scalars are returned only when an intervention acts, under
``interventions/<name>/...``.

Config (a list; entries compose, in order, after every update)::

    interventions:
      - {name: redo, tau: 0.1, every: 1000}                  # ReDo every 1000 updates
      - {name: shrink_perturb, p: 0.999, sigma: 0.01}        # S&P after every update
      - {name: shrink_perturb, every: 0, on_task_switch: true, p: 0.5, sigma: 0.1}
      - {name: cbp, replacement_rate: 1.0e-4, maturity: 100}

On the command line: ``"interventions=[{name: redo, tau: 0.1, every: 1000}]"``. Options and
defaults: :class:`ReDoOptions`, :class:`ShrinkPerturbOptions`, :class:`CBPOptions`.

Note [Probe batches]
    ReDo and CBP score units on observations. ``after_update`` takes ``probe_obs``: a tensor, or a
    callable ``n -> (n, *obs_shape)`` that the trainer backs with its own generator over the
    replay buffer (DQN) or the last rollout (PPO) — the same kind of batch as the plasticity
    metrics, from a stream of its own, so interventions never change which transitions training
    or the metrics see. It is called only when a batch is needed (ReDo: every ``every`` updates),
    so a run's streams do not depend on whether an intervention is configured.

Note [Update counter]
    ``update`` is the agent's update count after the update just taken: gradient steps for DQN,
    PPO updates (one per rollout, ``update_epochs × num_minibatches`` gradient steps) for PPO.
    ``every``, CBP's ages and maturity are counted in these units.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Union, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from plasticity.metrics import dormant_masks, tau_tag, unit_activity
from plasticity.optimizers import head_module_names
from plasticity.registry import Registry, close_matches
from plasticity.surgery import (
    InitKind,
    UnitLayer,
    check_editable,
    check_optimizer,
    find_unit_layers,
    init_sample,
    reinit_units_,
    reset_state_,
)

__all__ = [
    "InterventionConfig",
    "InterventionContext",
    "Intervention",
    "InterventionFactory",
    "ProbeSource",
    "INTERVENTIONS",
    "ReDoOptions",
    "ReDo",
    "ShrinkPerturbOptions",
    "ShrinkPerturb",
    "CBPOptions",
    "ContinualBackprop",
    "make_interventions",
    "check_intervention",
]

TAG_PREFIX = "interventions/"
HIDDEN_GAIN = math.sqrt(2.0)
"""Orthogonal gain of hidden layers (``agents.networks.orthogonal_init_``'s convention; heads: 1)."""

ProbeSource = Tensor | Callable[[int], Tensor]
"""A probe batch, or a callable returning ``n`` probe observations (Note [Probe batches])."""


# ----------------------------------------------------------------------------- config and protocol


@dataclass(frozen=True)
class InterventionConfig:
    """One ``interventions`` entry: ``{name: redo, tau: 0.1, every: 1000}``."""

    name: str
    """Key in INTERVENTIONS or ``package.module:factory``."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Intervention-specific options (every other key of the entry)."""

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> InterventionConfig:
        """Build from a YAML mapping; every key besides ``name`` is an option."""
        if not isinstance(entry, Mapping):
            raise ValueError(f"each interventions entry must be a mapping, got {entry!r}")
        if "name" not in entry or not isinstance(entry["name"], str):
            raise ValueError(f"interventions entry {dict(entry)} lacks a name (a string)")
        return cls(name=entry["name"], options={k: v for k, v in entry.items() if k != "name"})

    def to_dict(self) -> dict[str, Any]:
        """Inverse of :meth:`from_dict`."""
        return {"name": self.name, **self.options}


@dataclass(frozen=True)
class InterventionContext:
    """What an intervention factory needs besides the model and the optimizer."""

    example_obs: Tensor
    """A batch (≥ 1) of observations on the model's device, to discover the layer structure."""
    seed: int = 0
    """Seed of the intervention's generator (from the run seed; ``make_interventions`` spawns one each)."""
    init: InitKind = "default"
    """The network's initialisation (``network.init``): the distribution fresh weights come from
    when an intervention's ``init`` option is null."""


@runtime_checkable
class Intervention(Protocol):
    """Edits a model (and its optimizer state) after updates; bound to them at construction."""

    name: str

    def after_update(
        self,
        update: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        probe_obs: ProbeSource,
        *,
        task_switched: bool = False,
    ) -> dict[str, float]:
        """Act (or not) after update number ``update``; return scalars to log (empty when idle).

        Args:
            update: the agent's update count (Note [Update counter]).
            model: the model the intervention was built for.
            optimizer: its optimizer.
            probe_obs: probe observations (Note [Probe batches]).
            task_switched: the environment's task changed since the previous call.
        """
        ...

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (generator, counters, utilities)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...


InterventionFactory = Callable[
    [nn.Module, torch.optim.Optimizer, InterventionConfig, InterventionContext], Intervention
]
INTERVENTIONS: Registry[InterventionFactory] = Registry("intervention")


# ----------------------------------------------------------------------------- options


_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert one option value to ``tp`` (int, float, bool, str, Optional of those)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)]
    if typing.get_origin(tp) is typing.Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"{key}: invalid value {value!r}; valid: {list(typing.get_args(tp))}")
        return value
    if isinstance(value, str) and tp in (int, float) and _SCIENTIFIC.match(value):
        value = float(value)  # YAML 1.1 reads 1e-4 as a string
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    raise ValueError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _parse_options(cls: type, name: str, options: Mapping[str, Any]) -> Any:
    """``cls(**options)`` with typed values; unknown keys and bad values name the option."""
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in options.items():
        if key not in fields:
            hint = close_matches(str(key), fields)
            did_you_mean = f" did you mean {' or '.join(repr(h) for h in hint)}?" if hint else ""
            raise ValueError(f"interventions[{name}]: unknown option {key!r};{did_you_mean} valid: {fields}")
        kwargs[key] = _coerce(value, hints[key], f"interventions[{name}].{key}")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ValueError(f"interventions[{name}]: {exc}") from None


def _check(checks: Mapping[str, bool], values: Any) -> None:
    for key, ok in checks.items():
        if not ok:
            raise ValueError(f"invalid {key}: {getattr(values, key)!r}")


@dataclass(frozen=True)
class ReDoOptions:
    """Options of ``redo`` (Sokar et al. 2023, METHODS.md §2)."""

    tau: float = 0.1
    """τ: a unit with ReDo score s ≤ τ is recycled. METHODS.md lists 0.025 and 0.1; ours is 0.1
    (the threshold at which more units are recycled per reset) — 0.025 is one override away."""
    every: int = 1000
    """F: recycle every this many updates (Note [Update counter])."""
    batch_size: int = 256
    """Probe observations the scores are measured on (the metrics' default probe size)."""
    init: InitKind | None = None
    """Distribution of the fresh incoming weights; null follows ``network.init``."""

    def __post_init__(self) -> None:
        _check({"tau": math.isfinite(self.tau) and self.tau >= 0, "every": self.every >= 1,
                "batch_size": self.batch_size >= 1}, self)  # fmt: skip


@dataclass(frozen=True)
class ShrinkPerturbOptions:
    """Options of ``shrink_perturb`` (Ash & Adams 2020, METHODS.md §2)."""

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
        _check({"p": math.isfinite(self.p) and 0.0 <= self.p <= 1.0,
                "sigma": math.isfinite(self.sigma) and self.sigma >= 0.0,
                "every": self.every >= 0}, self)  # fmt: skip
        if self.every == 0 and not self.on_task_switch:
            raise ValueError("every=0 without on_task_switch=true would never apply")


@dataclass(frozen=True)
class CBPOptions:
    """Options of ``cbp`` (Dohare et al., Nature 2024, METHODS.md §2)."""

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

    def __post_init__(self) -> None:
        _check({"replacement_rate": math.isfinite(self.replacement_rate) and 0 <= self.replacement_rate <= 1,
                "maturity": self.maturity >= 0, "decay": 0.0 <= self.decay < 1.0,
                "batch_size": self.batch_size >= 1}, self)  # fmt: skip


# ----------------------------------------------------------------------------- shared machinery


def _refuse_parametrized(kind: str, model: nn.Module) -> None:
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            try:
                check_editable(module, name)
            except ValueError as exc:
                raise ValueError(f"{kind} cannot run on this network: {exc}") from None


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _generator(model: nn.Module, seed: int) -> torch.Generator:
    return torch.Generator(_device(model)).manual_seed(int(seed) % 2**63)


def _probe(source: ProbeSource, n: int) -> Tensor:
    return source if isinstance(source, Tensor) else source(n)


class _Bound:
    """Holds the model/optimizer/generator an intervention is bound to; checks they are what it gets."""

    name = "intervention"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: InterventionContext) -> None:
        self.model = model
        self.optimizer = optimizer
        self.generator = _generator(model, ctx.seed)

    def _check_bound(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if model is not self.model or optimizer is not self.optimizer:
            raise ValueError(f"{self.name} was built for another model or optimizer")

    def _base_state(self) -> dict[str, Any]:
        return {"name": self.name, "generator": self.generator.get_state()}

    def _load_base(self, state: Mapping[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"{self.name}: cannot load the state of {state.get('name')!r}")
        self.generator.set_state(state["generator"])


class _UnitIntervention(_Bound):
    """ReDo and CBP: the hidden layers of the model and a hooked forward that reads their units."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        ctx: InterventionContext,
        init: InitKind | None,
    ) -> None:
        _refuse_parametrized(self.name, model)
        check_optimizer(optimizer)
        super().__init__(model, optimizer, ctx)
        self.layers: list[UnitLayer] = find_unit_layers(model, ctx.example_obs)
        if not self.layers:
            raise ValueError(
                f"{self.name}: {type(model).__name__} has no hidden layer whose units can be recycled"
            )
        self.init: InitKind = ctx.init if init is None else init

    @torch.no_grad()
    def _unit_inputs(self, obs: Tensor) -> dict[str, Tensor]:
        """``layer name → (B, F, copies·positions)`` readings of each unit, from one eval-mode forward."""
        seen: dict[str, Tensor] = {}
        handles = []
        for layer in self.layers:

            def hook(module: nn.Module, args: tuple[Any, ...], name: str = layer.name) -> None:
                seen[name] = args[0]

            handles.append(layer.consumers[0].register_forward_pre_hook(hook))
        flags = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            self.model(obs)
        finally:
            for handle in handles:
                handle.remove()
            for module, training in flags.items():
                module.training = training
        return {layer.name: layer.unit_view(seen[layer.name]) for layer in self.layers}

    def _recycle(self, layer: UnitLayer, units: Tensor) -> None:
        reinit_units_(
            layer.producer,
            units,
            layer.consumers,
            self.optimizer,
            generator=self.generator,
            init=self.init,
            gain=HIDDEN_GAIN,
            copies=layer.copies,
            norms=layer.norms,
        )


# ----------------------------------------------------------------------------- ReDo


class ReDo(_UnitIntervention):
    r"""Recycling dormant neurons (Sokar, Agarwal, Castro, Evci, ICML 2023, arXiv 2302.12902).

    Every ``every`` updates, on a probe batch: the score of unit i of a hidden layer is
    ``s_i = E|h_i| / mean_k E|h_k|`` (:func:`plasticity.metrics.dormant_fraction`'s definition,
    computed by its ``dormant_masks``; a conv channel is a unit, averaged over batch and space);
    every unit with ``s_i ≤ τ`` is recycled by :func:`plasticity.surgery.reinit_units_`: fresh
    incoming weights from the layer's own initialisation, zero bias, zero outgoing weights (so
    the network's output is unchanged), and the optimizer moments of exactly those slices zeroed.

    The units are the producer's outputs (the pre-activation features), read where the next layer
    reads them; with CReLU both halves of a unit count (E|h| over the pair), so a unit is dormant
    only when its pre-activation is silent. The hidden layers are found by
    :func:`plasticity.surgery.find_unit_layers`; the heads are never recycled.

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
        super().__init__(model, optimizer, ctx, options.init)
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
        self._check_bound(model, optimizer)
        if update <= 0 or update % self.options.every:
            return {}
        tau = self.options.tau
        views = self._unit_inputs(_probe(probe_obs, self.options.batch_size))
        masks = dormant_masks(views, [tau])[tau_tag(tau)]
        out: dict[str, float] = {}
        total = units = 0
        for layer in self.layers:
            dormant = masks[layer.name].nonzero().flatten()
            self._recycle(layer, dormant)
            out[f"{TAG_PREFIX}redo/reset_units/{layer.name}"] = float(dormant.numel())
            total, units = total + dormant.numel(), units + layer.n_units
        self.resets += 1
        self.recycled += total
        out[f"{TAG_PREFIX}redo/reset_units"] = float(total)
        out[f"{TAG_PREFIX}redo/reset_fraction"] = total / units
        return out

    def state_dict(self) -> dict[str, Any]:
        """Generator and counters."""
        return self._base_state() | {"resets": self.resets, "recycled": self.recycled}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self._load_base(state)
        self.resets, self.recycled = int(state["resets"]), int(state["recycled"])


# ----------------------------------------------------------------------------- Shrink & Perturb


class ShrinkPerturb(_Bound):
    r"""Shrink and Perturb (Ash & Adams, NeurIPS 2020, arXiv 1910.08475).

    .. math::
        \theta \leftarrow p\,\theta + \sigma\,\varepsilon, \qquad
        \varepsilon \sim \text{the layer's own initialisation distribution}

    applied every ``every`` updates and/or at the first update after a task switch. ε is a fresh
    draw of each layer's initialisation (:func:`plasticity.surgery.init_sample`): torch's default
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
        _refuse_parametrized(self.name, model)
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
        self._check_bound(model, optimizer)
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
        return self._base_state() | {"applications": self.applications, "periodic": self._periodic}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self._load_base(state)
        self.applications, self._periodic = int(state["applications"]), int(state["periodic"])


# ----------------------------------------------------------------------------- Continual Backprop


class ContinualBackprop(_UnitIntervention):
    r"""Continual backpropagation (Dohare, Hernandez-Garcia, Lan, Rahman, Mahmood, Sutton; Nature 2024).

    After every update, for every hidden layer (units as in :class:`ReDo`), on a probe batch:

    .. math::
        a_i \leftarrow a_i + 1, \qquad
        u_i \leftarrow \eta\,u_i + (1-\eta)\;\mathbb{E}|h_i| \cdot \overline{|w_{\text{out},i}|}

    with η = ``decay``, E|h_i| over the batch (and space, and CReLU's pair) and
    ``mean |w_out|`` over every outgoing weight of unit i. Units older than the maturity threshold
    m are *eligible*; the layer's replacement credit grows by ρ · (number eligible) per update,
    and while it is ≥ 1 the eligible unit with the lowest utility is replaced (credit − 1):
    fresh incoming weights, zero bias, zero outgoing weights and the optimizer state of those
    slices reset (:func:`plasticity.surgery.reinit_units_`), ``u_i = a_i = 0``.

    Note [CBP utility]
        The contribution utility of Dohare et al. multiplies |h_i| by the *sum* of the unit's
        outgoing weight magnitudes; METHODS.md §2 writes the mean. The two differ by the
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
        super().__init__(model, optimizer, ctx, options.init)
        self.options = options
        device = _device(model)
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
        self._check_bound(model, optimizer)
        opts = self.options
        views = self._unit_inputs(_probe(probe_obs, opts.batch_size))
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
            self._recycle(layer, units)
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
        return self._base_state() | {
            "utility": {k: v.clone() for k, v in self.utility.items()},
            "age": {k: v.clone() for k, v in self.age.items()},
            "credit": dict(self.credit),
            "replaced": self.replaced,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: the state was saved for other layers.
        """
        self._load_base(state)
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


# ----------------------------------------------------------------------------- registry


_BUILTIN: dict[str, tuple[type, type]] = {
    "redo": (ReDo, ReDoOptions),
    "shrink_perturb": (ShrinkPerturb, ShrinkPerturbOptions),
    "cbp": (ContinualBackprop, CBPOptions),
}


def _register(name: str, cls: type, options_cls: type) -> None:
    def factory(
        model: nn.Module, optimizer: torch.optim.Optimizer, cfg: InterventionConfig, ctx: InterventionContext
    ) -> Intervention:
        return cls(model, optimizer, _parse_options(options_cls, cfg.name, cfg.options), ctx)  # type: ignore[no-any-return]

    factory.__name__ = factory.__qualname__ = f"make_{name}"
    factory.__doc__ = f"Build :class:`{cls.__name__}` from an ``interventions`` entry."
    factory.options_type = options_cls  # type: ignore[attr-defined]  (check_intervention reads it)
    INTERVENTIONS.register(name)(factory)


for _name, (_cls, _options) in _BUILTIN.items():
    _register(_name, _cls, _options)


def check_intervention(cfg: InterventionConfig) -> None:
    """Validate ``cfg``'s name and, for the built-in interventions, its options (no model needed).

    Raises:
        ValueError: an unknown name (listing the valid ones) or a bad option.
    """
    factory = INTERVENTIONS.get(cfg.name)
    options_type = getattr(factory, "options_type", None)
    if options_type is not None:
        _parse_options(options_type, cfg.name, cfg.options)


def make_interventions(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    cfgs: Sequence[InterventionConfig],
    *,
    example_obs: Tensor,
    seed: int | np.random.SeedSequence,
    init: InitKind = "default",
) -> list[Intervention]:
    """Build every configured intervention for ``model`` and its optimizer, in config order.

    Args:
        model: the trained network (DQN's online network, PPO's actor-critic).
        optimizer: its optimizer.
        cfgs: the ``interventions`` entries.
        example_obs: a batch of observations on the model's device (structure discovery).
        seed: the interventions' seed; entry i gets the i-th child of ``SeedSequence(seed)``.
        init: the network's initialisation (``network.init``).

    Raises:
        ValueError: an unknown name, bad options, or a combination that cannot work (a
            constrained network, an optimizer whose state cannot be edited, …), with the reason.
    """
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    children = root.spawn(len(cfgs))
    out: list[Intervention] = []
    for cfg, child in zip(cfgs, children, strict=True):
        ctx = InterventionContext(example_obs, int(child.generate_state(1, np.uint64)[0]), init)
        factory = INTERVENTIONS.get(cfg.name)
        try:
            out.append(factory(model, optimizer, cfg, ctx))
        except TypeError as exc:
            raise ValueError(f"intervention {cfg.name!r}: bad options {dict(cfg.options)}: {exc}") from None
    return out
