"""Change kinds: what a task change of :class:`plasticrl.envs.nonstationary.NonStationary` does.

Contains:
    Change: the base class of change kinds (the contract: bind, draw, activate, save; optionally a
        per-step observation hook).
    Transforms: what the wrapper does on every step for the active task.
    Switch / SwitchOptions: ``switch`` — move to another task of a :class:`~plasticrl.envs.tasks.TaskSet`.
    PermuteObs / PermuteObsOptions: ``permute_obs`` — a seeded permutation of the observation.
    PermuteActions / PermuteActionsOptions: ``permute_actions`` — a seeded permutation of the actions.
    RewardScale / RewardScaleOptions: ``reward_scale`` — multiply rewards by one of a list of scales.
    ObsNoise / ObsNoiseOptions: ``obs_noise`` — Gaussian noise on every observation (a hook).
    Dynamics / DynamicsOptions: ``dynamics`` — set env parameters (gravity, friction, the
        constructor kwargs an env keeps as attributes) to one of a list of values per task.
    Compose: several change kinds at once (a game switch *and* a permutation); configs spell it as
        a list of kinds.
    Tour: the parameters of ``switch`` with ``order="shuffle"``.
    CHANGES: the registry of change kinds; each entry carries its options dataclass
        (``CHANGES.options(name)``), and ``CHANGES.get(name)(**fields of its options)`` builds it.

Every change kind is one class with one options dataclass (frozen, a docstring under each field,
``__post_init__`` validation): the options are the keys users type under ``nonstationary.options``,
and they are the kind's constructor arguments, under the same names, kept as attributes of the
same names (which is what older pickles of the kinds hold). See :class:`Change` for the contract.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Literal, NamedTuple, TypeVar

import gymnasium as gym
import numpy as np
from gymnasium.spaces import Box, Discrete
from plasticrl.envs.tasks import StepResult, TaskSet
from plasticrl.plasticity.registry import Registry

__all__ = [
    "Change",
    "Transforms",
    "Switch",
    "SwitchOptions",
    "Tour",
    "PermuteObs",
    "PermuteObsOptions",
    "PermuteActions",
    "PermuteActionsOptions",
    "RewardScale",
    "RewardScaleOptions",
    "ObsNoise",
    "ObsNoiseOptions",
    "Dynamics",
    "DynamicsOptions",
    "Compose",
    "CHANGES",
]

P = TypeVar("P")  # the parameters of one task, as a change kind represents them

CHANGES: Registry[type[Change[Any]]] = Registry("change kind")


class Transforms(NamedTuple):
    """What ``NonStationary`` does on every step for the active task; None leaves a channel alone."""

    obs_index: np.ndarray | None = None
    """Flat indices with the observation's shape: ``obs_out = obs.take(obs_index)`` (folded into the
    env below when it supports it: Note [Folded observation gather])."""
    action_lut: tuple[int, ...] | None = None
    """Agent action ``a`` runs env action ``action_lut[a]``."""
    reward_scale: float | None = None
    """The reward returned is ``reward_scale * reward``."""
    env_step: Callable[[Any], StepResult] | None = None
    """Steps the env under the wrapper exactly as its ``step`` would, with less indirection (None:
    its ``step``); valid until the next activation (Note [Step fast path])."""


class Change(Generic[P]):
    """Base class of change kinds: binds to an env, draws task parameters, activates them.

    A change kind object is configuration; ``NonStationary`` works on its own shallow copy, so one
    object can configure many sub-envs. Task parameters ``P`` are cheap values (an index or a
    permutation); ``first``/``next`` must draw randomness only from the ``rng`` they are given.

    The contract of a new kind (one class, one options dataclass, registered with
    ``@CHANGES.register(name, options=ItsOptions)``):
        * ``Options`` is its options dataclass; its constructor takes the options' fields as
          keyword arguments and keeps each as an attribute of the same name (``repr`` and
          :attr:`options` read them back);
        * ``bind``, ``first``, ``next``, ``activate``, ``to_state``, ``from_state`` (and optionally
          ``task_id``) as documented below;
        * optionally :meth:`obs_hook`, a per-step observation transform with randomness: the
          wrapper calls it on every observation it returns, with a generator of its own that it
          seeds and checkpoints for this purpose (Note [Observation hooks] in
          :mod:`plasticrl.envs.nonstationary`). A kind without one costs the wrapper nothing.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[Any] | None] = None
    """The options dataclass (the keys of ``nonstationary.options``); None: no declared options."""

    @property
    def options(self) -> Any:
        """This object's options as an instance of :attr:`Options` (None without one)."""
        if self.Options is None:
            return None
        return self.Options(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self.Options)})

    def __repr__(self) -> str:
        fields = dataclasses.fields(self.Options) if self.Options is not None else ()
        return f"{type(self).__name__}({', '.join(f'{f.name}={getattr(self, f.name)!r}' for f in fields)})"

    def bind(self, env: gym.Env[Any, Any]) -> tuple[gym.Space[Any], gym.Space[Any]]:
        """Check ``env`` and return the wrapper's (observation_space, action_space), fixed for life.

        Raises:
            ValueError: ``env``'s spaces are not supported by this change kind.
        """
        raise NotImplementedError

    def first(self) -> P:
        """Return the parameters of the initial task (task 0)."""
        raise NotImplementedError

    def first_draw(self, rng: np.random.Generator) -> P:
        """The initial task's parameters, drawn from the task generator where the options say so.

        The wrapper calls this once, at the start of its life. The default is :meth:`first`
        (nothing drawn), so a kind whose first task is fixed leaves the generator untouched.
        """
        return self.first()

    def next(self, params: P, rng: np.random.Generator) -> P:
        """Return the parameters of the task that follows ``params``."""
        raise NotImplementedError

    def task_id(self, params: P, num_changes: int) -> int:
        """Return ``info["task_id"]`` for ``params``, the ``num_changes``-th task (default: the count)."""
        return num_changes

    def activate(self, params: P) -> Transforms:
        """Make ``params`` the rules of the episode about to start; called just before ``env.reset``."""
        raise NotImplementedError

    def to_state(self, params: P) -> Any:
        """Return ``params`` as plain Python data (ints, lists)."""
        raise NotImplementedError

    def from_state(self, data: Any) -> P:
        """Inverse of :meth:`to_state`; raises ``ValueError`` on data this binding cannot use."""
        raise NotImplementedError

    @property
    def has_obs_hook(self) -> bool:
        """Whether this kind transforms every observation with :meth:`obs_hook` (it overrides it)."""
        return type(self).obs_hook is not Change.obs_hook

    def obs_hook(self, obs: Any, rng: np.random.Generator) -> Any:
        """The active task's per-step transform of ``obs``; draws randomness only from ``rng``.

        Called by the wrapper on every observation it returns (reset and step), after the
        ``obs_index`` of :class:`Transforms`, for the task last activated. Must return a new array
        (never modify ``obs``: the env below may return a buffer it keeps) inside the observation
        space that :meth:`bind` returned. The default (not overridden) is no hook at all.
        """
        return obs


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _next_index(index: int, count: int, order: str, rng: np.random.Generator) -> int:
    """Next of ``count`` items: cyclic, or uniform over the *other* items (every change changes)."""
    if order == "cycle":
        return (index + 1) % count
    other = int(rng.integers(count - 1))
    return other + (other >= index)


