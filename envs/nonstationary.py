"""Non-stationary environments: a wrapper that changes the task on a schedule, and what it changes.

Contains:
    NonStationary: the wrapper; owns the lifetime clock, the task generator and the change state.
    Change: the base class of change kinds (what a task change does).
    Switch: ``switch`` — move to another task of a :class:`TaskSet`, cyclically or at random.
    PermuteObs: ``permute_obs`` — a seeded permutation of the observation (all / spatial / channels).
    PermuteActions: ``permute_actions`` — a seeded permutation of a discrete action set.
    RewardScale: ``reward_scale`` — multiply rewards by one of a list of scales (e.g. a sign flip).
    CHANGES: the registry of change kinds, ``CHANGES.get(name)(**options)``.
    TaskSet: an env presenting several tasks behind one padded observation space and one action set.
    ObservationGather: the protocol of an env that folds a rearrangement or zero-padding of its
        observation into a copy it makes anyway (``plasticrl.envs.make.MinAtarObservation``); see
        Note [Folded observation gather]. ``supports_gather``, ``gather`` (the reference meaning),
        ``gathered_space`` and ``check_gather_index`` go with it.

The schedules (when a change happens) live in :mod:`plasticrl.envs.schedules`.

Note [Lifetime clock]
    ``NonStationary`` counts lifetime steps: every ``step()`` adds ``clock_scale``, and nothing ever
    resets the count. In a vector env of ``n`` sub-envs each sub-env gets its own wrapper with
    ``clock_scale=n``; since a vector step steps every sub-env once, every wrapper's clock equals
    the global step (``n`` × vector steps) after every vector step. Gymnasium's default
    ``AutoresetMode.NEXT_STEP`` replaces the step of a finished sub-env by a ``reset()``; pass
    ``autoreset_mode=NEXT_STEP`` so that such a reset (one that follows a terminated or truncated
    step) advances the clock like the step it replaces. With ``SAME_STEP`` (what
    ``plasticrl.envs.vector.make_vector_env`` builds) or ``DISABLED`` every sub-env is stepped on every vector
    step and resets never count.

Note [Task randomness]
    Every random choice about tasks (permutations, random task order, random intervals) is drawn
    from one generator owned by the wrapper, ``np.random.default_rng([seed, _TASK_SEED_SALT])``.
    It is deliberately *not* the env's ``np_random``: that one is reseeded by ``reset(seed=...)``
    and differs between sub-envs (a vector env seeds sub-env ``i`` with ``seed + i``), whereas the
    task sequence must survive resets and be the same in every sub-env. The salt keeps the task
    stream apart from an env seeded with the same run seed. Pass the run seed as ``seed``; if it is
    None the first ``reset(seed=s)`` seeds the generator with ``s`` (later reset seeds are ignored,
    and a first reset without a seed draws fresh OS entropy).

Note [Changes at episode boundaries]
    A change becomes *due* at the step the schedule names, in every sub-env at the same global
    step, and the new task's parameters are drawn then (so every sub-env draws the same numbers in
    the same order). It becomes *active* at the start of an episode: with ``on="episode"`` at each
    sub-env's next ``reset()``, so every episode is a proper MDP; with ``on="step"`` the step at
    which it becomes due is returned with ``truncated=True`` (the old task's observation), stepping
    again without ``reset()`` raises ``ResetNeeded``, and the next ``reset()`` starts the new task.
    Several changes due within one episode are applied as the last of them.

Note [Task announcements]
    The wrapper says which task runs only when that is news. ``info["task_id"]`` (int) and
    ``info["task_switched"]`` (bool) come with a ``reset()`` that starts a task other than the
    previous episode's (``task_switched=True``) and with the first ``reset()`` of the wrapper's life
    and the first after ``set_state()`` (``task_switched`` as the saved state implies); other reset
    infos carry no task keys. ``step()`` infos carry none either, with one exception: the first
    step after the first reset (and after ``set_state()``) repeats ``task_id``, for callers that
    drop the info of their explicit reset (plasticrl's loops do: ``obs, _ = envs.reset()``). A task
    changes only at a reset, so the last announced ``task_id`` is the task of every later step
    until the next announcement (``NonStationary.task_id`` has it too). The reason is cost: in a
    ``SyncVectorEnv`` every info key costs about 1 µs per sub-env step, and a MinAtar episode under
    a random policy lasts about 11 steps, so even keys on every reset cost several per cent.
    Under same-step autoreset (what ``plasticrl.envs.vector.make_vector_env`` builds) a sub-env's reset info
    arrives in the infos of the step that ended its episode, masked by ``_task_id``;
    ``infos["final_info"]`` holds the ending step's own info (so the finished episode ran the task
    announced before, except that a first step's repetition is there). ``plasticrl.trainers.session.
    EpisodeStats`` tracks every sub-env's task that way.

Note [Step fast path]
    A step that needs no work of its own (no action table, no generic observation gather, no
    reward scale, no pending reset, no ``NEXT_STEP`` clock ticks: ``_direct``) costs the wrapper one
    call into the env below, one clock addition and one integer comparison with ``_next_event``:
    the lifetime step of the next scheduled change, or 0 while a step announcement is pending
    (Note [Task announcements]). Everything else happens on the rare step that reaches
    ``_next_event``. The call goes straight to ``_forward``, which for ``switch`` over a ``TaskSet``
    directly under the wrapper is the active task's own ``step`` (``TaskSet.active_step``),
    skipping the ``TaskSet`` layer when the task needs no padding or action wrapping of its own.
    Likewise a reset that starts the same task as the last episode, with nothing to announce or
    count (``_quiet_reset``), only forwards. ``_refresh`` decides both flags after every rare event.

Note [Folded observation gather]
    Converting a MinAtar frame to channel-first float32 copies every cell anyway. Copying them in
    another order (a permutation: one indexed gather) costs about 0.19 µs more than the plain
    conversion; zero-padding costs only the larger array (``plasticrl.envs.make.MinAtarObservation``
    converts through a channel-first buffer whose extra channels stay zero: about 0.1 µs for
    Breakout's 4 channels padded to 10). Either costs far less than doing it in a layer of its own
    would: a second per-step copy and a call frame on top of the conversion. An env with a
    ``set_observation_gather(index)`` method (protocol :class:`ObservationGather`) lets the env
    *directly above it* install such a gather: from the next observation on it returns
    ``gather(native, index)``, where ``native`` is what it returns without a gather and ``index`` is
    an integer array of the output's shape whose entries pick flat cells of ``native``, the value
    ``native.size`` standing for a cell that is always 0 (:func:`gather` is the reference
    definition; ``None`` removes the gather). The env's ``observation_space`` becomes
    :func:`gathered_space` (the bounds gathered likewise); the wrapper that installed the gather
    presents its own space, as before. A gather is plain state of the env, so it pickles with it.
    Users: ``NonStationary`` installs ``permute_obs`` permutations (at each activation, in place of
    its own per-step ``obs.take``), ``TaskSet`` installs each task's zero-padding once (in place of
    its per-step padded copy). An env without the method gets those generic numpy paths, with
    identical observations.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, Literal, NamedTuple, Protocol, SupportsFloat, TypeVar

import gymnasium as gym
import numpy as np
from gymnasium.core import ActType, ObsType
from gymnasium.error import ResetNeeded
from gymnasium.spaces import Box, Discrete
from gymnasium.vector import AutoresetMode
from plasticrl.envs.schedules import Schedule
from plasticrl.plasticity.registry import Registry

__all__ = [
    "NonStationary",
    "Change",
    "Switch",
    "PermuteObs",
    "PermuteActions",
    "RewardScale",
    "CHANGES",
    "TaskSet",
    "Transforms",
    "ObservationGather",
    "supports_gather",
    "gather",
    "gathered_space",
    "check_gather_index",
]

P = TypeVar("P")  # the parameters of one task, as a change kind represents them

_TASK_SEED_SALT = 0x7A5C  # Note [Task randomness]
_NEVER = sys.maxsize  # next-change sentinel once a schedule is exhausted
_STATE_FORMAT = 1

CHANGES: Registry[type[Change[Any]]] = Registry("change kind")


StepResult = tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]
"""What ``Env.step`` returns: (observation, reward, terminated, truncated, info)."""


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


class ObservationGather(Protocol):
    """An env that can rearrange and zero-pad its observation within a copy it makes anyway.

    See Note [Folded observation gather]; implemented by ``plasticrl.envs.make.MinAtarObservation``.
    """

    def set_observation_gather(self, index: np.ndarray | None) -> None:
        """From the next observation on, return ``gather(native, index)``; None returns ``native``.

        The env's ``observation_space`` becomes ``gathered_space(native_space, index)``.

        Args:
            index: integers in ``[0, native.size]`` with the gathered observation's shape (checked
                with :func:`check_gather_index`), or None.

        Raises:
            ValueError: ``index`` is not such an array.
        """
        ...


def supports_gather(env: gym.Env[Any, Any]) -> bool:
    """Whether ``env`` itself (not an env it wraps) implements :class:`ObservationGather`."""
    return callable(getattr(type(env), "set_observation_gather", None))


def gather(observation: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The reference meaning of a gather: the flat cells of ``observation`` that ``index`` picks.

    ``index`` has the result's shape; the value ``observation.size`` picks a cell that is 0.

    Example:
        >>> gather(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([3, 0, 4])).tolist()
        [4.0, 1.0, 0.0]
    """
    flat = observation.reshape(-1)
    return np.concatenate((flat, np.zeros(1, flat.dtype))).take(index)


