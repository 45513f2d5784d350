r"""Interventions: objects the trainer calls after every update, which edit weights and optimizer state.

Contains:
    InterventionConfig: one entry of the ``interventions`` config list (``{name, ...options}``).
    InterventionContext: what a factory gets besides the model and optimizer (example input, seed,
        the network's initialisation).
    Intervention: the protocol — ``after_update(update, model, optimizer, probe_obs, *,
        task_switched)`` returning scalars to log, and ``state_dict``/``load_state_dict``.
    INTERVENTIONS: the registry: ``redo`` (:mod:`plasticrl.plasticity.redo`), ``shrink_perturb``
        (:mod:`plasticrl.plasticity.shrink_perturb`), ``cbp`` (:mod:`plasticrl.plasticity.cbp`).
    register_intervention / parse_options: how those modules register themselves with typed options.
    InterventionBase / UnitIntervention: what the built-in interventions share.
    make_interventions / check_intervention: build the configured list; validate one entry's
        name and options without a model (start-up checks).

Every edit goes through :mod:`plasticrl.plasticity.surgery`: parameters are changed in place (never
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
defaults: ``ReDoOptions``, ``ShrinkPerturbOptions``, ``CBPOptions`` in their modules.

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

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from plasticrl.plasticity.options import build_options, parse_entry
from plasticrl.plasticity.registry import Registry
from plasticrl.plasticity.surgery import (
    AdamStep,
    InitKind,
    SliceSteps,
    check_editable,
    check_optimizer,
    reinit_units_,
)
from plasticrl.plasticity.units import UnitLayer, find_unit_layers
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = [
    "InterventionConfig",
    "InterventionContext",
    "Intervention",
    "InterventionFactory",
    "ProbeSource",
    "INTERVENTIONS",
    "TAG_PREFIX",
    "HIDDEN_GAIN",
    "register_intervention",
    "parse_options",
    "check_values",
    "refuse_parametrized",
    "probe_batch",
    "model_device",
    "InterventionBase",
    "UnitIntervention",
    "make_interventions",
    "check_intervention",
]

TAG_PREFIX = "interventions/"
HIDDEN_GAIN = math.sqrt(2.0)
"""Orthogonal gain of hidden layers (``plasticrl.agents.networks.orthogonal_init_``'s convention; heads:
1)."""

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
    def from_dict(cls, entry: Mapping[str, Any], prefix: str = "interventions[]") -> InterventionConfig:
        """Build from a YAML mapping; every key besides ``name`` is an option.

        The options are checked against the options dataclass the name is registered with
        (:func:`plasticrl.plasticity.options.parse_entry`, the one strict converter).

        Raises:
            ConfigError: no name, an unknown name, an unknown option or a bad value.
        """
        name, _, options = parse_entry(entry, prefix, INTERVENTIONS)
        return cls(name=name, options=options)

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


def parse_options(cls: type, name: str, options: Mapping[str, Any]) -> Any:
    """``cls(**options)`` for intervention ``name``'s options dataclass.

    Through the one strict converter (:func:`plasticrl.plasticity.options.build_options`): unknown
    keys and bad values raise a ``ConfigError`` (a ``ValueError``) naming the option.
    """
    return build_options(cls, options, f"interventions[{name}]", f"intervention {name!r}")


def check_values(checks: Mapping[str, bool], values: Any, valid: Mapping[str, str] | None = None) -> None:
    """Raise ``invalid <key>: <value> (<key> must be <valid[key]>)`` for the first failed check."""
    for key, ok in checks.items():
        if not ok:
            hint = (valid or {}).get(key)
            suffix = f" ({key} must be {hint})" if hint else ""
            raise ValueError(f"invalid {key}: {getattr(values, key)!r}{suffix}")


# ----------------------------------------------------------------------------- shared machinery


def refuse_parametrized(kind: str, model: nn.Module) -> None:
    """Raise, naming ``kind`` and the layer, if any module of ``model`` is parametrized."""
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            try:
                check_editable(module, name)
            except ValueError as exc:
                raise ValueError(f"{kind} cannot run on this network: {exc}") from None


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter."""
    return next(model.parameters()).device


def _generator(model: nn.Module, seed: int) -> torch.Generator:
    return torch.Generator(model_device(model)).manual_seed(int(seed) % 2**63)


