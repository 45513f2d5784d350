r"""Edit rows and columns of layers together with the optimizer state of exactly those slices.

Contains:
    check_optimizer: raise unless an optimizer's state can be edited slice by slice.
    check_editable: raise for a module whose weight is computed by a parametrization.
    reset_state_: put the optimizer state of ``param[index]`` back to a fresh optimizer's (zeros).
    init_sample: a fresh draw of a module's parameters from its own initialisation distribution.
    unit_columns: the input columns (Linear) or channels (Conv) of a layer that read given units.
    reinit_units_: the ReDo / Continual-Backprop surgery — fresh incoming weights, zero bias, zero
        outgoing weights, and the optimizer state of exactly those slices reset.

Which layers read which units is found by :mod:`plasticrl.plasticity.units`.

Every intervention of :mod:`plasticrl.plasticity.interventions` edits weights through this module, so the
rules below hold for all of them (docs/methods.md §2: "any intervention that edits weights must edit
the optimizer state of the same slices and must never leave a new parameter outside the
optimizer").

Note [In place]
    Parameters are edited in place under ``torch.no_grad()`` (``w[rows] = ...``), never replaced:
    the optimizer, the regularizers (L2-Init's anchor, spectral vectors) and any other holder of a
    reference keep the same tensor objects, so an edited parameter is trained on the next step like
    every other (tests prove it). In-place edits bump the tensor's ``_version``, which is how
    AdamO's isometry prefetch notices them (Note [Isometry prefetch] in :mod:`plasticrl.plasticity.adamo`).

Note [Optimizer state]
    "Reset" means: the state a freshly built optimizer would hold for those entries. For every
    supported optimizer that is zero — every state tensor shaped like the parameter, as the
    optimizer's registry entry declares them (Note [Optimizer state keys] in
    :mod:`plasticrl.plasticity.optimizers`: Adam/AdamW/AdamO's moments and AMSGrad's maximum,
    RMSprop's moments and momentum buffer, SGD's momentum buffer). An optimizer class whose entry
    declares no state keys (matched by exact type: a subclass may keep other state), or a state key
    it does not declare, is an error naming it: a silent skip would leave stale moments on recycled
    units, the bug this module exists to prevent.

Note [Step count]
    Adam's step counter is one number per tensor, so it cannot be reset for a slice. Two documented
    choices (``adam_step`` of ``redo`` and ``cbp``, passed to :func:`reinit_units_` as a
    :class:`SliceSteps` or None):

    * ``keep`` — the count is left alone: Adam's bias correction treats a recycled slice as old,
      and its first update after the reset is ``η · (1−β1)/√(1−β2) ≈ 3.16 η`` in size (defaults;
      the next ones decay towards η over ~1/(1−β2) steps, several times η meanwhile) rather than
      η. This is what Dopamine's ReDo (Sokar et al.) does — it zeroes the moments and keeps the
      count — and ``redo``'s default.
    * ``reset`` — **per-slice bias correction**: :class:`SliceSteps` remembers, per entry, the
      count at which it was recycled and, after every optimizer step (a step post-hook),
      corrects the recycled entries' update from torch's ``m/(1−β1^t) / (√(v/(1−β2^t)) + ε)`` to
      ``m/(1−β1^k) / (√(v/(1−β2^k)) + ε)`` with k the entry's own count (steps since its reset):
      every recycled entry is updated exactly as by a fresh Adam started at its reset (up to float
      rounding), its first step is η. This is Dohare et al.'s continual backprop (their AdamGnT
      keeps a per-entry step and sets it to 0 for replaced features) and ``cbp``'s default.
      Optimizers without bias correction (RMSprop, SGD) need nothing. Entries whose correction has
      vanished (β1^k, β2^k < 1e-12) are dropped; an optimizer state reset (``reset_on_task_switch``)
      drops them all. The remembered counts are in the intervention's state dict (exact resume).

Note [Flatten layout]
    A conv producer with ``C`` channels and spatial size ``H×W`` feeding a Linear through
    ``flatten(1)`` (or ``nn.Flatten``) of a contiguous ``(B, C, H, W)`` tensor: channel ``c``
    becomes the contiguous input columns ``c·H·W … (c+1)·H·W − 1`` (channel-major, PyTorch's
    default memory order). The block size is derived from the consumer,
    ``in_features // (copies · C)``, so it needs no input shape; ``plasticrl.plasticity.units`` checks
    the layout on the real network by perturbing units and watching which columns move, and
    refuses a network whose layout differs (channel-last flatten, pooling, a permutation).

Note [Copies]
    An activation may hand the next layer several copies of each unit, concatenated along the
    unit axis: :class:`plasticrl.plasticity.layers.CReLU` gives ``[relu(x), relu(−x)]``, so unit ``u`` of
    ``F`` is read at positions ``u`` and ``F + u``. ``copies`` is that count (1 for elementwise
    activations); copy ``r`` of unit ``u`` sits at unit-axis position ``r·F + u``, then the
    flatten blocks of Note [Flatten layout] apply.

Note [Parametrized layers]
    A weight under a parametrization (``torch.nn.utils.parametrize``, e.g. the orthogonal
    constraint of isometric networks) is computed from an unconstrained tensor; a row of the
    weight is not a row of that tensor, and re-initialising or zeroing slices of a constrained
    weight cannot keep it on its manifold (an orthogonal matrix has no zero columns). Every
    function here refuses such a module with an error rather than edit something else.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from plasticrl.plasticity.optimizers import declared_state_keys, state_keys_of
from plasticrl.plasticity.registry import StateKeys
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = [
    "InitKind",
    "check_optimizer",
    "check_editable",
    "reset_state_",
    "init_sample",
    "unit_columns",
    "reinit_units_",
    "AdamStep",
    "SliceSteps",
]

AdamStep = Literal["keep", "reset"]
"""What recycling does to Adam's step count (Note [Step count])."""