def gathered_space(space: Box, index: np.ndarray) -> Box:
    """The space of ``gather(obs, index)`` for ``obs`` in ``space``: its bounds gathered likewise."""
    low, high = gather(space.low, index), gather(space.high, index)
    return Box(low, high, low.shape, space.dtype)  # type: ignore[arg-type]


def check_gather_index(index: Any, size: int) -> np.ndarray:
    """Return ``index`` as an ``intp`` array after checking it gathers from ``size`` cells (and 0).

    Raises:
        ValueError: ``index`` is not an integer array with entries in ``[0, size]``.
    """
    array = np.asarray(index)
    if array.dtype.kind not in "iu" or array.size == 0 or array.min() < 0 or array.max() > size:
        raise ValueError(
            f"an observation gather index must be a non-empty integer array with entries in "
            f"[0, {size}] ({size} picks a zero cell), got {index!r:.80}"
        )
    return array.astype(np.intp)


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


# ----------------------------------------------------------------------------------------------
# Task sets and the ``switch`` kind.


def _region(shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The slice of a padded array that an observation of ``shape`` fills (the leading corner)."""
    return tuple(slice(0, d) for d in shape)


class TaskSet(gym.Env[np.ndarray, int]):
    """Several tasks behind one padded observation space and the largest action set; one is active.

    Observations: every task has a ``Box`` space of the same ``ndim`` and ``dtype``; an observation
    is zero-padded at the end of each dimension up to the per-dimension maximum (MinAtar in
    channel-first form: channels padded to the game with the most, e.g. Breakout's 4 of (6, 10, 10)
    with Space Invaders). The padded space's bounds are the elementwise min/max over tasks, with 0
    included where a task pads.

    Actions: every task has a ``Discrete`` space with the same ``start``; the set has the largest
    ``n``. See Note [Extra actions] for an action a task does not have.

    Seeding: ``reset(seed=s)`` seeds this env's ``np_random``, which draws one seed per task; each
    task uses its seed at its next reset, so one seed fixes every task whatever order they are
    visited in.

    ``select(i)`` makes task ``i`` active; the next call must be ``reset()``. :class:`Switch` calls
    it at episode boundaries. No vector version exists; vectorise the wrapped env instead.

    A task that implements :class:`ObservationGather` (MinAtar from ``plasticrl.envs.make``) pads its own
    observation: the set installs the padding in it once, at construction (Note [Folded
    observation gather]); the set owns its tasks from then on. Other tasks are padded here.

    Note [Extra actions]
        On a task with ``n`` actions, action ``a`` runs ``start + (a - start) % n``. Wrapping keeps
        every action meaningful without assuming that some action is a no-op (true of MinAtar's
        and the ALE's action 0, false of e.g. CartPole's). MinAtar's full action sets (``-v0``) all
        have 6 actions, so nothing is wrapped there.

    Example:
        >>> env = TaskSet(["CartPole-v1", "Acrobot-v1"])
        >>> env.observation_space.shape, env.action_space
        ((6,), Discrete(3))
        >>> obs, _ = env.reset(seed=0)
        >>> obs[4:].tolist()  # CartPole has 4 observations; the rest is padding
        [0.0, 0.0]
        >>> env.select(1)
        >>> env.reset()[0].shape
        (6,)

    Change logs:
     * v0.1.0 - Initially added
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        tasks: Sequence[str | Callable[[], gym.Env[Any, Any]]],
        make_task: Callable[[str], gym.Env[Any, Any]] = gym.make,
    ) -> None:
        """Build every task now; spaces are fixed from here on.

        Args:
            tasks: gymnasium ids (built with ``make_task``) or zero-argument env factories.
            make_task: builds an env from an id, e.g. the trainer's builder that converts MinAtar
                to channel-first float32; default ``gymnasium.make``.

        Raises:
            ValueError: no tasks, a factory that does not return a ``gym.Env``, or spaces that
                cannot be padded to a common one (not ``Box``/``Discrete``, different ``ndim``,
                ``dtype`` or ``start``).
        """
        if isinstance(tasks, str) or not isinstance(tasks, Sequence) or len(tasks) == 0:
            raise ValueError(f"TaskSet needs a non-empty sequence of ids or env factories, got {tasks!r}")
        envs: list[gym.Env[Any, Any]] = []
        for task in tasks:
            env = make_task(task) if isinstance(task, str) else task()
            if not isinstance(env, gym.Env):
                raise ValueError(f"task {task!r} built {env!r}, not a gymnasium.Env")
            envs.append(env)
        self.tasks: list[gym.Env[Any, Any]] = envs
        self.names: list[str] = [t if isinstance(t, str) else getattr(t, "__name__", repr(t)) for t in tasks]
        self.observation_space = self._padded_box([e.observation_space for e in envs])
        self.action_space = self._largest_discrete([e.action_space for e in envs])

        shape, start = self.observation_space.shape, self.action_space.start
        # Per task: the slice its observation fills (None when it needs no padding) and its
        # action table (None when it has every action).
        self._pads = [
            None if e.observation_space.shape == shape else _region(e.observation_space.shape) for e in envs
        ]
        self._luts = [
            None
            if e.action_space.n == self.action_space.n
            else tuple(range(start))
            + tuple(
                int(start + (a - start) % e.action_space.n) for a in range(start, start + self.action_space.n)
            )
            for e in envs
        ]
        for i, env in enumerate(envs):
            if self._pads[i] is not None and supports_gather(env):
                # The padded cells that this task fills, in order; the rest pick the zero cell.
                size = int(np.prod(env.observation_space.shape))
                index = np.full(shape, size, np.intp)
                index[self._pads[i]] = np.arange(size).reshape(env.observation_space.shape)
                env.set_observation_gather(index)  # type: ignore[attr-defined]
                self._pads[i] = None
        self._blank = np.zeros(shape, self.observation_space.dtype)
        self._task_seeds: list[int | None] = [None] * len(envs)  # consumed at each task's next reset
        self.index = 0  # the active task
        self._env, self._pad, self._lut = envs[0], self._pads[0], self._luts[0]
        self._needs_reset = True

    def _padded_box(self, spaces: list[gym.Space[Any]]) -> Box:
        if not all(isinstance(s, Box) for s in spaces):
            raise ValueError(f"TaskSet pads Box observation spaces only, got {self._listing(spaces)}")
        boxes: list[Box] = spaces  # type: ignore[assignment]
        if len({len(b.shape) for b in boxes}) > 1 or len({b.dtype for b in boxes}) > 1:
            raise ValueError(
                f"TaskSet needs observation spaces of one ndim and dtype, got {self._listing(spaces)}"
            )
        shape = tuple(int(d) for d in np.max([b.shape for b in boxes], axis=0))
        low = np.full(shape, np.inf)
        high = np.full(shape, -np.inf)
        for b in boxes:
            region = _region(b.shape)
            # Cells a task pads hold 0 under that task, so the bounds must admit 0 there.
            pad_low, pad_high = np.zeros(shape), np.zeros(shape)
            pad_low[region], pad_high[region] = b.low, b.high
            low, high = np.minimum(low, pad_low), np.maximum(high, pad_high)
        dtype = boxes[0].dtype
        return Box(low.astype(dtype), high.astype(dtype), shape, dtype)  # type: ignore[arg-type]

    def _largest_discrete(self, spaces: list[gym.Space[Any]]) -> Discrete:
        if not all(isinstance(s, Discrete) for s in spaces):
            raise ValueError(f"TaskSet needs Discrete action spaces, got {self._listing(spaces)}")
        starts = {int(s.start) for s in spaces}  # type: ignore[attr-defined]
        if len(starts) > 1 or min(starts) < 0:
            raise ValueError(
                f"TaskSet needs Discrete action spaces with one start >= 0, got {self._listing(spaces)}"
            )
        return Discrete(max(int(s.n) for s in spaces), start=starts.pop())  # type: ignore[attr-defined]

    def _listing(self, spaces: list[gym.Space[Any]]) -> str:
        return ", ".join(f"{n}: {s}" for n, s in zip(self.names, spaces, strict=True))

    def select(self, index: int) -> None:
        """Make task ``index`` the active one; the next call must be ``reset()``."""
        if not 0 <= index < len(self.tasks):
            raise ValueError(f"task index must be in [0, {len(self.tasks)}), got {index!r}")
        self.index = int(index)
        self._env, self._pad, self._lut = self.tasks[index], self._pads[index], self._luts[index]
        self._needs_reset = True

    def active_step(self) -> Callable[[int], StepResult]:
        """What steps the active task exactly as :meth:`step` does, with the least indirection.

        The task's own ``step`` when the task needs neither padding here nor action wrapping,
        else :meth:`step`. Valid until the next :meth:`select`; ``reset()`` first, as for ``step``.
        """
        return self._env.step if self._pad is None and self._lut is None else self.step

    def _padded(self, obs: np.ndarray) -> np.ndarray:
        out = self._blank.copy()  # copying a zero template is faster than np.zeros for small arrays
        out[self._pad] = obs
        return out

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset the active task (seeding every task when ``seed`` is given) and pad its observation."""
        if seed is not None:
            super().reset(seed=seed)
            self._task_seeds = [int(s) for s in self.np_random.integers(2**31 - 1, size=len(self.tasks))]
        task_seed, self._task_seeds[self.index] = self._task_seeds[self.index], None
        obs, info = self._env.reset(seed=task_seed, options=options)
        self._needs_reset = False
        return (obs if self._pad is None else self._padded(obs)), info

    def step(self, action: int) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the active task with ``action`` (Note [Extra actions]) and pad its observation."""
        if self._needs_reset:
            raise ResetNeeded("TaskSet: call reset() after construction or select()")
        if self._lut is not None:
            action = self._lut[action]
        obs, reward, terminated, truncated, info = self._env.step(action)
        if self._pad is not None:
            obs = self._padded(obs)
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        """Close every task."""
        for env in self.tasks:
            env.close()


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


