"""Optimizer factories and the tagged parameter groups every optimizer receives.

Contains:
    OptimizerConfig: the ``optimizer.*`` config section.
    param_groups: split a network's parameters into tagged groups (``kind`` and ``isometry`` keys).
    OPTIMIZERS: the optimizer registry (``adam``, ``adamw``, ``sgd``, ``rmsprop``; ``adamo`` is
        registered by :mod:`plasticrl.plasticity.adamo`).
    make_optimizer: build an optimizer by name or ``package.module:Class`` from tagged groups.
    adam_state_keys, state_keys_of, declared_state_keys: the per-parameter state keys each entry
        declares (Note [Optimizer state keys]).

Note [Parameter groups]
    Groups are decided once, here, from tensor properties and the network's declared head, never
    inside ``Optimizer.step``. Each group dict carries two extra keys that torch keeps untouched:

    ``kind``      ``"matrix"`` (hidden weight matrices and conv kernels), ``"head"`` (output-layer
                  weights), ``"vector"`` (biases, normalisation parameters, every 0/1-d tensor),
                  ``"constrained"`` (unconstrained tensors of a parametrization, e.g. the
                  ``original`` of an orthogonal constraint); this group also sets
                  ``weight_decay=0`` (decay cannot act on the constrained weight).
    ``isometry``  whether the ≥2-d tensors of the group take AdamO's isometry step and the coupled
                  isometry penalty. True for ``matrix``; for ``head`` only when asked; never for
                  ``vector`` or ``constrained`` (a constrained layer is isometric by construction,
                  and regularising the unconstrained tensor of a parametrization is meaningless).

    The head is the set of modules named in the network's ``head_names`` attribute when it has
    one (PPO's actor and critic heads), else found from the data flow (Note [Head]).

Note [Head]
    Without ``head_names``, the head is found from where the network's output comes from, never
    from the order modules were registered in: ``forward`` is traced with ``torch.fx`` (modules
    owning a weight matrix kept as single calls), and walking back from the traced output, the
    first module owning a parameter of ≥ 2 dims (or a parametrization) on each path is a head
    (several for a dueling or multi-output network; normalisations, activations, reshapes are
    crossed). A network that registers its output layer first, or that applies its output
    activation functionally, therefore gets the right head. It refuses, naming the module and
    asking for ``head_names``, when it cannot tell: a ``forward`` torch.fx cannot trace (control
    flow on tensor values), a head that also feeds another layer, or output weights used outside
    their module (functional ``F.linear``). The answer is cached per model (and re-derived when its
    modules change).

Note [Optimizer state keys]
    Each entry declares the per-parameter state its optimizer keeps, by role (step counter, first
    and second moment, other tensors shaped like the parameter), as a
    :class:`~plasticrl.plasticity.registry.StateKeys` with the optimizer classes it describes.
    Weight surgery (:mod:`plasticrl.plasticity.surgery`) and the √v̂ metrics
    (:func:`plasticrl.plasticity.metrics.optimizer_stats`) find them with :func:`state_keys_of`;
    nothing else spells torch's state-key names. Surgery asks for the exact class (a subclass may
    keep state it cannot know); the metrics, which only read, accept the nearest declared base.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from plasticrl.plasticity.dataflow import walk_back
from plasticrl.plasticity.registry import Registry, StateKeys, options_of
from plasticrl.plasticity.rmsprop import RMSprop
from torch import fx, nn
from torch.nn.utils import parametrize

__all__ = [
    "OptimizerConfig",
    "OptimizerFactory",
    "OPTIMIZERS",
    "param_groups",
    "make_optimizer",
    "head_module_names",
    "trace_network",
    "applicable_keys",
    "COMMON_KEYS",
    "AdamOptions",
    "AdamOOptions",
    "SGDOptions",
    "RMSpropOptions",
    "StateKeys",
    "adam_state_keys",
    "state_keys_of",
    "declared_state_keys",
]

GroupKind = Literal["matrix", "head", "vector", "constrained"]


@dataclass(frozen=True)
class OptimizerConfig:
    """The ``optimizer`` section: which optimizer, its learning rate and its options."""

    name: str = "adam"
    """Key in OPTIMIZERS (``plasticrl list``) or ``package.module:Class``."""
    lr: float = 1e-3
    """Base learning rate of every group; schedules multiply it per group."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam-family moment decay rates."""
    eps: float = 1e-8
    """Denominator epsilon (Adam family, RMSprop)."""
    weight_decay: float = 0.0
    """Weight decay: decoupled for adamw/adamo, L2-coupled for adam/sgd/rmsprop (torch semantics)."""
    momentum: float = 0.0
    """SGD / RMSprop momentum."""
    nesterov: bool = False
    """SGD Nesterov momentum."""
    alpha: float = 0.99
    """RMSprop squared-gradient decay."""
    centered: bool = False
    """RMSprop: divide by the centred second moment (the MinAtar reference uses it)."""
    iso_coef: float = 1e-2
    """AdamO: λ, the isometry step coefficient (docs/methods.md §1.2; [ours] default)."""
    iso_target: float = 1.0
    """AdamO / isometry penalty: s in ‖G − sI‖²; 2 is an option for ReLU layers."""
    iso_lr: float | None = None
    """AdamO: η_iso; None follows each group's current lr (so schedules apply)."""
    iso_head: bool = False
    """Also apply the isometry step / penalty to the output head's weights."""
    reset_on_task_switch: bool = False
    """Reset the optimizer's state (moments, step counts) at every task boundary, as the AdamO
    paper's RL protocol does; the weights and the lr schedule carry over. Needs ``nonstationary.kind``
    (:func:`plasticrl.trainers.learning.reset_optimizer_state`)."""
    iso_every: int = 1
    """AdamO: apply the isometry step every k steps with k× its size (1 = exact; >1 approximate)."""
    iso_prefetch: bool = False
    """AdamO: compute the next step's isometry gradient on a background thread, overlapping the
    env step and the forward/backward (exact: discarded if the weights were edited meanwhile)."""
    foreach: bool | None = None
    """Use the multi-tensor (foreach) implementation; None lets the optimizer choose."""
    fused: bool | None = None
    """adam/adamw: fused kernels (one pass per tensor); None = on unless ``foreach`` is set.
    On a small RL network the fused CPU Adam step is ~3× faster than the default."""
    compile: bool = False
    """Fuse the update: rmsprop through torch.compile (4× faster step on CPU; a few seconds to
    compile at the first update; needs a C++ compiler). adam, adamw and adamo are fused kernels
    already (see ``fused``), so the key changes nothing for them and a preset can switch
    optimizer by one key; sgd and ``module:Class`` optimizers have no fused path (an error)."""
    lr_schedule: Literal["constant", "linear"] = "constant"
    """Learning-rate schedule over the run's updates (LambdaLR: scales every group's own lr)."""
    lr_end_factor: float = 0.0
    """Linear schedule: final lr as a fraction of the base lr."""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for a ``package.module:Class`` optimizer."""

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optimizer.lr must be > 0, got {self.lr}")
        if self.eps < 0:
            raise ValueError(f"optimizer.eps must be >= 0, got {self.eps}")
        if self.weight_decay < 0:
            raise ValueError(f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optimizer.betas must lie in [0, 1), got {self.betas}")
        if not 0.0 <= self.lr_end_factor <= 1.0:
            raise ValueError(f"optimizer.lr_end_factor must lie in [0, 1], got {self.lr_end_factor}")
        if self.iso_coef < 0:
            raise ValueError(f"optimizer.iso_coef must be >= 0, got {self.iso_coef}")
        if self.iso_every < 1:
            raise ValueError(f"optimizer.iso_every must be >= 1, got {self.iso_every}")
        if self.iso_lr is not None and self.iso_lr < 0:
            raise ValueError(f"optimizer.iso_lr must be >= 0 or null, got {self.iso_lr}")


OptimizerFactory = Callable[[list[dict[str, Any]], OptimizerConfig], torch.optim.Optimizer]
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")

COMMON_KEYS = ("name", "lr", "lr_schedule", "lr_end_factor", "iso_head", "reset_on_task_switch")
"""``optimizer.*`` keys that apply whatever the optimizer (``iso_head`` also steers the coupled
isometry penalty, which works with any optimizer)."""
IMPORTED_KEYS = (*COMMON_KEYS, "kwargs")
"""The keys of a ``package.module:Class`` optimizer: its own options go in ``kwargs``."""
_ADAM_KEYS = ("betas", "eps", "weight_decay", "foreach", "fused", "compile")
AdamOptions = options_of(OptimizerConfig, "AdamOptions", _ADAM_KEYS)
"""Options of ``adam`` and ``adamw`` (``compile`` is accepted and changes nothing: fused already)."""
AdamOOptions = options_of(
    OptimizerConfig,
    "AdamOOptions",
    (*_ADAM_KEYS, "iso_coef", "iso_target", "iso_lr", "iso_every", "iso_prefetch"),
)
"""Options of ``adamo``: Adam's plus the isometry step's."""
SGDOptions = options_of(OptimizerConfig, "SGDOptions", ("momentum", "nesterov", "weight_decay", "foreach"))
"""Options of ``sgd``."""
RMSpropOptions = options_of(
    OptimizerConfig, "RMSpropOptions", ("alpha", "eps", "momentum", "centered", "weight_decay", "compile")
)
"""Options of ``rmsprop``."""


def adam_state_keys(*optimizers: type[torch.optim.Optimizer]) -> StateKeys:
    """The state keys of torch's Adam family (``amsgrad`` adds ``max_exp_avg_sq``), for ``optimizers``."""
    return StateKeys(
        optimizers=optimizers,
        step="step",
        first_moment="exp_avg",
        second_moment="exp_avg_sq",
        others=("max_exp_avg_sq",),
        bias_corrected=True,
    )


