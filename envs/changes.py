"""Change kinds: what a task change of :class:`plasticrl.envs.nonstationary.NonStationary` does.

Contains:
    Change: the base class of change kinds.
    Transforms: what the wrapper does on every step for the active task.
    Switch: ``switch`` — move to another task of a :class:`~plasticrl.envs.tasks.TaskSet`.
    PermuteObs: ``permute_obs`` — a seeded permutation of the observation (all / spatial / channels).
    PermuteActions: ``permute_actions`` — a seeded permutation of a discrete action set.
    RewardScale: ``reward_scale`` — multiply rewards by one of a list of scales (e.g. a sign flip).
    CHANGES: the registry of change kinds, ``CHANGES.get(name)(**options)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Generic, Literal, NamedTuple, TypeVar

import gymnasium as gym
import numpy as np
from gymnasium.spaces import Box, Discrete
from plasticrl.envs.tasks import StepResult, TaskSet
from plasticrl.plasticity.registry import Registry

__all__ = ["Change", "Transforms", "Switch", "PermuteObs", "PermuteActions", "RewardScale", "CHANGES"]

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
    """

    name: ClassVar[str] = ""

    def bind(self, env: gym.Env[Any, Any]) -> tuple[gym.Space[Any], gym.Space[Any]]:
        """Check ``env`` and return the wrapper's (observation_space, action_space), fixed for life.

        Raises:
            ValueError: ``env``'s spaces are not supported by this change kind.
        """
        raise NotImplementedError

    def first(self) -> P:
        """Return the parameters of the initial task (task 0)."""
        raise NotImplementedError

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


def _perm_from_state(kind: str, data: Any, size: int) -> np.ndarray:
    perm = np.asarray(data)
    is_perm = perm.shape == (size,) and perm.dtype.kind in "iu"
    if not is_perm or not np.array_equal(np.sort(perm), np.arange(size)):
        raise ValueError(f"{kind} state must be a permutation of range({size}), got {data!r:.80}")
    return perm.astype(np.intp)


@CHANGES.register("switch")
class Switch(Change[int]):
    """``switch``: move to another task of the wrapped :class:`TaskSet`; ``task_id`` is its index.

    The first task is ``tasks[0]``. ``order="cycle"`` visits ``0, 1, ..., k-1, 0, ...``;
    ``order="random"`` draws each next task uniformly from the *other* tasks.

    Args:
        order: ``"cycle"`` or ``"random"``.
    """

    name = "switch"

    def __init__(self, order: Literal["cycle", "random"] = "cycle") -> None:
        _check_order("Switch", order)
        self.order = order

    def __repr__(self) -> str:
        return f"Switch(order={self.order!r})"

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

    def first(self) -> int:  # noqa: D102
        return 0

    def next(self, params: int, rng: np.random.Generator) -> int:  # noqa: D102
        return _next_index(params, self._count, self.order, rng)

    def task_id(self, params: int, num_changes: int) -> int:  # noqa: D102
        return params

    def activate(self, params: int) -> Transforms:  # noqa: D102
        self._taskset.select(params)
        return Transforms(env_step=self._taskset.active_step() if self._direct else None)

    def to_state(self, params: int) -> int:  # noqa: D102
        return int(params)

    def from_state(self, data: Any) -> int:  # noqa: D102
        return _index_from_state("switch", data, self._count)


# ----------------------------------------------------------------------------------------------
# Permutations and reward scales: the cheap non-stationarities within one env.