def probe_batch(source: ProbeSource, n: int) -> Tensor:
    """``source`` itself if it is a tensor, else ``source(n)`` (Note [Probe batches])."""
    return source if isinstance(source, Tensor) else source(n)


class InterventionBase:
    """Base of the built-in interventions: the model, optimizer and generator it is bound to.

    Subclasses set ``name``; ``after_update`` calls :meth:`check_bound` first, and their
    ``state_dict``/``load_state_dict`` extend :meth:`base_state`/:meth:`load_base_state`.
    """

    name = "intervention"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: InterventionContext) -> None:
        self.model = model
        self.optimizer = optimizer
        self.generator = _generator(model, ctx.seed)

    def check_bound(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Raise unless ``model`` and ``optimizer`` are the ones this intervention was built for."""
        if model is not self.model or optimizer is not self.optimizer:
            raise ValueError(f"{self.name} was built for another model or optimizer")

    def base_state(self) -> dict[str, Any]:
        """The intervention's name and generator state."""
        return {"name": self.name, "generator": self.generator.get_state()}

    def load_base_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`base_state`; a state saved by another intervention is an error."""
        if state.get("name") != self.name:
            raise ValueError(f"{self.name}: cannot load the state of {state.get('name')!r}")
        self.generator.set_state(state["generator"])


class UnitIntervention(InterventionBase):
    """Base of ReDo and CBP: the model's hidden layers, a forward reading their units, the edit.

    The layers come from :func:`plasticrl.plasticity.units.find_unit_layers`, the edit is
    :func:`plasticrl.plasticity.surgery.reinit_units_`; ``adam_step`` ``reset`` gives recycled
    slices their own bias correction (``self.steps``, Note [Step count] in
    :mod:`plasticrl.plasticity.surgery`), ``keep`` leaves the tensor's step count.

    Raises (at construction):
        ValueError: a parametrized network, an optimizer whose state cannot be edited slice by
            slice, or a network without a recyclable hidden layer.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        ctx: InterventionContext,
        init: InitKind | None,
        adam_step: AdamStep = "keep",
    ) -> None:
        refuse_parametrized(self.name, model)
        check_optimizer(optimizer)
        super().__init__(model, optimizer, ctx)
        self.layers: list[UnitLayer] = find_unit_layers(model, ctx.example_obs)
        if not self.layers:
            raise ValueError(
                f"{self.name}: {type(model).__name__} has no hidden layer whose units can be recycled"
            )
        self.init: InitKind = ctx.init if init is None else init
        self.steps = SliceSteps(optimizer, dict(model.named_parameters())) if adam_step == "reset" else None

    @torch.no_grad()
    def unit_inputs(self, obs: Tensor) -> dict[str, Tensor]:
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

    def recycle(self, layer: UnitLayer, units: Tensor) -> None:
        """Recycle ``units`` of ``layer`` (:func:`plasticrl.plasticity.surgery.reinit_units_`)."""
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
            steps=self.steps,
        )


# ----------------------------------------------------------------------------- building


def register_intervention(name: str, cls: type, options_type: type) -> None:
    """Register ``cls(model, optimizer, options, ctx)`` under ``name``, built from ``options_type``.

    The registered factory parses an entry's options into ``options_type`` (a frozen dataclass,
    :func:`parse_options`), so :func:`check_intervention` can validate them without a model.
    """

    def factory(
        model: nn.Module, optimizer: torch.optim.Optimizer, cfg: InterventionConfig, ctx: InterventionContext
    ) -> Intervention:
        return cls(model, optimizer, parse_options(options_type, cfg.name, cfg.options), ctx)  # type: ignore[no-any-return]

    factory.__name__ = factory.__qualname__ = f"make_{name}"
    factory.__doc__ = f"Build :class:`{cls.__name__}` from an ``interventions`` entry."
    INTERVENTIONS.register(name, options=options_type)(factory)


def check_intervention(cfg: InterventionConfig) -> None:
    """Validate ``cfg``'s name and, for the built-in interventions, its options (no model needed).

    Raises:
        ValueError: an unknown name (listing the valid ones) or a bad option.
    """
    INTERVENTIONS.check(cfg.name)
    options_type = INTERVENTIONS.options(cfg.name)
    if options_type is not None:
        parse_options(options_type, cfg.name, cfg.options)


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