def declared_state_keys() -> dict[type, StateKeys]:
    """Optimizer class → the state keys its registry entry declares (Note [Optimizer state keys])."""
    declared: dict[type, StateKeys] = {}
    for name in OPTIMIZERS:
        keys = OPTIMIZERS.state_keys(name)
        if keys is not None:
            declared.update(dict.fromkeys(keys.optimizers, keys))
    return declared


def state_keys_of(optimizer: torch.optim.Optimizer, *, exact: bool = True) -> StateKeys | None:
    """The state keys declared for ``optimizer``'s class (Note [Optimizer state keys]).

    Args:
        optimizer: any optimizer.
        exact: match its exact type only (for code that edits state); False also accepts the
            nearest declared class in its MRO (for code that only reads it).

    Returns:
        The declared keys, or None when no registry entry declares the class.
    """
    declared = declared_state_keys()
    classes = (type(optimizer),) if exact else type(optimizer).__mro__
    return next((declared[c] for c in classes if c in declared), None)


def applicable_keys(name: str) -> frozenset[str]:
    """The ``optimizer.*`` keys that apply to optimizer ``name`` (common keys plus its options)."""
    options = OPTIMIZERS.options(name)
    if options is None:
        return frozenset(IMPORTED_KEYS)
    return frozenset(COMMON_KEYS) | {f.name for f in dataclasses.fields(options)}