@CHANGES.register("permute_obs")
class PermuteObs(Change[np.ndarray]):
    """``permute_obs``: a seeded permutation of the observation, fixed until the next change.

    Task 0 is the identity; every change draws a fresh permutation. ``task_id`` counts changes.
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
        mode: ``"all"``, ``"spatial"`` or ``"channels"``.
        layout: ``"chw"`` or ``"hwc"``; used by ``spatial`` and ``channels``.
    """

    name = "permute_obs"

    def __init__(
        self, mode: Literal["all", "spatial", "channels"] = "all", layout: Literal["chw", "hwc"] = "chw"
    ) -> None:
        if mode not in ("all", "spatial", "channels"):
            raise ValueError(f"PermuteObs.mode must be 'all', 'spatial' or 'channels', got {mode!r}")
        if layout not in ("chw", "hwc"):
            raise ValueError(f"PermuteObs.layout must be 'chw' or 'hwc', got {layout!r}")
        self.mode, self.layout = mode, layout

    def __repr__(self) -> str:
        return f"PermuteObs(mode={self.mode!r}, layout={self.layout!r})"

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

    def next(self, params: np.ndarray, rng: np.random.Generator) -> np.ndarray:  # noqa: D102
        return rng.permutation(self._size).astype(np.intp)

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


@CHANGES.register("permute_actions")
class PermuteActions(Change[np.ndarray]):
    """``permute_actions``: a seeded permutation of a ``Discrete`` action set.

    Task 0 is the identity; every change draws a fresh permutation; ``task_id`` counts changes.
    Agent action ``start + i`` runs env action ``start + perm[i]``.
    """

    name = "permute_actions"

    def __repr__(self) -> str:
        return "PermuteActions()"

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
        return rng.permutation(self._n).astype(np.intp)

    def activate(self, params: np.ndarray) -> Transforms:  # noqa: D102
        if np.array_equal(params, np.arange(self._n)):
            return Transforms()
        lut = tuple(range(self._start)) + tuple(self._start + int(p) for p in params)
        return Transforms(action_lut=lut)

    def to_state(self, params: np.ndarray) -> list[int]:  # noqa: D102
        return params.tolist()

    def from_state(self, data: Any) -> np.ndarray:  # noqa: D102
        return _perm_from_state("permute_actions", data, self._n)


@CHANGES.register("reward_scale")
class RewardScale(Change[int]):
    """``reward_scale``: rewards are multiplied by one of ``scales``; ``task_id`` is its index.

    Task 0 uses ``scales[0]``; ``order`` as in :class:`Switch`. The default ``(1.0, -1.0)``
    flips the reward's sign at every change.

    Args:
        scales: at least two finite numbers.
        order: ``"cycle"`` or ``"random"``.
    """

    name = "reward_scale"

    def __init__(
        self, scales: Sequence[float] = (1.0, -1.0), order: Literal["cycle", "random"] = "cycle"
    ) -> None:
        values = tuple(scales) if isinstance(scales, Sequence) and not isinstance(scales, str) else ()
        if len(values) < 2 or not all(
            isinstance(s, int | float) and not isinstance(s, bool) and np.isfinite(s) for s in values
        ):
            raise ValueError(f"RewardScale.scales must be at least two finite numbers, got {scales!r}")
        _check_order("RewardScale", order)
        self.scales, self.order = tuple(float(s) for s in values), order

    def __repr__(self) -> str:
        return f"RewardScale(scales={self.scales!r}, order={self.order!r})"

    def bind(self, env: gym.Env[Any, Any]) -> tuple[gym.Space[Any], gym.Space[Any]]:  # noqa: D102
        return env.observation_space, env.action_space

    def first(self) -> int:  # noqa: D102
        return 0

    def next(self, params: int, rng: np.random.Generator) -> int:  # noqa: D102
        return _next_index(params, len(self.scales), self.order, rng)

    def task_id(self, params: int, num_changes: int) -> int:  # noqa: D102
        return params

    def activate(self, params: int) -> Transforms:  # noqa: D102
        scale = self.scales[params]
        return Transforms(reward_scale=None if scale == 1.0 else scale)

    def to_state(self, params: int) -> int:  # noqa: D102
        return int(params)

    def from_state(self, data: Any) -> int:  # noqa: D102
        return _index_from_state("reward_scale", data, len(self.scales))
