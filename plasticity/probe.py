r"""The plasticity collector: :class:`PlasticityProbe` hooks a network and measures every metric.

Contains:
    PlasticityProbe: hooks found through ``named_modules()`` + one probe forward → every metric of
        :mod:`plasticrl.plasticity.metrics`, as full TensorBoard tags.

The metrics themselves (one definition each) and the notes this module follows — Note [Tags],
Note [Hidden layers], Note [Layer Jacobian] — are in :mod:`plasticrl.plasticity.metrics`.

Note [Probe forward]
    The probe runs under ``torch.no_grad()`` in eval mode (training flags restored afterwards), so
    it never records a graph, touches ``.grad``, updates BatchNorm statistics or draws dropout
    noise from the global generator. ``torch.func`` transforms still differentiate inside it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
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
    unit_activity,
    weight_stats,
)
from plasticrl.plasticity.optimizers import head_module_names, param_groups
from plasticrl.plasticity.units import NORM_TYPES, is_weight_module
from torch import Tensor, nn
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


class _Calls(NamedTuple):
    """What one probe forward recorded."""

    units: list[tuple[str, _Call]]  # (site, call) of every unit module call, in forward order
    weights: dict[int, tuple[str, _Call]]  # weight module calls by id() of their output
    norms: dict[int, _Call]  # normalisation calls by id() of their output (with Jacobians only)
    head_inputs: list[tuple[str, Tensor]]


class PlasticityProbe:
    """Measures every plasticity metric of one network on a probe batch, as TensorBoard tags.

    Construct it right after the network (before the first update): it snapshots the initial
    weights for ``weight_dist_init``. Each call runs **one** forward on the probe batch under
    ``torch.no_grad()`` with forward hooks (Note [Probe forward]), then computes from the captured
    tensors: dormant fractions and their persistence, feature rank of the head's input, layer
    Jacobian σ² moments, weight statistics, parameter RMS, gradient norm, √v̂ statistics and, when
    asked, the empirical NTK. Layers are found through ``named_modules()`` (Note [Hidden layers]).

    Tags (full, Note [Tags]): ``plasticity/dormant_fraction/tau_<τ>`` and ``…/<layer>``,
    ``plasticity/dormant_persistent/tau_<τ>[/<layer>]`` (from the second call on),
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
        unit_layers: names of the modules whose outputs are the hidden units.
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
        if layers is not None:
            missing = [n for n in layers if n not in modules]
            if missing:
                raise ValueError(f"metrics layers {missing} are not modules of {type(model).__name__}")
            unit_names = list(layers)
        else:
            unit_names = [
                n for n, m in modules.items() if isinstance(m, activation_types) and n not in in_head
            ]
            if not unit_names:  # functional activations: report on the pre-activations
                unit_names = list(self._weight_modules)
        self._unit_modules = {name: modules[name] for name in unit_names}
        self.unit_layers: tuple[str, ...] = tuple(unit_names)
        self._init = {k: w.clone() for k, w in measured_weights(model, self.groups).items()}
        self.weight_layers: tuple[str, ...] = tuple(self._init)
        self._previous: dict[str, dict[str, Tensor]] = {}
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
            calls = self._probe_forward(obs)
            out: dict[str, float] = {}
            activity = {site: call.activity for site, call in calls.units if call.activity is not None}
            masks = _masks_from_activity(activity, cfg.taus)
            out |= _fractions("dormant_fraction", masks)
            if self._previous:
                out |= persistent_dormant(self._previous, masks)
            self._previous = masks
            out |= self._feature_metrics(calls.head_inputs)
            if cfg.jacobian:
                out |= self._jacobian_metrics(calls)
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

    def _probe_forward(self, obs: Tensor) -> _Calls:
        """One hooked forward, recording the calls of unit, weight, norm and head modules."""
        raw_units: dict[str, list[_Call]] = {n: [] for n in self._unit_modules}
        raw_weights: dict[str, list[_Call]] = {n: [] for n in self._weight_modules}
        norm_calls: dict[int, _Call] = {}
        head_inputs: list[tuple[str, Tensor]] = []
        keep = self.cfg.jacobian_samples if self.cfg.jacobian else 0

        def unit_hook(name: str) -> Callable[..., None]:
            def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
                if isinstance(output, Tensor) and output.dim() >= 2:
                    first = args[0] if args else None
                    raw_units[name].append(_Call(module, output, id(first), activity=unit_activity(output)))

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
            for name, module in self._weight_modules.items():
                handles.append(module.register_forward_hook(weight_hook(name)))
            if self.cfg.jacobian:
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

    def _feature_metrics(self, head_inputs: Sequence[tuple[str, Tensor]]) -> dict[str, float]:
        """Feature rank of the head's input; per head only when several heads see different features."""
        distinct: dict[str, Tensor] = {}
        for name, x in head_inputs:
            if name not in distinct and all(x is not y for y in distinct.values()):
                distinct[name] = x
        if len(distinct) == 1:
            return feature_rank(next(iter(distinct.values())), self.cfg.srank_delta)
        out: dict[str, float] = {}
        for name, x in distinct.items():
            out |= {f"{key}/{name}": v for key, v in feature_rank(x, self.cfg.srank_delta).items()}
        return out

    def _jacobian_metrics(self, calls: _Calls) -> dict[str, float]:
        """σ² moments of every hidden layer's Jacobian (Note [Layer Jacobian]) and their pooled total."""
        weight_module_ids = {id(m) for m in self._weight_modules.values()}
        # (layer name, weight call, the normalisations between it and the activation, activation)
        layers: list[tuple[str, _Call, list[nn.Module], nn.Module | None]] = []
        for _, call in calls.units:
            if id(call.module) in weight_module_ids and id(call.output) in calls.weights:
                site, wcall = calls.weights[id(call.output)]
                layers.append((site, wcall, [], None))  # the unit is a weight module's output: L alone
                continue
            source, norms = call.input_id, []
            while source in calls.norms:  # L → norm(s) → φ: walk back to L
                norms.insert(0, calls.norms[source].module)
                source = calls.norms[source].input_id
            if source in calls.weights:
                site, wcall = calls.weights[source]
                layers.append((site, wcall, norms, call.module))
        out: dict[str, float] = {}
        total = _Moments(0.0, 0.0, 0)
        for site, wcall, norms, act in layers:
            if wcall.inputs is None or wcall.pre_activation is None or wcall.inputs.shape[0] == 0:
                continue
            module, z = wcall.module, wcall.pre_activation
            closed_form = (
                isinstance(module, _AFFINE)
                and not norms
                and (act is None or isinstance(act, _ELEMENTWISE))
                and z[0].numel() <= _MAX_CLOSED_FORM_OUTPUTS
            )
            if closed_form:  # every probe sample
                ones = torch.ones_like(z)
                derivative = ones if act is None else jvp(act, (z.clone(),), (ones,))[1]
                moments = _diag_scaled_moments(_transfer_matrix(module, wcall.inputs[:1]), derivative)
            else:  # the first jacobian_samples samples
                fn = nn.Sequential(module, *norms, *([] if act is None else [act]))
                moments = _jacobian_moments(layer_jacobian(fn, wcall.inputs))
            out |= {f"{key}/{site}": v for key, v in _moment_dict(moments).items()}
            k = total.k + moments.k
            if k:  # pool: each layer weighs by its number of singular values per sample
                sv2 = (total.sv2 * total.k + moments.sv2 * moments.k) / k
                total = _Moments(sv2, (total.sv4 * total.k + moments.sv4 * moments.k) / k, k)
        if total.k:
            out |= _moment_dict(total)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Initial weights, the previous dormant masks and the call count (for exact resume)."""
        return {
            "init_weights": {k: w.clone() for k, w in self._init.items()},
            "dormant_masks": {
                tau: {k: m.clone() for k, m in per.items()} for tau, per in self._previous.items()
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
        self.measurements = int(state["measurements"])


def _site(name: str, call: int, calls: int) -> str:
    """A module's name, or ``<name>/call_<k>`` when it ran several times in one forward."""
    return name if calls == 1 else f"{name}/call_{call}"


def _transfer_matrix(module: nn.Module, sample: Tensor) -> Tensor:
    """T = ∂L/∂x of an affine module, ``(m, n)``: its weight for a Linear on ``(B, F)``, else jacfwd."""
    if isinstance(module, nn.Linear) and sample.dim() == 2:
        return module.weight.detach()
    return layer_jacobian(module, sample)[0]