FUSED_UPDATES = frozenset({"rmsprop", "adam", "adamw", "adamo"})
"""Optimizers with a fused update: compiled (rmsprop, ``optimizer.compile``) or fused kernels."""


def head_module_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the output-head modules of ``model`` (see Note [Parameter groups], Note [Head]).

    Raises:
        ValueError: declared ``head_names`` that are not modules, or a head that cannot be found
            from the data flow unambiguously (Note [Head]): declare ``head_names`` then.
    """
    declared = getattr(model, "head_names", None)
    if declared is not None:
        names = tuple(declared)
        known = dict(model.named_modules())
        missing = [n for n in names if n not in known]
        if missing:
            raise ValueError(f"head_names {missing} are not modules of {type(model).__name__}")
        return names
    key = tuple((n, id(m)) for n, m in model.named_modules())
    cached = _HEAD_CACHE.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    heads = _data_flow_heads(model)
    _HEAD_CACHE[model] = (key, heads)
    return heads


_HEAD_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], tuple[str, ...]]] = (
    weakref.WeakKeyDictionary()
)


def _owns_matrix(module: nn.Module) -> bool:
    """A module that owns a weight matrix: a parameter of ≥ 2 dims or a parametrization (no norms)."""
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)):
        return False
    if parametrize.is_parametrized(module):
        return True
    return any(p.dim() >= 2 for p in module.parameters(recurse=False))


class _HeadTracer(fx.Tracer):
    """torch.fx tracer that keeps every matrix-owning module (and torch's own) as one call."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, parametrize.ParametrizationList) or _owns_matrix(m):
            return True
        # A module without weight matrices inside (an activation, GroupSort, a reshape) is one
        # call: the walk crosses it, and its own forward may have control flow fx cannot trace.
        return not any(_owns_matrix(sub) for sub in m.modules()) or super().is_leaf_module(
            m, module_qualified_name
        )


def trace_network(model: nn.Module) -> fx.Graph:
    """The ``torch.fx`` graph of ``model.forward``, weight-owning and weight-free modules as one call.

    Every module owning a weight matrix, and every module without one inside (activations,
    GroupSort, reshapes), is kept as one call.

    Raises:
        ValueError: torch.fx cannot trace the forward (the reason, one line).
    """
    try:
        return _HeadTracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - any trace failure means: cannot tell
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise ValueError(f"torch.fx cannot trace its forward: {first[:160]}") from None


def _data_flow_heads(model: nn.Module) -> tuple[str, ...]:
    """The matrix-owning modules whose outputs reach the model's output directly (Note [Head]).

    Found from a ``torch.fx`` trace of ``model.forward``: walking back from the graph's output, the
    first matrix-owning module met on every path is a head. A head that also feeds another
    matrix-owning module (it is then a hidden layer too), a parameter used outside its module, or
    a forward torch.fx cannot trace is ambiguous: an error asking for ``head_names``.
    """
    matrix_modules = {n: m for n, m in model.named_modules() if _owns_matrix(m)}
    if not matrix_modules:
        return ()
    if set(matrix_modules) == {""}:
        return ("",)  # the model itself is one layer
    what = type(model).__name__
    hint = (
        f"declare the output layer(s) on the network, e.g. `head_names = ('head',)` as a class "
        f"attribute of {what} (module names from named_modules())"
    )
    try:
        graph = trace_network(model)
    except ValueError as exc:
        raise ValueError(
            f"cannot find the output layer of {what} from its data flow ({exc}); {hint}"
        ) from None

    def owner(node: fx.Node) -> str | None:
        if node.op == "call_module" and node.target in matrix_modules:
            return str(node.target)
        if node.op == "get_attr":
            target = str(node.target)
            module_name, _, _ = target.rpartition(".")
            try:
                value = model.get_submodule(module_name) if module_name else model
                tensor = getattr(value, target.rpartition(".")[2])
            except AttributeError:
                return None
            if isinstance(tensor, torch.Tensor) and tensor.dim() >= 2:
                return module_name
        return None

    def first_owners(start: Sequence[fx.Node]) -> set[str]:
        owners = (owner(node) for node in walk_back(start, lambda n: owner(n) is not None))
        return {name for name in owners if name is not None}

    output = next(n for n in graph.nodes if n.op == "output")
    heads = first_owners(output.all_input_nodes)
    functional = sorted(
        n for n in heads if not any(x.op == "call_module" and x.target == n for x in graph.nodes)
    )
    if functional:
        raise ValueError(
            f"the output of {what} is computed from the weights of {functional!r} outside their "
            f"module's own forward (functional calls); cannot tell its output layer: {hint}"
        )
    feeding = set()
    for node in graph.nodes:
        if node.op == "call_module" and node.target in matrix_modules:
            feeding |= first_owners(node.all_input_nodes)
    both = sorted(heads & feeding)
    if both:
        raise ValueError(
            f"layer(s) {both} of {what} both reach the output and feed other layers, so the output "
            f"layer is ambiguous; {hint}"
        )
    return tuple(n for n in matrix_modules if n in heads)


def param_groups(model: nn.Module, *, iso_head: bool = False) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into tagged groups (Note [Parameter groups]).

    Args:
        model: the network.
        iso_head: tag the head's weight matrices for the isometry step too.

    Returns:
        Non-empty groups, in the order matrix, head, vector, constrained, each a dict with
        ``params``, ``kind`` and ``isometry``. Every trainable parameter appears exactly once.
    """
    heads = head_module_names(model)
    buckets: dict[GroupKind, list[nn.Parameter]] = {"matrix": [], "head": [], "vector": [], "constrained": []}
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        in_head = any(mod_name == h or mod_name.startswith(h + ".") for h in heads)
        for p_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if ".parametrizations." in f".{full}":
                kind: GroupKind = "constrained"
            elif p.dim() < 2:
                kind = "vector"
            elif in_head:
                kind = "head"
            else:
                kind = "matrix"
            buckets[kind].append(p)
    isometry = {"matrix": True, "head": iso_head, "vector": False, "constrained": False}
    groups: list[dict[str, Any]] = [
        {"params": ps, "kind": kind, "isometry": isometry[kind]} for kind, ps in buckets.items() if ps
    ]
    for group in groups:
        if group["kind"] == "constrained":
            # Decay would shrink the unconstrained original, not the constrained weight.
            group["weight_decay"] = 0.0
    return groups


def make_optimizer(groups: list[dict[str, Any]], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """Build the optimizer ``cfg.name`` over tagged ``groups``.

    A registered name calls its factory. A ``package.module:attr`` path may name either a factory
    with the same signature or a ``torch.optim.Optimizer`` subclass, which is constructed as
    ``Class(groups, lr=cfg.lr, **cfg.kwargs)``.
    """
    factory = OPTIMIZERS.get(cfg.name)
    entry: object = factory  # narrowed below without narrowing `factory`
    if isinstance(entry, type) and issubclass(entry, torch.optim.Optimizer):
        optimizer_class: Callable[..., torch.optim.Optimizer] = entry  # takes lr, unlike the base
        try:
            return optimizer_class(groups, lr=cfg.lr, **dict(cfg.kwargs))
        except TypeError as exc:
            raise ValueError(f"cannot construct optimizer {cfg.name!r}: {exc}") from None
    if cfg.compile and cfg.name not in FUSED_UPDATES:
        raise ValueError(
            f"optimizer.compile: {cfg.name!r} has no fused update; it applies to {sorted(FUSED_UPDATES)}"
        )
    if cfg.kwargs:
        raise ValueError(
            f"optimizer.kwargs is only for 'package.module:Class' optimizers; "
            f"{cfg.name!r} takes its options as optimizer.<key> (got {sorted(cfg.kwargs)})"
        )
    return factory(groups, cfg)


def _fused(cfg: OptimizerConfig, groups: list[dict[str, Any]]) -> bool | None:
    """Fused unless foreach was asked for or a parameter lives where torch has no fused kernel."""
    if cfg.fused is not None:
        return cfg.fused
    if cfg.foreach:
        return None
    devices = {p.device.type for g in groups for p in g["params"]}
    dtypes = {p.dtype for g in groups for p in g["params"]}
    ok = devices <= {"cpu", "cuda"} and dtypes <= {
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
    }
    return True if ok else None


def _adam_kwargs(groups: list[dict[str, Any]], cfg: OptimizerConfig) -> dict[str, Any]:
    """The keyword arguments torch's Adam and AdamW share."""
    return dict(
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        foreach=cfg.foreach,
        fused=_fused(cfg, groups),
    )


@OPTIMIZERS.register("adam", options=AdamOptions, state_keys=adam_state_keys(torch.optim.Adam))
def _adam(groups: list[dict[str, Any]], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, **_adam_kwargs(groups, cfg))


@OPTIMIZERS.register("adamw", options=AdamOptions, state_keys=adam_state_keys(torch.optim.AdamW))
def _adamw(groups: list[dict[str, Any]], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, **_adam_kwargs(groups, cfg))


@OPTIMIZERS.register(
    "sgd",
    options=SGDOptions,
    state_keys=StateKeys(optimizers=(torch.optim.SGD,), others=("momentum_buffer",)),
)
def _sgd(groups: list[dict[str, Any]], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        groups,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
        foreach=cfg.foreach,
    )


@OPTIMIZERS.register(
    "rmsprop",
    options=RMSpropOptions,
    # Ours and torch's keep the same state; the centred variant keeps the first moment `grad_avg`.
    state_keys=StateKeys(
        optimizers=(RMSprop, torch.optim.RMSprop),
        step="step",
        first_moment="grad_avg",
        second_moment="square_avg",
        others=("momentum_buffer",),
        centred=True,
    ),
)
def _rmsprop(groups: list[dict[str, Any]], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    # Ours, not torch's: torch's centred RMSprop can write NaN (plasticrl.plasticity.rmsprop).
    return RMSprop(
        groups,
        lr=cfg.lr,
        alpha=cfg.alpha,
        eps=cfg.eps,
        momentum=cfg.momentum,
        centered=cfg.centered,
        weight_decay=cfg.weight_decay,
        compile=cfg.compile,
    )