InitKind = Literal["default", "orthogonal"]
"""``default``: torch's own ``reset_parameters`` distribution; ``orthogonal``: orthogonal rows."""

_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _optimizer_name(optimizer_type: type) -> str:
    return f"{optimizer_type.__module__}.{optimizer_type.__qualname__}"


def _state_keys(optimizer: torch.optim.Optimizer) -> StateKeys:
    """The declared state keys of ``optimizer``'s exact class, or an error naming the supported ones."""
    keys = state_keys_of(optimizer, exact=True)
    if keys is None:
        supported = ", ".join(_optimizer_name(t) for t in declared_state_keys())
        raise ValueError(
            f"optimizer {_optimizer_name(type(optimizer))} is not supported by weight surgery (its state "
            f"cannot be reset slice by slice, and skipping it would leave stale moments on edited "
            f"units); supported: {supported}"
        )
    return keys


def _known(keys: StateKeys) -> list[str]:
    return sorted(keys.tensors | ({keys.step} if keys.step else set()))


def check_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Raise unless ``optimizer``'s state can be edited slice by slice (Note [Optimizer state]).

    Raises:
        ValueError: an optimizer class whose registry entry declares no state keys (exact type:
            a subclass may keep other state), or a state key it does not declare.
    """
    keys = _state_keys(optimizer)
    for state in optimizer.state.values():
        unknown = set(state).difference(_known(keys))
        if unknown:
            raise ValueError(
                f"{type(optimizer).__name__} state holds keys {sorted(unknown)} unknown to weight surgery "
                f"(known: {_known(keys)})"
            )


def check_editable(module: nn.Module, name: str = "") -> None:
    """Raise for a module whose parameters are computed by a parametrization (Note [Parametrized layers]).

    Raises:
        ValueError: naming the module and the reason.
    """
    if parametrize.is_parametrized(module):
        label = f"layer {name!r}" if name else f"{type(module).__name__} layer"
        raise ValueError(
            f"{label} is parametrized (e.g. an orthogonal constraint): its weight is computed from "
            f"another tensor, and re-initialising or zeroing rows/columns of a constrained weight is "
            f"not meaningful"
        )


def _holds(optimizer: torch.optim.Optimizer, param: Tensor) -> bool:
    return any(p is param for group in optimizer.param_groups for p in group["params"])


@torch.no_grad()
def reset_state_(optimizer: torch.optim.Optimizer, param: Tensor, index: Any) -> None:
    """Zero every per-entry state tensor of ``param`` at ``index`` (Note [Optimizer state]).

    Args:
        optimizer: a supported optimizer that holds ``param``.
        param: the parameter whose state is reset.
        index: what ``param[index]`` selects, e.g. ``(rows,)`` or ``(slice(None), columns)``.

    Raises:
        ValueError: an unsupported optimizer or state key, a parameter the optimizer does not
            hold, or a state tensor not shaped like the parameter.
    """
    keys = _state_keys(optimizer)
    if not _holds(optimizer, param):
        raise ValueError(
            f"the parameter of shape {tuple(param.shape)} is not in the optimizer's param groups"
        )
    state = optimizer.state.get(param)  # never creates an entry (state is a defaultdict)
    if not state:
        return  # never stepped: nothing to reset
    for key, value in state.items():
        if key == keys.step:
            continue
        if key not in keys.tensors:
            raise ValueError(
                f"{type(optimizer).__name__} state key {key!r} is unknown to weight surgery "
                f"(known: {_known(keys)})"
            )
        if value is None:  # SGD without momentum keeps momentum_buffer=None
            continue
        if not isinstance(value, Tensor) or value.shape != param.shape:
            raise ValueError(f"{type(optimizer).__name__} state {key!r} is not shaped like its parameter")
        value[index] = 0


def init_sample(
    module: nn.Module, *, generator: torch.Generator, init: InitKind = "default", gain: float = 1.0
) -> dict[str, Tensor]:
    """A fresh draw of ``module``'s own parameters (and buffers) from its initialisation distribution.

    ``init="default"`` is the distribution of the module's own ``reset_parameters``. For
    ``Linear``/``Conv1d/2d/3d`` it is drawn here from ``generator``, exactly as torch does from the
    global one: ``W ~ U(±1/√fan_in)`` (``kaiming_uniform_`` with ``a = √5``), then
    ``b ~ U(±1/√fan_in)`` — the same numbers ``reset_parameters`` gives after ``torch.manual_seed``
    of the same seed (tested). Any other module (LayerNorm, GroupNorm, …) is deep-copied and its
    ``reset_parameters`` run under a forked global RNG seeded from ``generator``, so the global
    streams are untouched. ``init="orthogonal"`` draws ``nn.init.orthogonal_(W, gain)`` and a zero
    bias for Linear/Conv (``plasticrl.agents.networks.orthogonal_init_``'s distribution), and falls back to
    ``default`` for other modules.

    Args:
        module: the module; only its own (non-recursive) tensors are drawn.
        generator: the source of randomness, on the module's device.
        init: ``default`` or ``orthogonal``.
        gain: the orthogonal gain.

    Returns:
        ``{name: tensor}`` for the module's own parameters and floating-point buffers.

    Raises:
        ValueError: an unknown ``init``, or a module that is neither Linear/Conv nor has
            ``reset_parameters``.
    """
    if init not in ("default", "orthogonal"):
        raise ValueError(f"unknown init {init!r}; valid: ['default', 'orthogonal']")
    if isinstance(module, _AFFINE) and not parametrize.is_parametrized(module):
        weight = torch.empty_like(module.weight, requires_grad=False)
        if init == "orthogonal":
            nn.init.orthogonal_(weight, gain=gain, generator=generator)
        else:
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        out = {"weight": weight}
        if module.bias is not None:
            bias = torch.zeros_like(module.bias, requires_grad=False)
            fan_in = weight[0].numel()
            if init == "default" and fan_in > 0:
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(bias, -bound, bound, generator=generator)
            out["bias"] = bias
        return out
    if not callable(getattr(module, "reset_parameters", None)):
        raise ValueError(f"{type(module).__name__} has no reset_parameters: its initialisation is unknown")
    fresh = copy.deepcopy(module)
    device = generator.device
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=device))
    cuda = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        fresh.reset_parameters()  # type: ignore[operator]
    tensors = itertools.chain(fresh.named_parameters(recurse=False), fresh.named_buffers(recurse=False))
    return {name: t.detach() for name, t in tensors if t.is_floating_point()}


def _unit_positions(units: Tensor, n_units: int, copies: int) -> Tensor:
    """Unit-axis positions ``r·F + u`` of every copy of every unit (Note [Copies])."""
    offsets = torch.arange(copies, device=units.device).unsqueeze(1) * n_units
    return (offsets + units.unsqueeze(0)).flatten()


def unit_columns(units: Tensor, n_units: int, consumer: nn.Module, *, copies: int = 1) -> Tensor:
    """The slots of ``consumer``'s weight (dim 1) that read ``units`` of a layer with ``n_units`` units.

    Linear consumer: input columns, with ``block = in_features // (copies · n_units)`` columns per
    unit copy (the spatial size of a flattened conv, 1 after a Linear; Note [Flatten layout]).
    Conv consumer: input channels (``in_channels == copies · n_units``, ``groups == 1``).

    Example:
        >>> fc = nn.Linear(2 * 3 * 4, 5)  # reads 2 channels of 3×4, channel-major
        >>> unit_columns(torch.tensor([1]), 2, fc).tolist()
        [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]
        >>> unit_columns(torch.tensor([1]), 3, nn.Linear(6, 1), copies=2).tolist()  # CReLU
        [1, 4]

    Raises:
        ValueError: a consumer that is not Linear/Conv, or whose fan-in does not fit.
    """
    units = units.to(dtype=torch.long)
    positions = _unit_positions(units, n_units, copies)
    if isinstance(consumer, nn.Linear):
        width = consumer.in_features
        if width % (copies * n_units):
            raise ValueError(
                f"a Linear with in_features={width} cannot read {copies} × {n_units} units in equal "
                f"blocks (Note [Flatten layout] in plasticrl.plasticity.surgery)"
            )
        block = width // (copies * n_units)
        columns = positions.unsqueeze(1) * block + torch.arange(block, device=units.device)
        return columns.flatten().sort().values
    if isinstance(consumer, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        if consumer.groups != 1 or consumer.in_channels != copies * n_units:
            raise ValueError(
                f"a conv with in_channels={consumer.in_channels}, groups={consumer.groups} cannot read "
                f"{copies} × {n_units} units channel by channel"
            )
        return positions.sort().values
    raise ValueError(f"cannot map units to the inputs of a {type(consumer).__name__} (Linear or Conv only)")


def _affine(module: nn.Module) -> nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d:
    """``module`` itself, once checked to be a Linear or Conv layer (whose units are its outputs)."""
    if not isinstance(module, _AFFINE):
        raise ValueError(f"units are the outputs of a Linear or Conv layer, got {type(module).__name__}")
    return module


class SliceSteps:
    """Per-entry Adam bias correction for recycled slices (Note [Step count], ``adam_step: reset``).

    Attach one to an optimizer; :func:`reinit_units_` calls :meth:`reset` for every slice it
    recycles; a step post-hook then corrects those entries' updates to their own step count.

    Args:
        optimizer: the optimizer; for one without Adam's bias correction the object does nothing.
        names: ``{parameter: name}`` used by :meth:`state_dict` (e.g. ``model.named_parameters()``).
    """

    _DROP = 1e-12  # β^k below this: the correction is below float resolution; forget the entry

    def __init__(self, optimizer: torch.optim.Optimizer, names: Mapping[str, Tensor]) -> None:
        self.optimizer = optimizer
        keys = state_keys_of(optimizer, exact=False)
        self.active = bool(keys is not None and keys.bias_corrected)
        self.keys = keys
        self.names = dict(names)
        self._params = {id(p): p for p in self.names.values()}
        self._name_of = {id(p): n for n, p in self.names.items()}
        self.start: dict[str, Tensor] = {}  # name → count at the entry's last reset (0: never)
        self._handle = optimizer.register_step_post_hook(self._after_step) if self.active else None

    def close(self) -> None:
        """Remove the step hook."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @torch.no_grad()
    def reset(self, param: Tensor, index: Any) -> None:
        """Restart the step count of ``param[index]`` at the parameter's current count."""
        if not self.active:
            return
        state = self.optimizer.state.get(param)
        if not state or self.keys is None or self.keys.step not in state:
            return  # never stepped: the next step is its first anyway
        name = self._name_of.get(id(param))
        if name is None:
            raise ValueError(f"a parameter of shape {tuple(param.shape)} is not one of the model's")
        t = float(state[self.keys.step])
        start = self.start.get(name)
        if start is None:
            start = self.start[name] = torch.zeros(param.shape, dtype=torch.float64, device=param.device)
        start[index] = t

    @torch.no_grad()
    def _after_step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
        keys = self.keys
        assert keys is not None
        group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        for name in list(self.start):
            param = self.names[name]
            state = optimizer.state.get(param)
            group = group_of.get(id(param))
            start = self.start[name]
            if not state or group is None or keys.step not in state:
                del self.start[name]  # state reset: every entry restarts anyway
                continue
            t = float(state[keys.step])
            mask = start > 0
            if t <= float(start.max()):  # the state was reset since: counts agree again
                del self.start[name]
                continue
            beta1, beta2 = (float(b) for b in group["betas"])
            k = t - start[mask]
            lr, eps = float(group["lr"]), float(group["eps"])
            m = state[keys.first_moment][mask].to(torch.float64)
            v_key = "max_exp_avg_sq" if group.get("amsgrad") else keys.second_moment
            v = state[v_key][mask].to(torch.float64)
            torch_update = (m / (1 - beta1**t)) / ((v / (1 - beta2**t)).sqrt() + eps)
            own_update = (m / (1 - beta1**k)) / ((v / (1 - beta2**k)).sqrt() + eps)
            sign = 1.0 if group.get("maximize") else -1.0
            param[mask] += (sign * lr * (own_update - torch_update)).to(param.dtype)
            done = (beta1**k < self._DROP) & (beta2**k < self._DROP)
            if bool(done.any()):
                rows = mask.nonzero(as_tuple=True)
                start[tuple(r[done] for r in rows)] = 0.0
            if not bool((start > 0).any()):
                del self.start[name]

    def state_dict(self) -> dict[str, Tensor]:
        """``{parameter name: per-entry count at its last reset}`` of the entries still corrected."""
        return {name: start.clone() for name, start in self.start.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore :meth:`state_dict`."""
        unknown = sorted(set(state) - set(self.names))
        if unknown:
            raise ValueError(f"step-count state names parameters {unknown} the model does not have")
        self.start = {
            name: t.to(dtype=torch.float64, device=self.names[name].device).clone()
            for name, t in state.items()
        }


@torch.no_grad()
def reinit_units_(
    producer: nn.Module,
    units: Tensor | Sequence[int],
    consumers: Sequence[nn.Module],
    optimizer: torch.optim.Optimizer,
    *,
    generator: torch.Generator,
    init: InitKind = "default",
    gain: float = 1.0,
    copies: int = 1,
    norms: Iterable[nn.Module] = (),
    steps: SliceSteps | None = None,
) -> None:
    r"""Recycle ``units`` of ``producer``: ReDo's and Continual Backprop's edit, optimizer state included.

    For every unit ``u`` (a row of a Linear, an output channel of a Conv):

    * incoming weights ``W_in[u] ← ε[u]``, ε a fresh draw of ``producer``'s own initialisation
      (:func:`init_sample`); bias ``b[u] ← 0``;
    * per-unit parameters of ``norms`` between producer and consumers (LayerNorm/GroupNorm gain
      and bias, running statistics) ← their initial values (gain 1, bias 0) **[ours]**: a
      recycled unit starts as a fresh one; a parameter shared by all units is left alone;
    * outgoing weights ``W_out[:, cols(u)] ← 0`` in every consumer (:func:`unit_columns`), so the
      fresh incoming weights do not reach the output until the next update: recycling a dormant
      unit (zero activity, as ReDo does) leaves the network's output unchanged — exactly so
      without a normalisation across units between the layers; with LayerNorm/GroupNorm the
      unit's new pre-activation shifts the statistics its neighbours are normalised with;
    * the optimizer state of exactly those slices — ``W_in[u]``, ``b[u]``, the norm slices and
      ``W_out[:, cols(u)]`` — reset to zero (Note [Optimizer state]). Nothing else changes.

    Args:
        producer: the Linear/Conv whose output units are recycled.
        units: indices of the units (duplicates are ignored).
        consumers: the Linear/Conv layers reading the units (after the activation, a flatten …).
        optimizer: the optimizer training all of these parameters.
        generator: randomness of the fresh weights, on the producer's device.
        init: the producer's initialisation distribution (:func:`init_sample`).
        gain: orthogonal gain (``init="orthogonal"``).
        copies: copies of each unit the consumers read (Note [Copies]; 2 for CReLU).
        norms: per-unit modules between producer and consumers.
        steps: per-slice bias correction of the recycled slices (Note [Step count],
            ``adam_step: reset``); None keeps the tensors' step counts (``adam_step: keep``).

    Raises:
        ValueError: a parametrized module, an unsupported optimizer, a parameter outside the
            optimizer, units out of range or a consumer whose fan-in does not fit.
    """
    norms = tuple(norms)
    for module in (producer, *consumers, *norms):
        check_editable(module)
    check_optimizer(optimizer)
    layer = _affine(producer)
    weight = layer.weight
    n_units = int(weight.shape[0])
    unit_ids = torch.as_tensor(units, dtype=torch.long, device=weight.device).unique()
    if unit_ids.numel() == 0:
        return
    if int(unit_ids.min()) < 0 or int(unit_ids.max()) >= n_units:
        raise ValueError(f"units {unit_ids.tolist()} out of range for a layer of {n_units} units")
    consumer_columns = [unit_columns(unit_ids, n_units, c, copies=copies) for c in consumers]  # checks first
    # ---- incoming weights: fresh rows; bias: zero
    fresh = init_sample(producer, generator=generator, init=init, gain=gain)
    weight[unit_ids] = fresh["weight"][unit_ids]
    reset_state_(optimizer, weight, (unit_ids,))
    if steps is not None:
        steps.reset(weight, (unit_ids,))
    if layer.bias is not None:
        layer.bias[unit_ids] = 0.0
        reset_state_(optimizer, layer.bias, (unit_ids,))
        if steps is not None:
            steps.reset(layer.bias, (unit_ids,))
    # ---- per-unit normalisation parameters and statistics: back to their initial values
    for norm in norms:
        initial = init_sample(norm, generator=generator)
        own = itertools.chain(norm.named_parameters(recurse=False), norm.named_buffers(recurse=False))
        for name, tensor in own:
            if name not in initial or tensor.dim() == 0 or tensor.shape[0] % n_units:
                continue  # shared by all units (or not a statistic): leave it
            rows = _unit_positions(unit_ids, n_units, tensor.shape[0] // n_units)
            tensor[rows] = initial[name][rows].to(tensor.dtype)
            if isinstance(tensor, nn.Parameter):
                reset_state_(optimizer, tensor, (rows,))
                if steps is not None:
                    steps.reset(tensor, (rows,))
    # ---- outgoing weights: zero, so the recycled unit starts silent
    for consumer, columns in zip(consumers, consumer_columns, strict=True):
        consumer_weight = _affine(consumer).weight
        consumer_weight[:, columns] = 0.0
        reset_state_(optimizer, consumer_weight, (slice(None), columns))
        if steps is not None:
            steps.reset(consumer_weight, (slice(None), columns))