# ----------------------------------------------------------------------------------------------
# The wrapper.


class NonStationary(gym.Wrapper[ObsType, ActType, ObsType, ActType], gym.utils.RecordConstructorArgs):
    """Changes the task of an environment on a schedule, keeping the spaces fixed for life.

    What changes is the ``change`` kind (:data:`CHANGES`: ``switch`` between the tasks of a
    :class:`TaskSet`, ``permute_obs``, ``permute_actions``, ``reward_scale``); when is the
    ``schedule`` (:data:`plasticrl.envs.schedules.SCHEDULES`: ``every``, ``at``, ``random``, ``geometric``),
    counted in lifetime steps (Note [Lifetime clock]). A change applies at the next episode
    boundary (``on="episode"``) or truncates the running episode (``on="step"``); see
    Note [Changes at episode boundaries].

    Announcements (Note [Task announcements]): a task changes only at a ``reset``; the reset
    that starts a new task says so with ``info["task_id"]`` (int, the episode's task) and
    ``info["task_switched"]`` (True). The first reset of the wrapper's life (and the first after
    ``set_state``) announces too, with ``task_switched`` True only if the task differs from the
    saved state's episode, and the step after it repeats ``task_id`` for callers that drop their
    reset's info. Other resets and steps carry no task keys: the last announced ``task_id`` holds
    (several changes due within one episode can lead back to the same task, announcing nothing).
    The cost per step is nearly nothing (Note [Step fast path]); a ``permute_obs`` permutation is
    folded into the env below when it supports that (Note [Folded observation gather]).

    Unlike most wrappers this one has **lifetime state** that survives ``reset()``: the step
    count, the change count, the current task's parameters and the task generator
    (Note [Task randomness]). The wrapper pickles whole, mid-episode state included (plasticrl's
    checkpoints pickle the vector env); ``get_state()``/``set_state()`` save and restore just the
    lifetime state as plain data, for checkpoints that rebuild the env and ``reset()`` it.

    No vector version exists: in a vector env give every sub-env its own wrapper with the same
    ``seed``, ``clock_scale=num_envs`` and the vector env's ``autoreset_mode``; every sub-env then
    sees every change at the same global step (Note [Lifetime clock]).

    Example:
        >>> from plasticrl.envs.schedules import Every
        >>> env = NonStationary(TaskSet(["CartPole-v1", "Acrobot-v1"]), Switch(), Every(5), on="step", seed=0)
        >>> env.observation_space.shape, env.action_space
        ((6,), Discrete(3))
        >>> obs, info = env.reset(seed=42)
        >>> info
        {'task_id': 0, 'task_switched': False}
        >>> steps = [env.step(0) for _ in range(5)]
        >>> [s[3] for s in steps]  # the change is due at step 5: that step is truncated
        [False, False, False, False, True]
        >>> [s[4] for s in steps]  # the first step repeats the task (Note [Task announcements])
        [{'task_id': 0}, {}, {}, {}, {}]
        >>> obs, info = env.reset()
        >>> obs.shape, info
        ((6,), {'task_id': 1, 'task_switched': True})
        >>> env.reset()[1], env.task_id  # the same task again: nothing to announce
        ({}, 1)

    Change logs:
     * v0.1.0 - Initially added
    """

    def __init__(
        self,
        env: gym.Env[ObsType, ActType],
        change: Change[Any],
        schedule: Schedule,
        *,
        on: Literal["episode", "step"] = "episode",
        seed: int | None = None,
        clock_scale: int = 1,
        autoreset_mode: AutoresetMode | str | None = None,
    ) -> None:
        """Wrap ``env``; the spaces are decided here and never change.

        Args:
            env: the env to change; for ``switch`` a :class:`TaskSet` (possibly wrapped).
            change: a change kind object, e.g. ``PermuteObs(mode="channels")`` or
                ``CHANGES.get(name)(**options)``.
            schedule: a schedule object, e.g. ``Every(100_000)`` or ``SCHEDULES.get(name)(**options)``.
            on: ``"episode"`` applies a due change at the next ``reset()``; ``"step"`` truncates the
                running episode at the step the change is due.
            seed: seeds the task generator (use the run seed, the same in every sub-env); None
                seeds it from the first ``reset(seed=...)``.
            clock_scale: lifetime steps per ``step()``; ``num_envs`` in a vector env.
            autoreset_mode: the vector env's ``AutoresetMode`` (or its value) when this wraps a
                sub-env, None for a single env; ``NEXT_STEP`` makes the reset that replaces a
                step advance the clock.

        Raises:
            TypeError: ``change`` is not a :class:`Change` or ``schedule`` is not callable.
            ValueError: a bad ``on``, ``seed``, ``clock_scale`` or ``autoreset_mode``, or an ``env``
                the change kind cannot handle.
        """
        if not isinstance(change, Change):
            raise TypeError(f"change must be a Change (see CHANGES), got {change!r}")
        if not callable(schedule):
            raise TypeError(f"schedule must be a callable schedule (see SCHEDULES), got {schedule!r}")
        if on not in ("episode", "step"):
            raise ValueError(f"on must be 'episode' or 'step', got {on!r}")
        if seed is not None and (not _is_int(seed) or seed < 0):
            raise ValueError(f"seed must be None or an integer >= 0, got {seed!r}")
        if not _is_int(clock_scale) or clock_scale < 1:
            raise ValueError(f"clock_scale must be an integer >= 1, got {clock_scale!r}")
        try:
            mode = None if autoreset_mode is None else AutoresetMode(autoreset_mode)
        except ValueError:
            valid = [m.value for m in AutoresetMode]
            raise ValueError(f"autoreset_mode must be None or in {valid}, got {autoreset_mode!r}") from None
        gym.utils.RecordConstructorArgs.__init__(
            self,
            change=change,
            schedule=schedule,
            on=on,
            seed=seed,
            clock_scale=clock_scale,
            autoreset_mode=autoreset_mode,
        )
        gym.Wrapper.__init__(self, env)

        self._change: Change[Any] = copy.copy(change)  # bound to this env only
        self.observation_space, self.action_space = self._change.bind(env)
        self._schedule = schedule
        self._on_step = on == "step"
        self._clock_scale = int(clock_scale)
        self._tick_on_reset = mode is AutoresetMode.NEXT_STEP
        self._gatherer = supports_gather(env)  # Note [Folded observation gather]

        # Lifetime state: survives reset(), saved by get_state().
        self._rng: np.random.Generator | None = None  # task generator; None until seeded
        self._lifetime_step = 0  # env steps × clock_scale since the start of the run
        self._next_change = _NEVER  # lifetime step at which the next change is due
        self._next_event = _NEVER  # _next_change, or 0 while _announce (Note [Step fast path])
        self._announce = True  # the next step repeats task_id (Note [Task announcements])
        self._num_changes = 0  # changes that have become due
        self._params: Any = None  # parameters of the latest due task
        self._task_id = 0  # the running (or last run) episode's task
        self._started = False  # whether any episode has started (so _task_id is meaningful)
        # Per-episode state: the running task's rules and where the episode stands.
        self._activated = False  # whether the fields below reflect the latest due task ...
        self._active_changes = 0  # ... which is the case while this equals _num_changes
        self._obs_index: np.ndarray | None = None  # the generic gather: obs.take(_obs_index)
        self._folded: np.ndarray | None = None  # the obs_index installed in the env below, if any
        self._action_lut: tuple[int, ...] | None = None
        self._reward_scale: float | None = None
        self._forward: Callable[[Any], StepResult] = env.step  # steps the env below
        self._episode_over = False  # the last step terminated or truncated (kept for NEXT_STEP)
        self._must_reset = False  # a change truncated the episode, or set_state() was called
        self._direct = False  # whether step() may take the fast path (Note [Step fast path]) ...
        self._quiet_reset = False  # ... and reset() (both kept by _refresh)
        if seed is not None:
            self._start(np.random.default_rng([int(seed), _TASK_SEED_SALT]))

    # -- lifetime bookkeeping --------------------------------------------------------------

    def _start(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._params = self._change.first()
        self._next_change = self._next_event = self._scheduled_after(0)

    def _scheduled_after(self, step: int) -> int:
        assert self._rng is not None
        nxt = self._schedule(step, self._rng)
        if nxt is None:
            return _NEVER
        if not _is_int(nxt) or nxt <= step:
            raise ValueError(
                f"schedule {self._schedule!r} returned {nxt!r} after step {step}; "
                "expected None or an integer > step"
            )
        return int(nxt)

    def _refresh(self) -> None:
        """Decide the fast paths after a rare event (Note [Step fast path])."""
        self._direct = (
            not self._must_reset
            and self._action_lut is None
            and self._obs_index is None
            and self._reward_scale is None
            and not self._tick_on_reset
        )
        # A reset has nothing to do but forward when the latest due task runs already and
        # there is nothing to announce or count.
        self._quiet_reset = (
            self._activated
            and self._active_changes == self._num_changes
            and not self._must_reset
            and not self._announce
            and not self._tick_on_reset
        )

    def _advance(self) -> None:
        """Make every change that is due by ``_lifetime_step`` due (draws params, then the next step)."""
        assert self._rng is not None
        while self._lifetime_step >= self._next_change:
            self._params = self._change.next(self._params, self._rng)
            self._num_changes += 1
            self._next_change = self._scheduled_after(self._next_change)

    def _activate(self) -> None:
        obs_index, self._action_lut, self._reward_scale, env_step = self._change.activate(self._params)
        if self._gatherer:  # Note [Folded observation gather]
            if obs_index is not None or self._folded is not None:
                self.env.set_observation_gather(obs_index)  # type: ignore[attr-defined]
                self._folded = obs_index
            obs_index = None
        self._obs_index = obs_index
        self._forward = self.env.step if env_step is None else env_step
        self._task_id = self._change.task_id(self._params, self._num_changes)
        self._active_changes = self._num_changes
        self._activated = True

    # -- gymnasium API ---------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsType, dict[str, Any]]:
        """Start an episode under the latest due task; seeds the task generator on first use if needed."""
        if not self._quiet_reset:
            return self._reset_with_news(seed, options)
        # The same task as the last episode, nothing to announce (Note [Step fast path]).
        obs, info = self.env.reset(seed=seed, options=options)
        index = self._obs_index
        if index is not None:
            obs = obs.take(index)  # type: ignore[attr-defined]
        return obs, info

    def _reset_with_news(
        self, seed: int | None, options: dict[str, Any] | None
    ) -> tuple[ObsType, dict[str, Any]]:
        if self._rng is None:
            self._start(np.random.default_rng(None if seed is None else [int(seed), _TASK_SEED_SALT]))
        elif self._tick_on_reset and self._episode_over:
            # NEXT_STEP autoreset: this reset replaces a vector step (Note [Lifetime clock]).
            self._lifetime_step += self._clock_scale
            if self._lifetime_step >= self._next_change:
                self._advance()
        switched = False
        if not self._activated or self._active_changes != self._num_changes:
            previous = self._task_id
            self._activate()
            switched = self._started and self._task_id != previous
        announce = self._announce or switched  # Note [Task announcements]
        self._started = True
        self._episode_over = self._must_reset = False
        self._next_event = 0 if self._announce else self._next_change
        self._refresh()
        obs, info = self.env.reset(seed=seed, options=options)
        if self._obs_index is not None:
            obs = obs.take(self._obs_index)  # type: ignore[attr-defined]
        if announce:
            info["task_id"] = self._task_id
            info["task_switched"] = switched
        return obs, info

    def step(self, action: ActType) -> tuple[ObsType, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step under the active task's rules and advance the lifetime clock."""
        if not self._direct:
            return self._step_with_transforms(action)
        # The fast path (Note [Step fast path]): keep it this short.
        result = self._forward(action)
        clock = self._lifetime_step + self._clock_scale
        self._lifetime_step = clock
        if clock < self._next_event:
            return result
        return self._event(result)

    def _step_with_transforms(self, action: ActType) -> StepResult:
        if self._must_reset:
            raise ResetNeeded("NonStationary: the task changed (or set_state() was called); call reset()")
        lut = self._action_lut
        if lut is not None:
            action = lut[action]  # type: ignore[index]
        obs, reward, terminated, truncated, info = self._forward(action)
        index = self._obs_index
        if index is not None:
            obs = obs.take(index)
        scale = self._reward_scale
        if scale is not None:
            reward = scale * float(reward)
        if terminated or truncated:
            self._episode_over = True
        self._lifetime_step += self._clock_scale
        if self._lifetime_step < self._next_event:
            return obs, reward, terminated, truncated, info
        return self._event((obs, reward, terminated, truncated, info))

    def _event(self, result: StepResult) -> StepResult:
        """The rare part of a step that reached ``_next_event``: announce, make changes due."""
        obs, reward, terminated, truncated, info = result
        if self._announce and self._started:
            info["task_id"] = self._task_id  # Note [Task announcements]
            self._announce = False
        if self._lifetime_step >= self._next_change:
            self._advance()
            if self._on_step:
                # Never continue an episode under new rules: end it here (Note [Changes at ...]).
                truncated = truncated or not terminated
                self._must_reset = True
                self._episode_over = True
        self._next_event = self._next_change
        self._refresh()
        return obs, reward, terminated, truncated, info

    # -- lifetime state --------------------------------------------------------------------

    @property
    def lifetime_step(self) -> int:
        """Env steps × ``clock_scale`` since the start of the run (the global step in a vector env)."""
        return self._lifetime_step

    @property
    def task_id(self) -> int:
        """The task of the running episode (as in ``info["task_id"]``)."""
        return self._task_id

    @property
    def scheduled_task_id(self) -> int:
        """The latest due task, which the next episode will run."""
        if self._rng is None:
            return self._task_id
        return self._change.task_id(self._params, self._num_changes)

    def get_state(self) -> dict[str, Any]:
        """Return the lifetime state as plain Python data (picklable; no numpy objects).

        Keys: ``format`` (1), ``change`` (the kind's name), ``lifetime_step``, ``next_change``
        (int or None), ``num_changes`` (changes due so far), ``task_id`` (of the running episode,
        so the next ``reset`` knows whether the task switched), ``params`` (the latest due task's
        parameters: an index, or a permutation as a list) and ``rng`` (the task generator's
        ``bit_generator.state``).

        Raises:
            RuntimeError: the task generator is not seeded yet (``seed=None`` and no ``reset()``).
        """
        if self._rng is None:
            raise RuntimeError("NonStationary.get_state(): no state before the first reset() when seed=None")
        return {
            "format": _STATE_FORMAT,
            "change": self._change.name,
            "lifetime_step": self._lifetime_step,
            "next_change": None if self._next_change == _NEVER else self._next_change,
            "num_changes": self._num_changes,
            "task_id": self._task_id,
            "params": self._change.to_state(self._params),
            "rng": copy.deepcopy(self._rng.bit_generator.state),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore lifetime state from :meth:`get_state`; the next call must be ``reset()``.

        The episode that ``reset()`` then starts runs the latest due task, exactly as the saved
        wrapper's next episode would have.

        Raises:
            ValueError: ``state`` is malformed or was saved from another change kind or env.
        """
        keys = {"format", "change", "lifetime_step", "next_change", "num_changes", "task_id", "params", "rng"}
        if not isinstance(state, Mapping) or set(state) != keys:
            got = sorted(state) if isinstance(state, Mapping) else state
            raise ValueError(f"NonStationary state must have keys {sorted(keys)}, got {got!r:.200}")
        if state["format"] != _STATE_FORMAT or state["change"] != self._change.name:
            raise ValueError(
                f"state of format {state['format']!r} for change {state['change']!r} cannot be "
                f"loaded into format {_STATE_FORMAT} for change {self._change.name!r}"
            )
        counts = [state[k] for k in ("lifetime_step", "num_changes", "task_id")]
        next_change = state["next_change"]
        if not all(_is_int(c) and c >= 0 for c in counts) or not (
            next_change is None or (_is_int(next_change) and next_change > 0)
        ):
            raise ValueError(f"NonStationary state has bad counters: {dict(state)!r:.200}")
        params = self._change.from_state(state["params"])
        rng_state = state["rng"]
        if not isinstance(rng_state, Mapping) or rng_state.get("bit_generator") != "PCG64":
            raise ValueError(f"NonStationary state['rng'] must be a PCG64 state dict, got {rng_state!r:.200}")
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = copy.deepcopy(dict(rng_state))

        self._rng, self._params = rng, params
        self._lifetime_step, self._num_changes, self._task_id = (int(c) for c in counts)
        self._next_change = _NEVER if next_change is None else int(next_change)
        self._next_event = self._next_change
        self._started, self._activated = True, False
        self._episode_over = False
        self._must_reset = True
        self._announce = True  # the caller may drop the reset's info (Note [Task announcements])
        self._refresh()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle; a wrapper pickled before the fast path existed continues on the generic path."""
        self.__dict__.update(state)
        if "_direct" not in state:  # pickled by plasticrl before Note [Step fast path]
            # Its env below has no gather yet (the generic _obs_index runs until the next change),
            # and the caller's task tracking may predate announcements: announce on the next step.
            self._gatherer, self._folded, self._forward = supports_gather(self.env), None, self.env.step
            self._announce, self._next_event = True, 0
            self._refresh()
