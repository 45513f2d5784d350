r"""The plasticity collector: :class:`PlasticityProbe` hooks a network and measures every metric.

Contains:
    PlasticityProbe: hooks found through ``named_modules()`` + one probe forward → every metric of
        :mod:`plasticrl.plasticity.metrics`, as full TensorBoard tags.

The metrics themselves (one definition each) and the notes this module follows — Note [Tags],
Note [Hidden layers], Note [Layer Jacobian] — are in :mod:`plasticrl.plasticity.metrics`.

Note [Data flow]
    At construction the probe traces the network's forward with ``torch.fx`` (weight-owning
    modules and weight-free modules kept as single calls, :func:`plasticrl.plasticity.optimizers.
    trace_network`) and walks the graph back from every activation module and every weight module
    to the weight modules feeding them. This gives, without names or registration order: the
    activation modules fed by a head (not hidden), the producer of each activation (so conv →
    Flatten → φ is viewed per channel and keeps its conv Jacobian), and the layers whose outputs
    reach no activation module (functional activations; measured at their consumer's input; a
    layer read only together with another one — a residual sum, a concatenation — cannot be
    told apart: it is said once, in a warning, and kept in ``unseen``). A layer whose output
    reaches an activation module, even through a residual sum (ImpalaCNN's blocks), is measured
    there, as before.

Note [Probe forward]
    The probe runs under ``torch.no_grad()`` in eval mode (training flags restored afterwards), so
    it never records a graph, touches ``.grad``, updates BatchNorm statistics or draws dropout
    noise from the global generator. ``torch.func`` transforms still differentiate inside it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from plasticrl.plasticity.dataflow import walk_back
from plasticrl.plasticity.metrics import (
    _AFFINE,
    _ELEMENTWISE,
    _MAX_CLOSED_FORM_OUTPUTS,
    ACTIVATION_TYPES,
    TAG_PREFIX,
    MetricsConfig,
    _diag_scaled_moments,
    _fractions,
    _jacobian_moments,
    _masks_from_activity,
    _moment_dict,
    _Moments,
    custom_scalars_layout,
    empirical_ntk,
    feature_rank,
    grad_norm,
    layer_jacobian,
    measured_weights,
    ntk_stats,
    optimizer_stats,
    param_rms,
    persistent_dormant,
    reactivated_dormant,
    unit_activity,
    weight_stats,
)
from plasticrl.plasticity.optimizers import _owns_matrix, head_module_names, param_groups, trace_network
from plasticrl.plasticity.units import NORM_TYPES, is_weight_module
from torch import Tensor, fx, nn
from torch.func import jvp
from torch.nn.utils import parametrize

__all__ = ["PlasticityProbe"]


class _Call(NamedTuple):
    """One forward call of a hooked module during the probe forward."""

    module: nn.Module
    output: Tensor  # kept alive during the probe, so object identity pairs calls unambiguously
    input_id: int  # id() of the first positional input
    inputs: Tensor | None = None  # weight modules: the first rows of the input, cloned
    pre_activation: Tensor | None = None  # weight modules: the output, cloned before in-place activations
    activity: Tensor | None = None  # unit modules: E|h_i| (reduced in the hook, before later in-place ops)
    in_shape: tuple[int, ...] | None = None  # unit modules: the per-sample shape of their input
    input_ref: Tensor | None = None  # unit modules: their input, kept alive so input_id stays unique


class _Calls(NamedTuple):
    """What one probe forward recorded."""

    units: list[tuple[str, _Call]]  # (site, call) of every unit module call, in forward order
    weights: dict[int, tuple[str, _Call]]  # weight module calls by id() of their output
    norms: dict[int, _Call]  # normalisation calls by id() of their output (with Jacobians only)
    head_inputs: list[tuple[str, Tensor]]


_RESHAPE_METHODS = frozenset({"view", "reshape", "flatten", "contiguous", "unflatten"})
_RESHAPE_MODULES = (nn.Flatten, nn.Unflatten, nn.Identity)


@dataclass
class _Flow:
    """What the torch.fx trace of a network says about its hidden units (Note [Data flow])."""

    after_head: set[str] = field(default_factory=set)  # activation modules fed by a head
    functional: dict[str, str] = field(default_factory=dict)  # producer → consumer reading its units
    producer_of: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)  # act → (L, norms)
    unseen: dict[str, str] = field(default_factory=dict)  # layer → why its units cannot be measured


def _data_flow(
    model: nn.Module, heads: Sequence[str], activation_types: tuple[type[nn.Module], ...]
) -> _Flow | str:
    """Trace ``model`` (Note [Data flow]); a string says why it cannot be traced."""
    try:
        graph = trace_network(model)
    except ValueError as exc:
        return str(exc)
    modules = dict(model.named_modules())
    flow = _Flow()

    def module_of(node: fx.Node) -> nn.Module | None:
        return modules.get(str(node.target)) if node.op == "call_module" else None

    def is_matrix(node: fx.Node) -> bool:
        module = module_of(node)
        return module is not None and _owns_matrix(module)

    def is_activation(node: fx.Node) -> bool:
        return isinstance(module_of(node), activation_types)

    def is_reshape(node: fx.Node) -> bool:
        if node.op == "call_method":
            return str(node.target) in _RESHAPE_METHODS
        if node.op == "call_function":
            return node.target in (torch.flatten, torch.reshape)
        return isinstance(module_of(node), _RESHAPE_MODULES)

    def walk(start: Sequence[fx.Node]) -> tuple[set[str], set[str], list[fx.Node]]:
        """(matrix modules reached, activation modules reached, nodes crossed) walking back."""
        producers: set[str] = set()
        acts: set[str] = set()
        crossed: list[fx.Node] = []
        leaf = ("placeholder", "get_attr")
        for node in walk_back(start, lambda n: is_matrix(n) or is_activation(n) or n.op in leaf):
            if is_matrix(node):
                producers.add(str(node.target))
            elif is_activation(node):
                acts.add(str(node.target))
            elif node.op not in leaf:
                crossed.append(node)
        return producers, acts, crossed

    head_set = set(heads)
    in_head = {n for n in modules for h in heads if n == h or n.startswith(h + ".")}
    covered: set[str] = set()  # producers whose outputs reach an activation module (its units)
    for node in graph.nodes:
        if is_activation(node) and str(node.target) not in in_head:
            producers, acts, crossed = walk(node.all_input_nodes)
            name = str(node.target)
            covered |= producers
            if producers & head_set:
                flow.after_head.add(name)
            elif len(producers) == 1 and not acts:
                norms = [module_of(c) for c in crossed]
                if all(
                    isinstance(m, NORM_TYPES) or is_reshape(c) for m, c in zip(norms, crossed, strict=True)
                ):
                    norm_names = tuple(
                        str(c.target) for c in reversed(crossed) if isinstance(module_of(c), NORM_TYPES)
                    )
                    flow.producer_of[name] = (next(iter(producers)), norm_names)
        if is_matrix(node):
            consumer = str(node.target)
            producers, acts, _ = walk(node.all_input_nodes)
            free = sorted(p for p in producers if p not in in_head and p not in covered)
            if not free:
                continue
            if len(producers) == 1 and not acts:
                flow.functional.setdefault(free[0], consumer)
            else:
                for p in free:
                    flow.unseen[p] = (
                        f"{consumer!r} reads its units together with "
                        f"{sorted((producers - {p}) | acts)} (a sum or concatenation), so they "
                        f"cannot be told apart"
                    )
    for p in list(flow.functional):
        if p in flow.unseen or p in covered:
            del flow.functional[p]
    for p in list(flow.unseen):
        if p in covered:
            del flow.unseen[p]
    return flow


class PlasticityProbe:
    """Measures every plasticity metric of one network on a probe batch, as TensorBoard tags.

    Construct it right after the network (before the first update): it snapshots the initial
    weights for ``weight_dist_init``. Each call runs **one** forward on the probe batch under
    ``torch.no_grad()`` with forward hooks (Note [Probe forward]), then computes from the captured
    tensors: dormant fractions and their persistence, feature rank of the head's input, layer
    Jacobian σ² moments, weight statistics, parameter RMS, gradient norm, √v̂ statistics and, when
    asked, the empirical NTK. Layers are found from the data flow (Note [Data flow], Note [Hidden
    layers]); the head from :func:`plasticrl.plasticity.optimizers.head_module_names`.

    Tags (full, Note [Tags]): ``plasticity/dormant_fraction/tau_<τ>`` and ``…/<layer>``,
    ``plasticity/dormant_persistent/tau_<τ>[/<layer>]`` (from the second call on),
    ``plasticity/dormant_reactivated/tau_<τ>[/<layer>]`` (after a :meth:`task_switched`),
    ``plasticity/srank``, ``plasticity/effective_rank``, ``plasticity/feature_norm`` (with several
    heads fed different features: ``plasticity/srank/<head>``…),
    ``plasticity/jacobian_sv2_mean`` / ``_var`` (pooled over layers, each layer weighted by its
    k = min(m, n) singular values **[ours]**) and ``…/<layer>``, ``plasticity/weight_norm/<layer>``,
    ``weight_dist_init``, ``weight_sv_max``, ``weight_sv_min``, ``stable_rank``,
    ``isometry_gap/<layer>``, ``plasticity/param_rms``, ``plasticity/grad_norm``,
    ``plasticity/sqrt_v_{mean,max,min}/<kind>``, ``plasticity/ntk_{condition_number,rank,
    effective_rank,lambda_max}``.

    Use in a trainer (after each gradient update)::

        probe = PlasticityProbe(q_net, cfg.metrics)        # before the first update
        if probe.due(agent.updates) or probe.ntk_due(agent.updates):
            scalars = probe(probe_obs, ntk=probe.ntk_due(agent.updates),
                            optimizer=agent.optimizer, grad_norm_value=update_metrics.get("grad_norm"))
            logger.log(scalars, global_step)
        checkpoint["metrics"] = probe.state_dict()         # probe.load_state_dict(...) on resume

    Args:
        model: the online network (any ``nn.Module`` mapping a batch to ``(B, outputs)``).
        cfg: the ``metrics`` section.
        layers: module names whose outputs are the hidden units, overriding the discovery of
            Note [Hidden layers] (e.g. for a network with functional activations).
        activation_types: module types treated as activations.

    Attributes:
        unit_layers: names of the hidden layers: activation modules, or the producing layer of
            units behind a functional activation.
        unseen: ``{layer: why}`` of what the probe cannot measure as the other layers
            (also warned once at construction; ``""``: the whole network, untraceable).
        weight_layers: names of the layers of the weight statistics.
        measurements: calls so far (restored by :meth:`load_state_dict`).

    Raises:
        ValueError: a name in ``layers`` is not a module of ``model``.

    Example:
        >>> _ = torch.manual_seed(0)  # (an init whose ReLUs are not all dead on this input)
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> probe = PlasticityProbe(net, MetricsConfig(probe_size=8, ntk_probe_size=2))
        >>> probe.unit_layers, probe.weight_layers
        (('1',), ('0', '2'))
        >>> scalars = probe(torch.ones(8, 3), ntk=True)
        >>> scalars["plasticity/srank"]  # eight identical observations: rank 1
        1.0
        >>> scalars["plasticity/ntk_rank"]  # two outputs; the second, identical sample adds none
        2.0
    """

    def __init__(
        self,
        model: nn.Module,
        cfg: MetricsConfig | None = None,
        *,
        layers: Sequence[str] | None = None,
        activation_types: tuple[type[nn.Module], ...] = ACTIVATION_TYPES,
    ) -> None:
        self.model = model
        self.cfg = cfg if cfg is not None else MetricsConfig()
        self.groups = param_groups(model)
        self.heads = head_module_names(model)
        modules = dict(model.named_modules())
        in_head = {n for n in modules for h in self.heads if n == h or n.startswith(h + ".")}
        # Modules owning a weight of >= 2 dims (parametrized or plain), outside the head.
        self._weight_modules = {
            name: m
            for name, m in modules.items()
            if name not in in_head
            and not isinstance(m, parametrize.ParametrizationList)
            and is_weight_module(m)
        }
        # Normalisations outside the head: a hidden layer may be L → norm → φ (Note [Hidden layers]).
        self._norm_modules = {
            name: m for name, m in modules.items() if name not in in_head and isinstance(m, NORM_TYPES)
        }
        self._functional: dict[str, tuple[nn.Module, nn.Module]] = {}  # producer → (it, consumer)
        self._act_producer: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.unseen: dict[str, str] = {}
        if layers is not None:
            missing = [n for n in layers if n not in modules]
            if missing:
                raise ValueError(f"metrics layers {missing} are not modules of {type(model).__name__}")
            unit_names = list(layers)
        else:
            flow = _data_flow(model, self.heads, activation_types)
            after_head: set[str] = set()
            if isinstance(flow, _Flow):
                after_head = flow.after_head
                self._act_producer = {
                    a: (p, norms) for a, (p, norms) in flow.producer_of.items() if p in self._weight_modules
                }
                self.unseen = dict(flow.unseen)
                for producer, consumer in flow.functional.items():
                    if producer in self._weight_modules and consumer in modules:
                        self._functional[producer] = (modules[producer], modules[consumer])
                        self.unseen.setdefault(
                            producer,
                            f"no activation module lies between it and {consumer!r} (a functional "
                            f"activation such as F.relu, or none): its units are measured as the input "
                            f"of {consumer!r}, its layer Jacobian is {producer!r} alone",
                        )
            unit_names = [
                n
                for n, m in modules.items()
                if (isinstance(m, activation_types) and n not in in_head and n not in after_head)
                or n in self._functional
            ]
            if not isinstance(flow, _Flow):
                self.unseen[""] = (
                    f"{flow}: units are read from activation modules only (functional activations, "
                    f"activations after the head and mixed layers are not told apart); pass "
                    f"layers=[...] to name them"
                )
                if not unit_names:  # functional activations: report on the pre-activations
                    unit_names = list(self._weight_modules)
        if self.unseen:
            said = "; ".join(f"layer {k!r}: {v}" if k else v for k, v in self.unseen.items())
            warnings.warn(f"PlasticityProbe on {type(model).__name__}: {said}", stacklevel=2)
        self._unit_modules = {name: modules[name] for name in unit_names if name not in self._functional}
        self.unit_layers: tuple[str, ...] = tuple(unit_names)
        self._init = {k: w.clone() for k, w in measured_weights(model, self.groups).items()}
        self.weight_layers: tuple[str, ...] = tuple(self._init)
        self._previous: dict[str, dict[str, Tensor]] = {}
        self._at_switch: dict[str, dict[str, Tensor]] = {}  # dormant masks at the last task switch
        self.measurements = 0

    def due(self, updates: int) -> bool:
        """Whether a measurement is due after ``updates`` gradient updates (``metrics.every``).

        ``ntk_every`` is a multiple of ``every``, so an NTK measurement always falls on a due
        update (unless ``every`` is 0: then measure when :meth:`ntk_due` alone).
        """
        return self.cfg.every > 0 and updates > 0 and updates % self.cfg.every == 0

    def ntk_due(self, updates: int) -> bool:
        """Whether the NTK is due after ``updates`` updates (``metrics.ntk_every``)."""
        return self.cfg.ntk_every > 0 and updates > 0 and updates % self.cfg.ntk_every == 0

    def layout(self) -> dict[str, dict[str, list[Any]]]:
        """The custom-scalars layout of this network's charts (:func:`custom_scalars_layout`)."""
        return custom_scalars_layout(self.unit_layers, self.cfg.taus, self.weight_layers)

    @torch.no_grad()
    def __call__(
        self,
        obs: Tensor,
        *,
        ntk: bool = False,
        optimizer: torch.optim.Optimizer | None = None,
        grad_norm_value: float | None = None,
    ) -> dict[str, float]:
        """Measure on the probe batch ``obs`` and return ``{tag: value}`` (full tags).

        Args:
            obs: the probe batch ``(probe_size, *obs_shape)``, on the model's device.
            ntk: also compute the empirical NTK on the first ``ntk_probe_size`` observations.
            optimizer: read √v̂ statistics from its state.
            grad_norm_value: the pre-clipping gradient norm if the caller has it (the agent's
                clipped update reports it); otherwise it is read from the model's ``.grad``.
        """
        cfg = self.cfg
        flags = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            activity, head_inputs, layer_moments = self._chunked_forward(obs, jacobian=cfg.jacobian)
            out: dict[str, float] = {}
            masks = _masks_from_activity(activity, cfg.taus)
            out |= _fractions("dormant_fraction", masks)
            if self._previous:
                out |= persistent_dormant(self._previous, masks)
            if self._at_switch:
                out |= reactivated_dormant(self._at_switch, masks)
            self._previous = masks
            out |= self._feature_metrics(head_inputs)
            if cfg.jacobian:
                out |= _pooled_jacobian_metrics(layer_moments)
            out |= weight_stats(self.model, self.groups, cfg.iso_target, self._init)
            out["param_rms"] = param_rms(self.model)
            norm = grad_norm_value if grad_norm_value is not None else grad_norm(self.model)
            if norm is not None:
                out["grad_norm"] = float(norm)
            if optimizer is not None:
                out |= optimizer_stats(optimizer)
            if ntk:
                out |= ntk_stats(empirical_ntk(self.model, obs[: cfg.ntk_probe_size]))
        finally:
            for module, training in flags.items():
                module.training = training
        self.measurements += 1
        return {TAG_PREFIX + key: value for key, value in out.items()}

    @torch.no_grad()
    def task_switched(self, obs: Tensor) -> None:
        """Record which units are dormant now, at a task switch, on the probe batch ``obs``.

        From the next measurement on, ``plasticity/dormant_reactivated/tau_<τ>[/<layer>]``
        reports the fraction of those units that are active again (:func:`reactivated_dormant`);
        the loops call this at every task switch (one hooked forward, no tags logged).
        """
        flags = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            activity, _, _ = self._chunked_forward(obs, jacobian=False)
        finally:
            for module, training in flags.items():
                module.training = training
        self._at_switch = _masks_from_activity(activity, self.cfg.taus)

    def _chunked_forward(
        self, obs: Tensor, *, jacobian: bool
    ) -> tuple[dict[str, Tensor], list[tuple[str, Tensor]], dict[str, tuple[_Moments, int]]]:
        """Hooked forwards over ``obs`` in chunks of ``metrics.probe_chunk`` (Note [Probe chunks]).

        Returns every unit site's E|h_i| over the whole batch, the heads' inputs (concatenated
        over chunks) and, with ``jacobian``, each layer's Jacobian moments with their sample count.

        Note [Probe chunks]
            A hooked forward keeps every hooked layer's output (and, for the Jacobians, a copy of
            the pre-activation) of the whole batch alive until the metrics are computed: ~1 GB
            for 256 84×84 frames through the IMPALA CNN. Every metric of the forward is a mean over
            samples (E|h_i|, the σ² moments) or needs only the small head input of every sample
            (the feature rank), so the batch is cut into chunks, each chunk's means are weighted
            by its size, and only one chunk's tensors are alive at a time. The results equal those
            of one forward up to the order of float summation; the torch.func Jacobians use the
            first ``jacobian_samples`` samples, all in the first chunk when ``probe_chunk`` ≥
            ``jacobian_samples`` (the default), else as many as the first chunk holds.
        """
        step = self.cfg.probe_chunk or obs.shape[0]
        sums: dict[str, Tensor] = {}
        counts: dict[str, int] = {}
        heads: dict[str, list[Tensor]] = {}
        moments: dict[str, tuple[_Moments, int]] = {}
        for i, chunk in enumerate(obs.split(step)):
            calls = self._probe_forward(chunk, jacobian=jacobian)
            n = chunk.shape[0]
            for site, call in calls.units:
                if call.activity is not None:
                    sums[site] = sums.get(site, 0) + call.activity * n
                    counts[site] = counts.get(site, 0) + n
            distinct: dict[str, Tensor] = {}
            for name, x in calls.head_inputs:
                if name not in distinct and all(x is not y for y in distinct.values()):
                    distinct[name] = x
            for name, x in distinct.items():
                heads.setdefault(name, []).append(x)
            if jacobian:
                for site, (m, samples) in self._layer_moments(calls, sampled=i == 0).items():
                    old, count = moments.get(site, (m, 0))
                    total = count + samples
                    sv2 = (old.sv2 * count + m.sv2 * samples) / total
                    moments[site] = (_Moments(sv2, (old.sv4 * count + m.sv4 * samples) / total, m.k), total)
            del calls
        activity = {site: sums[site] / counts[site] for site in sums}
        head_inputs = [(name, torch.cat(xs)) for name, xs in heads.items()]
        return activity, head_inputs, moments

    def _probe_forward(self, obs: Tensor, *, jacobian: bool) -> _Calls:
        """One hooked forward, recording the calls of unit, weight, norm and head modules."""
        raw_units: dict[str, list[_Call]] = {n: [] for n in self.unit_layers}
        raw_weights: dict[str, list[_Call]] = {n: [] for n in self._weight_modules}
        norm_calls: dict[int, _Call] = {}
        head_inputs: list[tuple[str, Tensor]] = []
        keep = self.cfg.jacobian_samples if jacobian else 0

        def unit_hook(name: str) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
                if isinstance(output, Tensor) and output.dim() >= 2:
                    first = args[0] if args else None
                    units = _unit_view(output, self._producer_output(name, raw_weights))
                    shape = tuple(first.shape[1:]) if isinstance(first, Tensor) else None
                    raw_units[name].append(
                        _Call(
                            module,
                            output,
                            id(first),
                            activity=unit_activity(units),
                            in_shape=shape,
                            input_ref=first if isinstance(first, Tensor) else None,
                        )
                    )

            return hook

        def functional_hook(name: str, producer: nn.Module) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
                calls = raw_weights.get(name)
                if not calls or not args or not isinstance(args[0], Tensor):
                    return
                out = calls[-1].output
                view = _unit_view(args[0], out, copies_major=True)
                if view is not None:
                    raw_units[name].append(_Call(producer, out, id(out), activity=unit_activity(view)))

            return hook

        def weight_hook(name: str) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
                if isinstance(output, Tensor) and args and isinstance(args[0], Tensor):
                    x = args[0][:keep].clone() if keep else None
                    z = output.clone() if keep else None
                    raw_weights[name].append(_Call(module, output, id(args[0]), inputs=x, pre_activation=z))

            return hook

        def norm_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, Tensor) and args and isinstance(args[0], Tensor):
                norm_calls[id(output)] = _Call(module, output, id(args[0]))

        def head_hook(name: str) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
                if args and isinstance(args[0], Tensor):
                    head_inputs.append((name, args[0]))

            return hook

        modules = dict(self.model.named_modules())
        handles = []
        try:
            for name, module in self._unit_modules.items():
                handles.append(module.register_forward_hook(unit_hook(name)))
            for name, (producer, consumer) in self._functional.items():
                handles.append(consumer.register_forward_pre_hook(functional_hook(name, producer)))
            for name, module in self._weight_modules.items():
                handles.append(module.register_forward_hook(weight_hook(name)))
            if jacobian:
                for module in self._norm_modules.values():
                    handles.append(module.register_forward_hook(norm_hook))
            for name in self.heads:
                handles.append(modules[name].register_forward_pre_hook(head_hook(name)))
            self.model(obs)
        finally:
            for handle in handles:
                handle.remove()
        unit_calls = [
            (_site(name, k, len(calls)), call)
            for name, calls in raw_units.items()
            for k, call in enumerate(calls)
        ]
        weight_calls = {
            id(call.output): (_site(name, k, len(calls)), call)
            for name, calls in raw_weights.items()
            for k, call in enumerate(calls)
        }
        return _Calls(unit_calls, weight_calls, norm_calls, head_inputs)

    def _producer_output(self, act: str, raw_weights: Mapping[str, list[_Call]]) -> Tensor | None:
        """The latest output of the layer feeding activation ``act`` (Note [Data flow]), if known."""
        pair = self._act_producer.get(act)
        calls = raw_weights.get(pair[0]) if pair is not None else None
        return calls[-1].output if calls else None

    def _feature_metrics(self, head_inputs: Sequence[tuple[str, Tensor]]) -> dict[str, float]:
        """Feature rank of the head's input; per head only when several heads see different features.

        ``head_inputs`` holds one entry per head fed features of its own (:meth:`_chunked_forward`).
        """
        distinct = dict(head_inputs)
        if len(distinct) == 1:
            return feature_rank(next(iter(distinct.values())), self.cfg.srank_delta)
        out: dict[str, float] = {}
        for name, x in distinct.items():
            out |= {f"{key}/{name}": v for key, v in feature_rank(x, self.cfg.srank_delta).items()}
        return out

    def _layer_moments(self, calls: _Calls, *, sampled: bool) -> dict[str, tuple[_Moments, int]]:
        """σ² moments of every hidden layer's Jacobian (Note [Layer Jacobian]) in one forward's calls.

        Returns ``{site: (moments, samples they average over)}``; the torch.func layers (the first
        ``jacobian_samples`` samples) only when ``sampled``, i.e. in the first chunk.
        """
        weight_module_ids = {id(m) for m in self._weight_modules.values()}
        names = {id(m): n for n, m in self._unit_modules.items()}
        modules = dict(self.model.named_modules())
        weight_output = {site: (site, call) for site, call in calls.weights.values()}
        # (layer name, weight call, normalisations between it and the activation, activation,
        #  the activation's per-sample input shape when a reshape lies between: conv → Flatten → φ)
        layers: list[tuple[str, _Call, list[nn.Module], nn.Module | None, tuple[int, ...] | None]] = []
        for _, call in calls.units:
            if id(call.module) in weight_module_ids and id(call.output) in calls.weights:
                site, wcall = calls.weights[id(call.output)]
                layers.append((site, wcall, [], None, None))  # a weight module's output: L alone
                continue
            source, norms = call.input_id, []
            while source in calls.norms:  # L → norm(s) → φ: walk back to L
                norms.insert(0, calls.norms[source].module)
                source = calls.norms[source].input_id
            if source in calls.weights:
                site, wcall = calls.weights[source]
                layers.append((site, wcall, norms, call.module, None))
                continue
            pair = self._act_producer.get(names.get(id(call.module), ""))
            if pair is not None and pair[0] in weight_output and call.in_shape is not None:
                site, wcall = weight_output[pair[0]]  # L → (norms, reshapes) → φ, from the trace
                layers.append((site, wcall, [modules[n] for n in pair[1]], call.module, call.in_shape))
        out: dict[str, tuple[_Moments, int]] = {}
        for site, wcall, norms, act, shape in layers:
            if wcall.inputs is None or wcall.pre_activation is None or wcall.inputs.shape[0] == 0:
                continue
            module, z = wcall.module, wcall.pre_activation
            closed_form = (
                isinstance(module, _AFFINE)
                and not norms
                and (act is None or isinstance(act, _ELEMENTWISE))
                and z[0].numel() <= _MAX_CLOSED_FORM_OUTPUTS
            )
            stencil = (  # a conv whose T would be large: no m × n matrix (Note [Conv Jacobian without T])
                _plain_conv2d(module)
                and not norms
                and (act is None or isinstance(act, _ELEMENTWISE))
                and wcall.inputs.dim() == 4
                and z[0].numel() * wcall.inputs[0].numel() > _MAX_TRANSFER_ENTRIES
            )
            if closed_form or stencil:  # every probe sample
                ones = torch.ones_like(z)
                derivative = ones if act is None else jvp(act, (z.clone(),), (ones,))[1]
                if stencil:
                    moments = _conv_diag_scaled_moments(module, tuple(wcall.inputs.shape[1:]), derivative)
                else:
                    moments = _diag_scaled_moments(_transfer_matrix(module, wcall.inputs[:1]), derivative)
                out[site] = (moments, z.shape[0])
            elif sampled:  # the first jacobian_samples samples, as many as fit _MAX_JACOBIAN_BYTES
                m, n = z[0].numel(), wcall.inputs[0].numel()
                fit = _MAX_JACOBIAN_BYTES // (4 * m * n)
                if fit < 1:
                    continue  # one sample's Jacobian alone would exceed the budget: not measured
                fn = _chain(module, norms, act, shape)
                samples = wcall.inputs[:fit]
                out[site] = (_jacobian_moments(layer_jacobian(fn, samples)), samples.shape[0])
        return out

    def state_dict(self) -> dict[str, Any]:
        """Initial weights, the previous dormant masks and the call count (for exact resume)."""
        return {
            "init_weights": {k: w.clone() for k, w in self._init.items()},
            "dormant_masks": {
                tau: {k: m.clone() for k, m in per.items()} for tau, per in self._previous.items()
            },
            "switch_masks": {
                tau: {k: m.clone() for k, m in per.items()} for tau, per in self._at_switch.items()
            },
            "measurements": self.measurements,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: missing keys, or initial weights that do not match the model's layers.
        """
        missing = {"init_weights", "dormant_masks", "measurements"} - set(state)
        if missing:
            raise ValueError(f"metrics state lacks {sorted(missing)}")
        init = state["init_weights"]
        if set(init) != set(self._init) or any(init[k].shape != self._init[k].shape for k in init):
            raise ValueError(
                f"metrics state holds initial weights of layers {sorted(init)}, "
                f"the model has {sorted(self._init)}"
            )
        self._init = {k: init[k].to(self._init[k].device).clone() for k in self._init}
        self._previous = {
            tau: {k: m.clone() for k, m in per.items()} for tau, per in state["dormant_masks"].items()
        }
        self._at_switch = {  # (checkpoints from before task_switched existed have none)
            tau: {k: m.clone() for k, m in per.items()} for tau, per in state.get("switch_masks", {}).items()
        }
        self.measurements = int(state["measurements"])


def _pooled_jacobian_metrics(layers: Mapping[str, tuple[_Moments, int]]) -> dict[str, float]:
    """Every layer's σ² moment tags and their pool, each layer weighted by its k singular values."""
    out: dict[str, float] = {}
    total = _Moments(0.0, 0.0, 0)
    for site, (moments, _) in layers.items():
        out |= {f"{key}/{site}": v for key, v in _moment_dict(moments).items()}
        k = total.k + moments.k
        if k:
            sv2 = (total.sv2 * total.k + moments.sv2 * moments.k) / k
            total = _Moments(sv2, (total.sv4 * total.k + moments.sv4 * moments.k) / k, k)
    if total.k:
        out |= _moment_dict(total)
    return out


def _site(name: str, call: int, calls: int) -> str:
    """A module's name, or ``<name>/call_<k>`` when it ran several times in one forward."""
    return name if calls == 1 else f"{name}/call_{call}"


def _chain(
    module: nn.Module, norms: Sequence[nn.Module], act: nn.Module | None, shape: tuple[int, ...] | None
) -> Callable[[Tensor], Tensor]:
    """φ(reshape(N(L(x)))) of one hidden layer, batched (Note [Layer Jacobian])."""
    if shape is None:
        return nn.Sequential(module, *norms, *([] if act is None else [act]))

    def fn(x: Tensor) -> Tensor:
        y = module(x)
        for norm in norms:
            y = norm(y)
        y = y.reshape(y.shape[0], *shape)
        return y if act is None else act(y)

    return fn


def _unit_view(h: Tensor, producer_out: Tensor | None, *, copies_major: bool = False) -> Tensor | None:
    """Hidden units ``h`` as ``(B, units, positions)`` when a reshape flattened a conv's channels.

    ``producer_out`` is the output of the layer the units come from. Activation modules: a 2-d ``h``
    of a conv producer is viewed as ``(B, copies·C, H·W)`` (channel-major flatten, Note [Flatten
    layout] in :mod:`plasticrl.plasticity.surgery`); otherwise ``h`` as it is. A consumer's input
    (``copies_major``, functional activations) is viewed as the producer's units, every copy of a
    unit (CReLU-like concatenations) in its row, or None when its size is no multiple of theirs.
    """
    if producer_out is None or producer_out.dim() < 2:
        return h if not copies_major else None
    b, units = h.shape[0], producer_out.shape[1]
    positions = max(1, producer_out[0].numel() // max(1, units))
    per_sample = h[0].numel() if h.shape[0] else 0
    if copies_major:
        if h.shape[0] != producer_out.shape[0] or per_sample % (units * positions):
            return None
        view = h.reshape(b, per_sample // (units * positions), units, positions)
        return view.transpose(1, 2).reshape(b, units, -1)
    if h.dim() == 2 and producer_out.dim() > 2 and per_sample % positions == 0:
        return h.reshape(b, -1, positions)
    return h


_MAX_TRANSFER_ENTRIES = 2**22
"""A conv whose transfer matrix T would have more entries takes :func:`_conv_diag_scaled_moments`
(MinAtar's conv, 1024 × 400, keeps the T path and its values bit for bit)."""
_MAX_JACOBIAN_BYTES = 256 * 2**20
"""Cap on the per-sample Jacobians ``(N, m, n)`` of the torch.func path [ours]: fewer samples when
they would not fit, none (the layer is not measured) when one sample alone would not."""


def _plain_conv2d(module: nn.Module) -> bool:
    """A Conv2d that :func:`_conv_diag_scaled_moments` handles: one group, no dilation, zero padding."""
    return (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and tuple(module.dilation) == (1, 1)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _conv_diag_scaled_moments(conv: nn.Conv2d, in_shape: tuple[int, ...], derivative: Tensor) -> _Moments:
    """σ² moments of J_n = diag(d_n) T for a Conv2d T on ``in_shape`` inputs, without forming T.

    Note [Conv Jacobian without T]
        The closed form of Note [Layer Jacobian] needs G = T Tᵀ only through its diagonal and the
        squares of its entries. For a convolution, G between output (c, p) and (c', p + Δ) is
        Σ_u M_Δ[c, c', u] · 1[input pixel p·s − pad + u is inside the image], with
        M_Δ[c, c', u] = Σ_ci W[c, ci, u] W[c', ci, u − Δ·s]; it vanishes unless the two receptive
        fields overlap, |Δ| ≤ (k − 1) // s per axis. So each G_Δ is one conv of the image's
        indicator with the kernels M_Δ (exact at the borders too), and
        Σσ² = Σ_{c,p} d²[c, p] G_ii, Σσ⁴ = Σ_Δ Σ_{c,c',p} d²[c, p] G_Δ[c, c', p]² d²[c', p + Δ].
        Memory C_out²·H'·W' per Δ (Nature CNN conv1: 32² × 20² floats) instead of the m × n = 12,800 ×
        28,224 T (1.4 GB) or the per-sample Jacobians of the torch.func path (8 × 1.4 GB, the OOM of
        issue 18). Exact: ``test_conv_stencil_moments_equal_the_transfer_matrix_ones``.
    """
    w = conv.weight.detach()
    c_out, _, kh, kw = w.shape
    stride, padding = tuple(conv.stride), tuple(conv.padding)
    d2 = derivative.detach().to(w.dtype).square()
    b, _, ho, wo = d2.shape
    m, n = c_out * ho * wo, int(torch.tensor(in_shape).prod())
    k = min(m, n)
    if k == 0 or b == 0:
        return _Moments(0.0, 0.0, k)
    mask = torch.ones((1, 1, *in_shape[1:]), dtype=w.dtype, device=w.device)
    diag = nn.functional.conv2d(mask, w.square().sum(1, keepdim=True), stride=stride, padding=padding)[0]
    sv2 = (d2 * diag).sum((1, 2, 3), dtype=torch.float64)
    sv4 = torch.zeros(b, dtype=torch.float64, device=w.device)
    ry, rx = (kh - 1) // stride[0], (kw - 1) // stride[1]
    flat = d2.reshape(b, c_out, ho * wo).permute(2, 0, 1)  # (P, B, C)
    for dy in range(-ry, ry + 1):
        for dx in range(-rx, rx + 1):
            sy, sx = dy * stride[0], dx * stride[1]
            shifted = torch.zeros_like(w)  # shifted[c', ci, u] = W[c', ci, u − Δ·s]
            shifted[..., max(sy, 0) : kh + min(sy, 0), max(sx, 0) : kw + min(sx, 0)] = w[
                ..., max(-sy, 0) : kh + min(-sy, 0), max(-sx, 0) : kw + min(-sx, 0)
            ]
            kernels = torch.einsum("aiuv,biuv->abuv", w, shifted).reshape(c_out * c_out, 1, kh, kw)
            g = nn.functional.conv2d(mask, kernels, stride=stride, padding=padding)[0]
            g2 = g.reshape(c_out, c_out, ho * wo).square().permute(2, 0, 1)  # (P, C, C')
            # d²[c', p + Δ], zero where p + Δ is outside the output grid
            other = torch.zeros_like(d2)
            other[:, :, max(-dy, 0) : ho + min(-dy, 0), max(-dx, 0) : wo + min(-dx, 0)] = d2[
                :, :, max(dy, 0) : ho + min(dy, 0), max(dx, 0) : wo + min(dx, 0)
            ]
            other_flat = other.reshape(b, c_out, ho * wo).permute(2, 0, 1)  # (P, B, C')
            sv4 += (torch.bmm(flat, g2) * other_flat).sum((0, 2), dtype=torch.float64)
    return _Moments(float(sv2.mean()) / k, float(sv4.mean()) / k, k)


def _transfer_matrix(module: nn.Module, sample: Tensor) -> Tensor:
    """T = ∂L/∂x of an affine module, ``(m, n)``: its weight for a Linear on ``(B, F)``, else jacfwd."""
    if isinstance(module, nn.Linear) and sample.dim() == 2:
        return module.weight.detach()
    return layer_jacobian(module, sample)[0]