def _check_order(kind: str, order: object) -> None:
    if order not in ("cycle", "random"):
        raise ValueError(f"{kind}.order must be 'cycle' or 'random', got {order!r}")


def _index_from_state(kind: str, data: Any, count: int) -> int:
    if not _is_int(data) or not 0 <= data < count:
        raise ValueError(f"{kind} state must be an index in [0, {count}), got {data!r}")
    return int(data)


def fresh_permutation(size: int, previous: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``range(size)`` that is a real change: never ``previous``, never the identity.

    Drawn as ``rng.permutation(size)``, redrawn while it is the identity or ``previous`` (so the
    stream is the plain draw's whenever the plain draw was already a change). With 2 elements
    only two permutations exist: the draw is the one that differs from ``previous`` (so changes
    alternate between the swap and the identity). With 1 element nothing can change.
    """
    identity = np.arange(size, dtype=np.intp)
    if size < 2:
        return identity
    if size == 2 and previous is not None and not np.array_equal(previous, identity):
        return identity  # the only permutation that differs from the swap
    while True:
        perm = rng.permutation(size).astype(np.intp)
        if np.array_equal(perm, identity) or (previous is not None and np.array_equal(perm, previous)):
            continue
        return perm


def _perm_from_state(kind: str, data: Any, size: int) -> np.ndarray:
    perm = np.asarray(data)
    is_perm = perm.shape == (size,) and perm.dtype.kind in "iu"
    if not is_perm or not np.array_equal(np.sort(perm), np.arange(size)):
        raise ValueError(f"{kind} state must be a permutation of range({size}), got {data!r:.80}")
    return perm.astype(np.intp)


def _finite_numbers(values: object) -> tuple[float, ...] | None:
    """``values`` as a tuple of floats when it is a sequence of finite real numbers, else None."""
    if not isinstance(values, Sequence) or isinstance(values, str):
        return None
    if not all(isinstance(s, int | float) and not isinstance(s, bool) and np.isfinite(s) for s in values):
        return None
    return tuple(float(s) for s in values)


# ----------------------------------------------------------------------------------------------
# switch: move between the tasks of a TaskSet.


@dataclass(frozen=True)
class SwitchOptions:
    """Options of ``switch`` (``nonstationary.options`` with ``kind: switch``)."""

    order: Literal["cycle", "random", "shuffle"] = "cycle"
    """Task order: ``cycle`` visits 0, 1, ..., k-1, 0, ...; ``random`` draws each next task
    uniformly from the other tasks; ``shuffle`` visits every task once per cycle, in the listed
    order first and in a fresh random order every later cycle (never the same task twice in a row)."""
    first_cycle: Literal["listed", "shuffled"] = "listed"
    """``shuffle`` only: the first cycle in the listed order, or shuffled as every later one (the
    AdamO paper's protocol: the first game differs between seeds)."""

    def __post_init__(self) -> None:
        if self.order not in ("cycle", "random", "shuffle"):
            raise ValueError(f"Switch.order must be 'cycle', 'random' or 'shuffle', got {self.order!r}")
        if self.first_cycle not in ("listed", "shuffled"):
            raise ValueError(f"Switch.first_cycle must be 'listed' or 'shuffled', got {self.first_cycle!r}")
        if self.first_cycle == "shuffled" and self.order != "shuffle":
            raise ValueError(f"Switch.first_cycle='shuffled' needs order='shuffle', got order={self.order!r}")


class Tour(NamedTuple):
    """The parameters of ``switch`` with ``order="shuffle"``: where in which cycle the tasks stand."""

    order: tuple[int, ...]
    """This cycle's visiting order: a permutation of the task indices."""
    position: int
    """The current task is ``order[position]``."""
    cycle: int
    """How many cycles were completed before this one (0 in the first)."""

    @property
    def task(self) -> int:
        """The index of the current task."""
        return self.order[self.position]


@CHANGES.register("switch", options=SwitchOptions)
class Switch(Change[Any]):
    """``switch``: move to another task of the wrapped :class:`TaskSet`; ``task_id`` is its index.

    The first task is ``tasks[0]``. ``order="cycle"`` visits ``0, 1, ..., k-1, 0, ...``;
    ``order="random"`` draws each next task uniformly from the *other* tasks; ``order="shuffle"``
    visits every task once per cycle: the first cycle in the listed order, every later one in a
    fresh random order (uniform over the orders that do not start with the task that ended the
    previous cycle, so every change changes the task). Parameters: the task index (``cycle``,
    ``random``), or a :class:`Tour` (``shuffle``), which also counts cycles.

    Args:
        order: ``"cycle"``, ``"random"`` or ``"shuffle"`` (:class:`SwitchOptions`).
    """

    name = "switch"
    Options = SwitchOptions
    first_cycle: Literal["listed", "shuffled"] = "listed"  # (a class default: older pickles lack it)

    def __init__(
        self,
        order: Literal["cycle", "random", "shuffle"] = "cycle",
        first_cycle: Literal["listed", "shuffled"] = "listed",
    ) -> None:
        options = SwitchOptions(order=order, first_cycle=first_cycle)
        self.order = options.order
        if options.first_cycle != "listed":  # only then an instance attribute: old pickles stay equal
            self.first_cycle = options.first_cycle

    def bind(self, env: gym.Env[Any, Any]) -> tuple[gym.Space[Any], gym.Space[Any]]:  # noqa: D102
        taskset = env.unwrapped
        if not isinstance(taskset, TaskSet):
            raise ValueError(
                f"change 'switch' needs a TaskSet env (TaskSet(tasks, make_task=...)), got {env}"
            )
        if len(taskset.tasks) < 2:
            raise ValueError(f"change 'switch' needs at least 2 tasks, got {taskset.names}")
        self._taskset, self._count = taskset, len(taskset.tasks)
        self._direct = env is taskset  # no wrapper in between: steps may go to the task itself
        return env.observation_space, env.action_space

    def first(self) -> int | Tour:  # noqa: D102
        if self.order == "shuffle":
            return Tour(tuple(range(self._count)), 0, 0)
        return 0

    def first_draw(self, rng: np.random.Generator) -> int | Tour:  # noqa: D102
        if self.order == "shuffle" and self.first_cycle == "shuffled":
            return Tour(tuple(int(i) for i in rng.permutation(self._count)), 0, 0)
        return self.first()

    def next(self, params: int | Tour, rng: np.random.Generator) -> int | Tour:  # noqa: D102
        if not isinstance(params, Tour):
            return _next_index(params, self._count, self.order, rng)
        if params.position + 1 < self._count:
            return params._replace(position=params.position + 1)
        # A new cycle: its first task uniform over the others, the rest in uniform random order.
        start = _next_index(params.task, self._count, "random", rng)
        rest = [t for t in range(self._count) if t != start]
        order = (start, *(rest[int(i)] for i in rng.permutation(len(rest))))
        return Tour(order, 0, params.cycle + 1)

    def task_id(self, params: int | Tour, num_changes: int) -> int:  # noqa: D102
        return params.task if isinstance(params, Tour) else params

    def activate(self, params: int | Tour) -> Transforms:  # noqa: D102
        self._taskset.select(self.task_id(params, 0))
        return Transforms(env_step=self._taskset.active_step() if self._direct else None)

    def to_state(self, params: int | Tour) -> int | dict[str, Any]:  # noqa: D102
        if isinstance(params, Tour):
            return {"order": list(params.order), "position": params.position, "cycle": params.cycle}
        return int(params)

    def from_state(self, data: Any) -> int | Tour:  # noqa: D102
        if self.order != "shuffle":
            return _index_from_state("switch", data, self._count)
        if not isinstance(data, dict) or set(data) != {"order", "position", "cycle"}:
            raise ValueError(f"switch (shuffle) state must be {{order, position, cycle}}, got {data!r:.80}")
        order = _perm_from_state("switch", data["order"], self._count)
        position = _index_from_state("switch", data["position"], self._count)
        if not _is_int(data["cycle"]) or data["cycle"] < 0:
            raise ValueError(f"switch (shuffle) state cycle must be an integer >= 0, got {data['cycle']!r}")
        return Tour(tuple(int(t) for t in order), position, int(data["cycle"]))


# ----------------------------------------------------------------------------------------------
# Permutations and reward scales: the cheap non-stationarities within one env.


@dataclass(frozen=True)
class PermuteObsOptions:
    """Options of ``permute_obs``."""

    mode: Literal["all", "spatial", "channels"] = "all"
    """What is permuted: ``all`` cells, the ``spatial`` positions (the same for every channel), or
    the ``channels`` (the same at every position)."""
    layout: Literal["chw", "hwc"] = "chw"
    """Axis order of a 3-d observation for ``spatial`` and ``channels``: ``chw`` (plasticrl's
    MinAtar) or ``hwc`` (raw MinAtar)."""
    first_task: Literal["identity", "random"] = "identity"
    """Task 0's permutation: the identity (the plain observation) or a random one (the AdamO
    paper's protocol permutes every (game, cycle), the first included)."""

    def __post_init__(self) -> None:
        if self.mode not in ("all", "spatial", "channels"):
            raise ValueError(f"PermuteObs.mode must be 'all', 'spatial' or 'channels', got {self.mode!r}")
        if self.layout not in ("chw", "hwc"):
            raise ValueError(f"PermuteObs.layout must be 'chw' or 'hwc', got {self.layout!r}")
        if self.first_task not in ("identity", "random"):
            raise ValueError(f"PermuteObs.first_task must be 'identity' or 'random', got {self.first_task!r}")


@CHANGES.register("permute_obs", options=PermuteObsOptions)
class PermuteObs(Change[np.ndarray]):
    """``permute_obs``: a seeded permutation of the observation, fixed until the next change.

    Task 0 is the identity; every change draws a fresh permutation, never the identity nor the
    previous one (:func:`fresh_permutation`). ``task_id`` counts changes.
    With ``out = obs.take(index)``, ``out`` is a rearrangement of ``obs`` (a bijection on cells).

    Modes, for an image observation of ``C`` channels and ``H × W`` positions:
        ``all``: one permutation of all ``C·H·W`` cells (any ``Box`` shape);
        ``spatial``: one permutation of the ``H·W`` positions, the same for every channel (a
            pixel keeps its channel vector);
        ``channels``: one permutation of the ``C`` channels, the same at every position.

    ``spatial`` and ``channels`` need a 3-d observation in ``layout`` order: ``"chw"`` (plasticrl's
    convention, e.g. MinAtar as (C, 10, 10)) or ``"hwc"`` (raw MinAtar, (10, 10, C)). A ``chw``
    shape whose first dimension is the largest looks channel-last and gets a warning.

    The observation space keeps its shape and dtype; its bounds are widened to the min/max over
    the cells a permutation can exchange (unchanged when they are uniform, as in MinAtar), so
    every permuted observation stays inside it.

    Args:
        mode: ``"all"``, ``"spatial"`` or ``"channels"`` (:class:`PermuteObsOptions`).
        layout: ``"chw"`` or ``"hwc"``; used by ``spatial`` and ``channels``.
    """

    name = "permute_obs"
    Options = PermuteObsOptions
    first_task: Literal["identity", "random"] = "identity"  # (a class default: older pickles lack it)

    def __init__(
        self,
        mode: Literal["all", "spatial", "channels"] = "all",
        layout: Literal["chw", "hwc"] = "chw",
        first_task: Literal["identity", "random"] = "identity",
    ) -> None:
        options = PermuteObsOptions(mode=mode, layout=layout, first_task=first_task)
        self.mode, self.layout = options.mode, options.layout
        if options.first_task != "identity":  # only then an instance attribute: old pickles stay equal
            self.first_task = options.first_task

    def bind(self, env: gym.Env[Any, Any]) -> tuple[gym.Space[Any], gym.Space[Any]]:  # noqa: D102
        space = env.observation_space
        if not isinstance(space, Box):
            raise ValueError(f"change 'permute_obs' needs a Box observation space, got {space}")
        shape = space.shape
        if self.mode != "all":
            if len(shape) != 3:
                raise ValueError(
                    f"permute_obs mode {self.mode!r} needs a 3-d {self.layout} observation, got {shape}"
                )
            if self.layout == "chw" and shape[0] > max(shape[1], shape[2]):
                gym.logger.warn(f"permute_obs: shape {shape} looks channel-last; layout is 'chw'")
        self._shape = shape
        if self.mode == "all":
            self._channels, self._positions, self._size = 1, int(np.prod(shape)), int(np.prod(shape))
        else:
            channels = shape[0] if self.layout == "chw" else shape[2]
            positions = int(np.prod(shape)) // channels
            self._channels, self._positions = channels, positions
            self._size = positions if self.mode == "spatial" else channels
        low, high = self._widen(space.low, np.min), self._widen(space.high, np.max)
        if np.array_equal(low, space.low) and np.array_equal(high, space.high):
            return space, env.action_space
        return Box(low, high, shape, space.dtype), env.action_space  # type: ignore[arg-type]

    def _grid(self, array: np.ndarray) -> np.ndarray:
        """View ``array`` (observation-shaped) as (channels, positions)."""
        if self.mode == "all":
            return array.reshape(1, -1)
        if self.layout == "chw":
            return array.reshape(self._channels, self._positions)
        return array.reshape(self._positions, self._channels).T

    def _ungrid(self, grid: np.ndarray) -> np.ndarray:
        if self.mode == "all" or self.layout == "chw":
            return np.ascontiguousarray(grid).reshape(self._shape)
        return np.ascontiguousarray(grid.T).reshape(self._shape)

    def _widen(self, bound: np.ndarray, reduce: Callable[..., np.ndarray]) -> np.ndarray:
        grid = self._grid(bound)
        axis = {"all": None, "spatial": 1, "channels": 0}[self.mode]
        return self._ungrid(np.broadcast_to(reduce(grid, axis=axis, keepdims=True), grid.shape))

    def first(self) -> np.ndarray:  # noqa: D102
        return np.arange(self._size, dtype=np.intp)

    def first_draw(self, rng: np.random.Generator) -> np.ndarray:  # noqa: D102
        if self.first_task == "random":
            return self.next(self.first(), rng)
        return self.first()

    def next(self, params: np.ndarray, rng: np.random.Generator) -> np.ndarray:  # noqa: D102
        return fresh_permutation(self._size, params, rng)  # never the identity or the previous one

    def activate(self, params: np.ndarray) -> Transforms:  # noqa: D102
        if np.array_equal(params, np.arange(self._size)):
            return Transforms()  # the identity: skip the copy
        flat = np.arange(self._channels * self._positions, dtype=np.intp)
        grid = self._grid(flat)  # grid[c, p] = flat index of channel c at position p
        permuted = grid[params, :] if self.mode == "channels" else grid[:, params]
        return Transforms(obs_index=self._ungrid(permuted))

    def to_state(self, params: np.ndarray) -> list[int]:  # noqa: D102
        return params.tolist()

    def from_state(self, data: Any) -> np.ndarray:  # noqa: D102
        return _perm_from_state("permute_obs", data, self._size)


@dataclass(frozen=True)
class PermuteActionsOptions:
    """Options of ``permute_actions``: none (every change draws a fresh permutation)."""


@CHANGES.register("permute_actions", options=PermuteActionsOptions)
class PermuteActions(Change[np.ndarray]):
    """``permute_actions``: a seeded permutation of a ``Discrete`` action set.

    Task 0 is the identity; every change draws a fresh permutation, never the identity nor the
    previous one (:func:`fresh_permutation`; with 2 actions changes alternate between the swap
    and the identity); ``task_id`` counts changes. Agent action ``start + i`` runs env action
    ``start + perm[i]``.
    """

    name = "permute_actions"
    Options = PermuteActionsOptions

    def bind(self, env: gym.Env[Any, Any]) -> tuple[gym.Space[Any], gym.Space[Any]]:  # noqa: D102
        space = env.action_space
        if not isinstance(space, Discrete) or space.n < 2 or space.start < 0:
            raise ValueError(
                f"change 'permute_actions' needs a Discrete action space, n >= 2, start >= 0; got {space}"
            )
        self._n, self._start = int(space.n), int(space.start)
        return env.observation_space, space

    def first(self) -> np.ndarray:  # noqa: D102
        return np.arange(self._n, dtype=np.intp)

    def next(self, params: np.ndarray, rng: np.random.Generator) -> np.ndarray:  # noqa: D102
        return fresh_permutation(self._n, params, rng)  # never the identity or the previous one

    def activate(self, params: np.ndarray) -> Transforms:  # noqa: D102
        if np.array_equal(params, np.arange(self._n)):
            return Transforms()
        lut = tuple(range(self._start)) + tuple(self._start + int(p) for p in params)
        return Transforms(action_lut=lut)

    def to_state(self, params: np.ndarray) -> list[int]:  # noqa: D102
        return params.tolist()

    def from_state(self, data: Any) -> np.ndarray:  # noqa: D102
        return _perm_from_state("permute_actions", data, self._n)


@dataclass(frozen=True)
class RewardScaleOptions:
    """Options of ``reward_scale``."""

    scales: tuple[float, ...] = (1.0, -1.0)
    """Reward multipliers, one per task (at least two finite numbers); task 0 uses the first."""
    order: Literal["cycle", "random"] = "cycle"
    """``cycle`` through ``scales``, or draw each next one uniformly from the others (``random``)."""

    def __post_init__(self) -> None:
        values = _finite_numbers(self.scales)
        if values is None or len(values) < 2:
            raise ValueError(f"RewardScale.scales must be at least two finite numbers, got {self.scales!r}")
        _check_order("RewardScale", self.order)
        object.__setattr__(self, "scales", values)


class _ScaleList(Change[int]):
    """A kind whose tasks are the entries of ``self.scales``: the task is an index into it.

    Task 0 is ``scales[0]``; ``order`` ``cycle`` steps through the list, ``random`` draws each next
    index uniformly from the others (every change changes). ``task_id`` is the index.
    """

    scales: tuple[float, ...]
    order: str

    def first(self) -> int:  # noqa: D102
        return 0

    def next(self, params: int, rng: np.random.Generator) -> int:  # noqa: D102
        return _next_index(params, len(self.scales), self.order, rng)

    def task_id(self, params: int, num_changes: int) -> int:  # noqa: D102
        return params

    def to_state(self, params: int) -> int:  # noqa: D102
        return int(params)

    def from_state(self, data: Any) -> int:  # noqa: D102
        return _index_from_state(self.name, data, len(self.scales))


@CHANGES.register("reward_scale", options=RewardScaleOptions)
class RewardScale(_ScaleList):
    """``reward_scale``: rewards are multiplied by one of ``scales``; ``task_id`` is its index.

    Task 0 uses ``scales[0]``; ``order`` as in :class:`Switch`. The default ``(1.0, -1.0)``
    flips the reward's sign at every change.

    Args:
        scales: at least two finite numbers (:class:`RewardScaleOptions`).
        order: ``"cycle"`` or ``"random"``.
    """

    name = "reward_scale"
    Options = RewardScaleOptions

    def __init__(
        self, scales: Sequence[float] = (1.0, -1.0), order: Literal["cycle", "random"] = "cycle"
    ) -> None:
        options = RewardScaleOptions(scales=scales, order=order)  # type: ignore[arg-type]
        self.scales, self.order = options.scales, options.order

    def bind(self, env: gym.Env[Any, Any]) -> tuple[gym.Space[Any], gym.Space[Any]]:  # noqa: D102
        return env.observation_space, env.action_space

    def activate(self, params: int) -> Transforms:  # noqa: D102
        scale = self.scales[params]
        return Transforms(reward_scale=None if scale == 1.0 else scale)


# ----------------------------------------------------------------------------------------------
# obs_noise: the per-step observation hook.


@dataclass(frozen=True)
class ObsNoiseOptions:
    """Options of ``obs_noise``."""

    scales: tuple[float, ...] = (0.1,)
    """Noise standard deviations, one per task (finite, >= 0; 0 means no noise): task 0 adds
    N(0, scales[0]²) to every cell of every observation. One scale: the noise level never changes
    (a fresh noise sample every step all the same; useful as a part of a composed kind)."""
    order: Literal["cycle", "random"] = "cycle"
    """``cycle`` through ``scales``, or draw each next one uniformly from the others (``random``,
    which needs at least two scales)."""

    def __post_init__(self) -> None:
        values = _finite_numbers(self.scales)
        if values is None or not values or min(values) < 0:
            raise ValueError(f"ObsNoise.scales must be one or more finite numbers >= 0, got {self.scales!r}")
        _check_order("ObsNoise", self.order)
        if self.order == "random" and len(values) < 2:
            raise ValueError(f"ObsNoise.order 'random' needs at least two scales, got {values!r}")
        object.__setattr__(self, "scales", values)


@CHANGES.register("obs_noise", options=ObsNoiseOptions)
class ObsNoise(_ScaleList):
    """``obs_noise``: i.i.d. Gaussian noise N(0, scale²) added to every cell of every observation.

    Semantics: ``scales`` is a list of noise levels, one per task, visited like
    :class:`RewardScale`'s (``order``); ``task_id`` is the index of the active scale. With one
    scale (the default, 0.1) the level never changes and a change changes nothing; the noise
    itself is fresh on every observation either way. Typical uses: a noise level that steps up
    (``scales: [0.0, 0.1, 0.3]``) or stationary noise on top of another kind (a composition).

    The noise comes from the wrapper's observation generator (Note [Observation hooks] in
    :mod:`plasticrl.envs.nonstationary`), not the task generator: seeded from the wrapper's seed
    and the reset seed, so sub-envs of a vector env (reset with ``seed + i``) draw independent
    noise, and checkpointed, so a resumed run continues the same noise stream.

    Dtypes: the observation space must be a floating-point ``Box`` (float16/32/64). The noise is
    drawn in float32 for float32 observations and in float64 otherwise, added, and the sum is cast
    back to the observation's dtype, so the observation keeps its dtype. Integer and bool spaces
    (e.g. raw MinAtar frames, uint8 images) are refused: noise on them would either be rounded
    away or change the dtype the agent and its replay storage expect; convert them to float
    first (``plasticrl.envs.make`` gives MinAtar as float32 already). The observation space becomes
    unbounded, ``Box(-inf, inf)`` of the same shape and dtype, whenever some scale is positive
    (Gaussian noise has no bound); so, for instance, the DQN replay stores these observations as
    float32 rather than as bits.

    Args:
        scales: noise standard deviations (:class:`ObsNoiseOptions`).
        order: ``"cycle"`` or ``"random"``.
    """

    name = "obs_noise"
    Options = ObsNoiseOptions

    def __init__(self, scales: Sequence[float] = (0.1,), order: Literal["cycle", "random"] = "cycle") -> None:
        options = ObsNoiseOptions(scales=scales, order=order)  # type: ignore[arg-type]
        self.scales, self.order = options.scales, options.order

    def bind(self, env: gym.Env[Any, Any]) -> tuple[gym.Space[Any], gym.Space[Any]]:  # noqa: D102
        space = env.observation_space
        if not isinstance(space, Box) or not np.issubdtype(space.dtype, np.floating):
            raise ValueError(
                f"change 'obs_noise' needs a floating-point Box observation space, got {space}; "
                "convert integer or bool observations to float first"
            )
        self._scale = self.scales[0]
        self._draw = np.float32 if space.dtype == np.float32 else np.float64
        if max(self.scales) == 0.0:
            return space, env.action_space
        return Box(-np.inf, np.inf, space.shape, space.dtype), env.action_space  # type: ignore[arg-type]

    def activate(self, params: int) -> Transforms:  # noqa: D102
        self._scale = self.scales[params]
        return Transforms()

    def obs_hook(self, obs: Any, rng: np.random.Generator) -> Any:
        """``obs + scale · N(0, 1)`` in ``obs``'s dtype, a new array (``obs`` itself at scale 0)."""
        scale = self._scale
        if scale == 0.0:
            return obs
        noise = rng.standard_normal(obs.shape, dtype=self._draw)
        return (obs + scale * noise).astype(obs.dtype, copy=False)


# ----------------------------------------------------------------------------------------------
# dynamics: env parameters (gravity, friction, constructor kwargs) changed on the schedule.


def _numeric_value(value: object) -> np.ndarray | None:
    """``value`` as a float64 array when it is a finite number or a (nested) list of them, else None."""
    if isinstance(value, bool) or isinstance(value, str):
        return None
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if array.dtype != np.float64 or not np.all(np.isfinite(array)):
        return None
    if array.ndim and any(isinstance(v, bool) for v in np.asarray(value, dtype=object).ravel()):
        return None
    return array


@dataclass(frozen=True)
class DynamicsOptions:
    """Options of ``dynamics``."""

    params: Mapping[str, Any] = field(default_factory=dict)
    """Per env parameter, one value per task (every list of the same length, at least two):
    ``{g: [10.0, 4.0]}`` (Pendulum-v1's gravity), ``{model.opt.gravity: [[0, 0, -9.81], [0, 0,
    -4.9]]}`` (a MuJoCo model's), ``{forward_reward_weight: [1.0, -1.0]}`` (HalfCheetah-v5's
    kwarg, kept as ``_forward_reward_weight``). A name is an attribute path from the base env
    (``env.unwrapped``); its last part may drop the leading underscore the env keeps a constructor
    kwarg under. Values are numbers, or lists broadcast to the attribute's array shape. Required:
    the empty default is refused when the wrapper is built, with the env's numeric attributes."""
    mode: Literal["set", "scale"] = "set"
    """``set``: the attribute becomes the value; ``scale``: the env's own value (read when the
    wrapper is built) times the value, e.g. ``{model.geom_friction: [1.0, 0.5]}`` halves friction."""
    order: Literal["cycle", "random"] = "cycle"
    """``cycle`` through the values, or draw each next task uniformly from the others (``random``)."""

    def __post_init__(self) -> None:
        params = self.params
        if not isinstance(params, Mapping):
            raise ValueError(
                f"Dynamics.params must be a mapping {{parameter: [value per task, ...]}}, got {params!r}"
            )
        lengths: dict[str, int] = {}
        clean: dict[str, tuple[Any, ...]] = {}
        for name, values in params.items():
            if not isinstance(name, str) or not all(part.isidentifier() for part in name.split(".")):
                raise ValueError(
                    f"Dynamics.params: {name!r} is not an attribute path such as 'g' or 'model.opt.gravity'"
                )
            if isinstance(values, str) or not isinstance(values, Sequence) or len(values) < 2:
                raise ValueError(
                    f"Dynamics.params[{name!r}] must be a list of at least two values, got {values!r}"
                )
            for i, value in enumerate(values):
                if _numeric_value(value) is None:
                    raise ValueError(
                        f"Dynamics.params[{name!r}][{i}] must be a finite number or a list of them, "
                        f"got {value!r}"
                    )
            lengths[name] = len(values)
            clean[name] = tuple(_numeric_value(v).tolist() for v in values)  # type: ignore[union-attr]
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"Dynamics.params lists must have one value per task each, got lengths {lengths}"
            )
        if self.mode not in ("set", "scale"):
            raise ValueError(f"Dynamics.mode must be 'set' or 'scale', got {self.mode!r}")
        _check_order("Dynamics", self.order)
        object.__setattr__(self, "params", clean)


_KEY = "nonstationary.options.params (dynamics)"  # where the parameters of a dynamics change come from


def _numeric_attributes(obj: object) -> list[str]:
    """The names of ``obj``'s attributes that hold numbers or numeric arrays (for error messages)."""
    names = []
    for name, value in sorted(vars(obj).items()) if hasattr(obj, "__dict__") else ():
        if isinstance(value, int | float | np.ndarray) and not isinstance(value, bool):
            names.append(name.lstrip("_") if not hasattr(obj, name.lstrip("_")) else name)
    return names


@CHANGES.register("dynamics", options=DynamicsOptions)
class Dynamics(Change[int]):
    """``dynamics``: env parameters set to the values of the active task; ``task_id`` is its index.

    The tasks are the positions in ``params``' lists: task i sets every listed parameter to its
    i-th value (``mode="set"``) or to the env's own value times it (``mode="scale"``), on the base
    env (``env.unwrapped``), just before the reset that starts the task's first episode (with
    ``on: step``, at once: that episode is truncated first). ``order`` as in :class:`RewardScale`.
    The spaces never change. Typical uses, from the continual-control literature: gravity
    (Pendulum-v1 ``g``; a MuJoCo model's ``model.opt.gravity``), friction
    (``model.geom_friction`` with ``mode: scale``), body masses (``model.body_mass``), or reward
    weights a MuJoCo env takes as kwargs (HalfCheetah-v5 ``forward_reward_weight``: running
    backwards).

    Names: an attribute path from the base env, dots for nested attributes. The last part is
    looked up as written, then with a leading underscore (gymnasium's MuJoCo envs keep a
    constructor kwarg ``x`` as ``_x``). It must hold a number or a numeric array (a NumPy array
    is assigned in place, so a MuJoCo model sees the change; values broadcast to its shape). A
    name that does not resolve, or a value that does not fit, stops at construction with the
    env's numeric attributes listed.

    Checkpoints: the task index is the lifetime state; a wrapper unpickled mid-episode sets the
    active task's values again (gymnasium's MuJoCo envs pickle as their constructor arguments, so
    an unpickled model would otherwise be back at its XML values).

    Args:
        params: ``{name: [value per task, ...]}`` (:class:`DynamicsOptions`).
        mode: ``"set"`` or ``"scale"``.
        order: ``"cycle"`` or ``"random"``.
    """

    name = "dynamics"
    Options = DynamicsOptions
    _active: int | None = None  # the task whose values the env holds (re-applied on unpickling)

    def __init__(
        self,
        params: Mapping[str, Sequence[Any]] | None = None,
        mode: Literal["set", "scale"] = "set",
        order: Literal["cycle", "random"] = "cycle",
    ) -> None:
        options = DynamicsOptions(params=params or {}, mode=mode, order=order)
        self.params, self.mode, self.order = options.params, options.mode, options.order
        self._count = len(next(iter(self.params.values()))) if self.params else 0

    def bind(self, env: gym.Env[Any, Any]) -> tuple[gym.Space[Any], gym.Space[Any]]:  # noqa: D102
        self._base = env.unwrapped
        self._attrs: dict[str, tuple[tuple[str, ...], str]] = {}
        self._own: dict[str, Any] = {}  # the env's values at bind: task values scale these
        label = getattr(getattr(self._base, "spec", None), "id", None) or type(self._base).__name__
        if not self.params:
            raise ValueError(
                f"{_KEY}: no parameters given; list at least one with a "
                f"value per task, e.g. {{g: [10.0, 4.0]}} for Pendulum-v1; numeric attributes of {label}: "
                f"{_numeric_attributes(self._base)}"
            )
        for name, values in self.params.items():
            *path, last = name.split(".")
            owner: Any = self._base
            for i, part in enumerate(path):
                if not hasattr(owner, part):
                    where = ".".join(path[:i]) or "the env"
                    raise ValueError(
                        f"{_KEY}: {label} has no {name!r} ({where} has no attribute {part!r}); "
                        f"numeric attributes of {where}: {_numeric_attributes(owner)}"
                    )
                owner = getattr(owner, part)
            attr = last if hasattr(owner, last) else f"_{last}" if hasattr(owner, f"_{last}") else None
            if attr is None:
                where = ".".join(path) or "the env"
                raise ValueError(
                    f"{_KEY}: {label} has no parameter {name!r}; numeric attributes of {where}: "
                    f"{_numeric_attributes(owner)}"
                )
            current = getattr(owner, attr)
            if isinstance(current, bool) or not isinstance(current, int | float | np.ndarray | np.number):
                raise ValueError(
                    f"{_KEY}: {label}.{name} is a {type(current).__name__}, "
                    "not a number or a numeric array; only those can change"
                )
            for i, value in enumerate(values):
                array = np.asarray(value, dtype=np.float64)
                if isinstance(current, np.ndarray):
                    try:
                        fits = np.broadcast_shapes(array.shape, current.shape) == current.shape
                    except ValueError:
                        fits = False
                    if not fits:
                        raise ValueError(
                            f"nonstationary.options.params[{name!r}][{i}] (dynamics): "
                            f"{value!r} does not broadcast to {label}.{name}'s "
                            f"shape {current.shape}"
                        )
                elif array.ndim:
                    raise ValueError(
                        f"nonstationary.options.params[{name!r}][{i}] (dynamics): "
                        f"{label}.{name} is a number, got {value!r}"
                    )
            self._attrs[name] = (tuple(path), attr)
            self._own[name] = (
                np.array(current, dtype=np.float64) if isinstance(current, np.ndarray) else current
            )
        return env.observation_space, env.action_space

    def first(self) -> int:  # noqa: D102
        return 0

    def next(self, params: int, rng: np.random.Generator) -> int:  # noqa: D102
        return _next_index(params, self._count, self.order, rng)

    def task_id(self, params: int, num_changes: int) -> int:  # noqa: D102
        return params

    def activate(self, params: int) -> Transforms:  # noqa: D102
        self._apply(params)
        return Transforms()

    def value(self, name: str, task: int) -> Any:
        """What task ``task`` sets parameter ``name`` to: a float or a float64 array."""
        value = np.asarray(self.params[name][task], dtype=np.float64)
        own = self._own[name]
        if self.mode == "scale":
            value = own * value
        if isinstance(own, np.ndarray):
            return np.broadcast_to(value, own.shape)
        return float(value)

    def _apply(self, task: int) -> None:
        for name, (path, attr) in self._attrs.items():
            owner: Any = self._base
            for part in path:
                owner = getattr(owner, part)
            value = self.value(name, task)
            current = getattr(owner, attr)
            if isinstance(current, np.ndarray):
                current[...] = value  # in place: a MuJoCo model's arrays are views of its memory
            else:
                setattr(owner, attr, value)
        self._active = task

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle, then set the active task's values again on the (unpickled) env."""
        self.__dict__.update(state)
        if self._active is not None and "_base" in state:
            self._apply(self._active)

    def to_state(self, params: int) -> int:  # noqa: D102
        return int(params)

    def from_state(self, data: Any) -> int:  # noqa: D102
        return _index_from_state("dynamics", data, self._count)


# ----------------------------------------------------------------------------------------------
# Composition: several kinds at every change.


class Compose(Change[tuple[Any, ...]]):
    """Several change kinds at once: every change changes every part (a game *and* a permutation).

    ``Compose([Switch("shuffle"), PermuteObs("channels")])`` cycles through the games of a
    :class:`TaskSet` in a reshuffled order every cycle and draws a fresh channel permutation of
    the padded observation at every change, so every (game, cycle) pair gets its own permutation
    (the first task, game 0 of cycle 0, the identity, as ``permute_obs``'s task 0 always is).

    Parts are layered in order, the first innermost: part ``i`` binds to the spaces part ``i-1``
    presents, observations pass the parts' ``obs_index`` in order, then their observation hooks in
    order; an agent action passes the last part's action table first; reward scales multiply.
    At a change each part draws its next parameters from the task generator, in part order.
    ``task_id`` counts changes: with a fresh permutation every task is a new one. The parts'
    options are their own (a config spells a composition ``kind: [switch, permute_obs]`` with
    ``options: {switch: {...}, permute_obs: {...}}``: :func:`plasticrl.envs.make.make_change`).

    Args:
        parts: two or more change kinds; at most one ``switch``.

    Raises:
        ValueError: fewer than two parts, a part that is not a :class:`Change`, a composition
            inside a composition, or two parts that select tasks.
    """

    name = "compose"

    def __init__(self, parts: Sequence[Change[Any]]) -> None:
        if isinstance(parts, str) or not isinstance(parts, Sequence) or len(parts) < 2:
            raise ValueError(f"Compose needs a sequence of at least two change kinds, got {parts!r}")
        for part in parts:
            if not isinstance(part, Change) or isinstance(part, Compose):
                raise ValueError(f"Compose parts must be change kinds (not compositions), got {part!r}")
        if sum(isinstance(p, Switch) for p in parts) > 1:
            raise ValueError(f"Compose takes at most one switch part, got {list(parts)!r}")
        self.parts: tuple[Change[Any], ...] = tuple(parts)

    def __repr__(self) -> str:
        return f"Compose([{', '.join(repr(p) for p in self.parts)}])"

    @property
    def options(self) -> Any:
        """The parts' options, in order."""
        return tuple(p.options for p in self.parts)

    def bind(self, env: gym.Env[Any, Any]) -> tuple[gym.Space[Any], gym.Space[Any]]:  # noqa: D102
        # The wrapper copied this object shallowly: bind copies of the parts, not the shared ones.
        self.parts = tuple(copy.copy(p) for p in self.parts)
        below: gym.Env[Any, Any] = env
        for part in self.parts:
            spaces = part.bind(below)
            below = gym.Wrapper(env)  # what the next part sees: env with this part's spaces
            below.observation_space, below.action_space = spaces
        self._hooked = tuple(p for p in self.parts if p.has_obs_hook)
        return spaces

    def first(self) -> tuple[Any, ...]:  # noqa: D102
        return tuple(p.first() for p in self.parts)

    def first_draw(self, rng: np.random.Generator) -> tuple[Any, ...]:  # noqa: D102
        return tuple(p.first_draw(rng) for p in self.parts)

    def next(self, params: tuple[Any, ...], rng: np.random.Generator) -> tuple[Any, ...]:  # noqa: D102
        return tuple(p.next(q, rng) for p, q in zip(self.parts, params, strict=True))

    def activate(self, params: tuple[Any, ...]) -> Transforms:  # noqa: D102
        index: np.ndarray | None = None
        lut: tuple[int, ...] | None = None
        scale: float | None = None
        env_step: Callable[[Any], StepResult] | None = None
        for part, q in zip(self.parts, params, strict=True):
            t = part.activate(q)
            if t.obs_index is not None:  # obs.take(a).take(b) == obs.take(a.take(b))
                index = t.obs_index if index is None else index.take(t.obs_index)
            if t.action_lut is not None:  # the outer table first: a -> lut[outer[a]]
                lut = t.action_lut if lut is None else tuple(lut[b] for b in t.action_lut)
            if t.reward_scale is not None:
                scale = t.reward_scale if scale is None else scale * t.reward_scale
            env_step = env_step or t.env_step  # only a first-part switch offers one
        return Transforms(index, lut, scale, env_step)

    @property
    def has_obs_hook(self) -> bool:  # noqa: D102
        return any(p.has_obs_hook for p in self.parts)

    def obs_hook(self, obs: Any, rng: np.random.Generator) -> Any:
        """The parts' hooks, in part order."""
        for part in self._hooked:
            obs = part.obs_hook(obs, rng)
        return obs

    def to_state(self, params: tuple[Any, ...]) -> list[list[Any]]:  # noqa: D102
        return [[p.name, p.to_state(q)] for p, q in zip(self.parts, params, strict=True)]

    def from_state(self, data: Any) -> tuple[Any, ...]:  # noqa: D102
        names = [p.name for p in self.parts]
        if (
            not isinstance(data, list)
            or len(data) != len(names)
            or any(not isinstance(d, list) or len(d) != 2 for d in data)
            or [d[0] for d in data] != names
        ):
            raise ValueError(
                f"compose state must be [[name, state], ...] for parts {names}, got {data!r:.80}"
            )
        return tuple(p.from_state(d[1]) for p, d in zip(self.parts, data, strict=True))
