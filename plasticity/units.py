r"""The hidden units of a network: which layer produces them and which layers read them.

Contains:
    UnitLayer: one hidden layer whose units can be recycled — a producer (Linear/Conv), the
        layers reading its units, the per-unit normalisations between, and how they are read.
    find_unit_layers: every such layer of a network, discovered from the autograd graph of one
        forward (Note [Discovery]); no module names or types are assumed.

ReDo and Continual Backprop (:mod:`plasticrl.plasticity.redo`, :mod:`plasticrl.plasticity.cbp`) recycle
units of these
layers with :func:`plasticrl.plasticity.surgery.reinit_units_`; the column layout they rely on is
Note [Flatten layout] and Note [Copies] of :mod:`plasticrl.plasticity.surgery`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from plasticrl.plasticity.surgery import unit_columns
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = ["UnitLayer", "find_unit_layers", "NORM_TYPES", "is_weight_module"]

_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class UnitLayer:
    """One hidden layer whose units can be recycled: a producer and the layers that read its units.

    Attributes:
        name: the producer's module name (``named_modules()``).
        producer: the Linear/Conv whose output units these are.
        consumers: the Linear/Conv layers that read them, in forward order.
        consumer_names: their module names.
        norms: per-unit modules between them (LayerNorm, GroupNorm, …).
        norm_names: their module names.
        n_units: F, the producer's output features / channels.
        copies: copies of each unit the consumers read (Note [Copies]).
    """

    name: str
    producer: nn.Module = field(repr=False)
    consumers: tuple[nn.Module, ...] = field(repr=False)
    consumer_names: tuple[str, ...]
    norms: tuple[nn.Module, ...] = field(repr=False)
    norm_names: tuple[str, ...]
    n_units: int
    copies: int

    def unit_view(self, consumer_input: Tensor) -> Tensor:
        """The first consumer's input as ``(B, F, copies · positions)``: unit u's every reading in row u.

        :func:`plasticrl.plasticity.metrics.unit_activity` of this view is E|h_u| over the batch, the copies
        and the spatial positions — the ReDo score's numerator for a producer unit.
        """
        b = consumer_input.shape[0]
        view = consumer_input.reshape(b, self.copies, self.n_units, -1)  # copy-major, then unit, then space
        return view.transpose(1, 2).reshape(b, self.n_units, -1)

    def outgoing_magnitude(self) -> Tensor:
        """Mean |w_out| per unit over every outgoing weight of every consumer, ``(F,)`` float64."""
        total = torch.zeros(self.n_units, dtype=torch.float64, device=self.producer.weight.device)
        count = 0
        for consumer in self.consumers:
            w = consumer.weight.detach()
            per_unit = w.abs().reshape(w.shape[0], self.copies, self.n_units, -1).transpose(0, 2)
            total += per_unit.reshape(self.n_units, -1).sum(1, dtype=torch.float64)
            count += per_unit[0].numel()
        return total / count


@dataclass
class _Record:
    calls: int = 0
    inputs: Tensor | None = None
    output: Tensor | None = None


NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
"""Normalisation modules: per-unit gains, never weight matrices; they may sit between a layer and
its activation."""


def is_weight_module(module: nn.Module) -> bool:
    """A module owning a ≥ 2-d ``weight`` (plain or parametrized) that is not a normalisation."""
    if isinstance(module, NORM_TYPES):
        return False  # a LayerNorm((C, H, W)) gain is 3-d but per entry, not a weight matrix
    if parametrize.is_parametrized(module, "weight"):
        return True
    weight = dict(module.named_parameters(recurse=False)).get("weight")
    return weight is not None and weight.dim() >= 2


def _ancestors(
    start: Any, stops: Mapping[Any, str], passes: Mapping[Any, str]
) -> tuple[set[str], set[str], bool]:
    """Walk the autograd graph back from ``start``.

    Returns:
        (the ``stops`` it reaches, the ``passes`` it crosses, whether it crosses a normalisation —
        an autograd node whose type names a norm, module or functional).
    """
    reached: set[str] = set()
    crossed: set[str] = set()
    normalised = False
    stack, seen = [start], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node in stops:
            reached.add(stops[node])
            continue
        if node in passes:
            crossed.add(passes[node])
        normalised = normalised or "Norm" in type(node).__name__
        stack.extend(fn for fn, _ in node.next_functions)
    return reached, crossed, normalised


def find_unit_layers(model: nn.Module, example_obs: Tensor) -> list[UnitLayer]:
    """The hidden layers of ``model`` whose units can be recycled, found from one forward.

    Note [Discovery]
        One forward of ``example_obs`` with autograd on (eval mode, nothing stepped) records the
        output ``grad_fn`` of every *weight module* (a Linear/Conv/… owning a ≥ 2-d ``weight``)
        and of every other parameter-owning module. From each weight module Q's input, a walk
        back through the autograd graph stops at the weight modules it reaches: those are Q's
        producers, and the parameter-owning modules it crosses are the per-unit ``norms`` between
        them. Activations, flattens, CReLU's concatenation, ``nn.Identity`` … are crossed
        whatever their type or whether they are modules, so no module names or types are
        assumed. A producer P becomes a :class:`UnitLayer` with consumers {Q : Q reads P alone};
        the heads (whose outputs reach the model output) have none and are never recycled.
        ``copies`` follows from the fan-ins (``in_features / (F · H·W)`` or ``in_channels / F``),
        and the column map (Notes [Flatten layout], [Copies]) is then checked by perturbing the
        first and last unit of P and comparing the consumers' inputs — except where a
        normalisation across units (LayerNorm, GroupNorm, BatchNorm: an autograd node whose type
        names a norm) lies between, which moves every input: there the layout is trusted.

    Args:
        model: the network (its forward must take ``example_obs``).
        example_obs: a batch of at least one observation.

    Returns:
        The layers in forward order of their producers.

    Raises:
        ValueError: a weight module called more than once per forward, a layer read together
            with another layer (residual sums, concatenations of two streams), a hidden layer
            that also reaches the output directly, or a layout the column map does not describe.
    """
    names = {id(m): n for n, m in model.named_modules()}
    weight_modules = {n: m for n, m in model.named_modules() if is_weight_module(m)}
    other_modules = {
        n: m
        for n, m in model.named_modules()
        if n not in weight_modules
        and not isinstance(m, parametrize.ParametrizationList)
        and any(True for _ in m.parameters(recurse=False))
    }
    records = {n: _Record() for n in (*weight_modules, *other_modules)}

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        record = records[names[id(module)]]
        record.calls += 1
        record.inputs = args[0] if args and isinstance(args[0], Tensor) else None
        record.output = output if isinstance(output, Tensor) else None

    flags = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(hook) for m in (*weight_modules.values(), *other_modules.values())]
    model.eval()
    try:
        with torch.enable_grad():
            result = model(example_obs)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in flags.items():
            module.training = training
    called = [n for n in weight_modules if records[n].calls]
    twice = [n for n in called if records[n].calls > 1]
    if twice:
        raise ValueError(f"layers {twice} run more than once per forward; their units cannot be recycled")
    stops = {records[n].output.grad_fn: n for n in called if records[n].output is not None}  # type: ignore[union-attr]
    passes = {
        records[n].output.grad_fn: n  # type: ignore[union-attr]
        for n in other_modules
        if records[n].calls and records[n].output is not None
    }
    stops.pop(None, None)
    passes.pop(None, None)
    producers_of: dict[str, set[str]] = {}
    norms_of: dict[str, set[str]] = {}
    normalised: set[str] = set()  # consumers whose input is normalised across units
    for name in called:
        x = records[name].inputs
        producers_of[name], norms_of[name], across = (
            _ancestors(x.grad_fn, stops, passes) if x is not None else (set(), set(), False)
        )
        if across:
            normalised.add(name)
    outputs = result if isinstance(result, tuple | list) else (result,)
    exposed: set[str] = set()
    for out in outputs:
        if isinstance(out, Tensor):
            exposed |= _ancestors(out.grad_fn, stops, {})[0]
    layers = []
    for producer in called:
        consumers = [q for q in called if producer in producers_of[q]]
        if not consumers:
            continue  # a head (or unused): nothing reads its units
        mixed = [q for q in consumers if len(producers_of[q]) > 1]
        if mixed:
            raise ValueError(
                f"layer {mixed[0]!r} reads {sorted(producers_of[mixed[0]])} together; units of "
                f"{producer!r} cannot be recycled (chains of layers only)"
            )
        if producer in exposed:
            raise ValueError(f"the units of layer {producer!r} reach the output without a layer reading them")
        if not isinstance(weight_modules[producer], _AFFINE):
            kind = type(weight_modules[producer]).__name__
            raise ValueError(f"layer {producer!r} is a {kind}: only Linear/Conv units can be recycled")
        layers.append(
            _unit_layer(model, producer, consumers, norms_of, records, weight_modules, other_modules)
        )
    for layer in layers:
        if not normalised & set(layer.consumer_names):
            _check_layout(model, example_obs, layer)
    return layers


def _unit_layer(
    model: nn.Module,
    producer: str,
    consumers: list[str],
    norms_of: Mapping[str, set[str]],
    records: Mapping[str, _Record],
    weight_modules: Mapping[str, nn.Module],
    other_modules: Mapping[str, nn.Module],
) -> UnitLayer:
    """Build the :class:`UnitLayer` of ``producer``, deriving ``copies`` from the fan-ins."""
    module = weight_modules[producer]
    out = records[producer].output
    assert out is not None
    n_units = int(out.shape[1])
    positions = math.prod(out.shape[2:])
    copies_seen = set()
    for name in consumers:
        consumer = weight_modules[name]
        if isinstance(consumer, nn.Linear):
            fan_in, per_copy = consumer.in_features, n_units * positions
        elif isinstance(consumer, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            fan_in, per_copy = consumer.in_channels, n_units
        else:
            raise ValueError(
                f"layer {name!r} ({type(consumer).__name__}) reads {producer!r}: Linear or Conv only"
            )
        if fan_in % per_copy:
            raise ValueError(
                f"layer {name!r} has fan-in {fan_in}, not a multiple of the {per_copy} values layer "
                f"{producer!r} outputs; its units cannot be mapped to {name!r}'s inputs (pooling or a "
                f"reshape between them?)"
            )
        copies_seen.add(fan_in // per_copy)
    if len(copies_seen) != 1:
        raise ValueError(f"the consumers {consumers} of layer {producer!r} read its units differently")
    norm_names = sorted(set().union(*(norms_of[q] for q in consumers)), key=list(other_modules).index)
    return UnitLayer(
        name=producer,
        producer=module,
        consumers=tuple(weight_modules[q] for q in consumers),
        consumer_names=tuple(consumers),
        norms=tuple(other_modules[n] for n in norm_names),
        norm_names=tuple(norm_names),
        n_units=n_units,
        copies=copies_seen.pop(),
    )


@torch.no_grad()
def _check_layout(model: nn.Module, example_obs: Tensor, layer: UnitLayer) -> None:
    """Perturb the first and last unit of ``layer``; check which consumer inputs move (Note [Discovery])."""
    seen: dict[int, Tensor] = {}

    def record(module: nn.Module, args: tuple[Any, ...]) -> None:
        seen[id(module)] = args[0].detach().clone()

    def run(unit: int | None) -> list[Tensor]:
        def shift(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor:
            if unit is None:
                return output
            bumped = output.clone()
            bumped[:, unit] += 10.0 * (output.abs().max() + 1.0)
            return bumped

        handles = [layer.producer.register_forward_hook(shift)]
        handles += [c.register_forward_pre_hook(record) for c in layer.consumers]
        flags = {m: m.training for m in model.modules()}
        model.eval()
        try:
            model(example_obs)
        finally:
            for handle in handles:
                handle.remove()
            for module, training in flags.items():
                module.training = training
        return [seen[id(c)] for c in layer.consumers]

    base = run(None)
    for unit in sorted({0, layer.n_units - 1}):
        for name, consumer, before, after in zip(
            layer.consumer_names, layer.consumers, base, run(unit), strict=True
        ):
            moved = (before != after).reshape(before.shape[0], before.shape[1], -1).any(2).any(0)
            if not moved.any():
                continue  # a saturated unit: nothing to learn from it
            expected = torch.zeros_like(moved)
            expected[unit_columns(torch.tensor([unit]), layer.n_units, consumer, copies=layer.copies)] = True
            if (moved & ~expected).any():
                raise ValueError(
                    f"unit {unit} of layer {layer.name!r} is read by inputs "
                    f"{moved.nonzero().flatten().tolist()[:8]}… of layer {name!r}, not by the "
                    f"channel-major block plasticrl.plasticity.surgery assumes (Note [Flatten layout] in "
                    f"plasticrl.plasticity.surgery); its units cannot be recycled"
                )
