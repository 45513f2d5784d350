"""Non-stationary environments: a wrapper that changes the task on a schedule, and what it changes.

Contains:
    NonStationary: the wrapper; owns the lifetime clock, the task generator and the change state.
    Change: the base class of change kinds (what a task change does).
    Switch: ``switch`` — move to another task of a :class:`TaskSet`, cyclically or at random.
    PermuteObs: ``permute_obs`` — a seeded permutation of the observation (all / spatial / channels).
    PermuteActions: ``permute_actions`` — a seeded permutation of a discrete action set.
    RewardScale: ``reward_scale`` — multiply rewards by one of a list of scales (e.g. a sign flip).
    ObsNoise: ``obs_noise`` — Gaussian noise on every observation (an observation hook).
    Compose: several change kinds at once (e.g. a game switch and a channel permutation).
    CHANGES: the registry of change kinds, ``CHANGES.get(name)(**options)``; each entry carries its
        options dataclass (``CHANGES.options(name)``).
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

Note [Observation hooks]
    A change kind may transform every observation with randomness of its own (``obs_noise``):
    it overrides ``Change.obs_hook(obs, rng)``, and the wrapper calls it on every observation it
    returns, from ``reset`` and ``step``, after the task's ``obs_index``. ``rng`` is a second
    generator owned by the wrapper, ``_obs_rng``, apart from the task generator because it must
    behave the other way round: the task sequence is the same in every sub-env and survives
    resets, while noise must differ between sub-envs and, as the env's own randomness does, be
    reproducible from a reset seed. So every ``reset(seed=s)`` (re)seeds it from
    ``[_OBS_SEED_SALT, seed, s]`` (``seed`` the wrapper's; a vector env resets sub-env ``i`` with
    ``s + i``), and a first reset without a seed seeds it from the wrapper's seed alone (OS entropy
    when that is None too); unseeded resets continue the stream. It is lifetime state: pickled
    with the wrapper and saved by ``get_state`` under ``obs_rng``, so a resumed run continues the
    same noise stream. A kind without a hook gets none of this: no generator, no ``obs_rng`` key,
    no attribute on the wrapper (its pickles and states are what they were), and its steps keep
    the fast path (Note [Step fast path]), which a hooked kind never takes.

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
from collections.abc import Callable, Mapping
from typing import Any, Literal, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.core import ActType, ObsType
from gymnasium.error import ResetNeeded
from gymnasium.vector import AutoresetMode
from plasticrl.envs.changes import (
    CHANGES,
    Change,
    Compose,
    ObsNoise,
    PermuteActions,
    PermuteObs,
    RewardScale,
    Switch,
    Transforms,
    _is_int,
)
from plasticrl.envs.gather import (
    ObservationGather,
    check_gather_index,
    gather,
    gathered_space,
    supports_gather,
)
from plasticrl.envs.schedules import Schedule
from plasticrl.envs.tasks import StepResult, TaskSet

__all__ = [
    "NonStationary",
    "Change",
    "Switch",
    "PermuteObs",
    "PermuteActions",
    "RewardScale",
    "ObsNoise",
    "Compose",
    "CHANGES",
    "TaskSet",
    "Transforms",
    "ObservationGather",
    "supports_gather",
    "gather",
    "gathered_space",
    "check_gather_index",
]

_TASK_SEED_SALT = 0x7A5C  # Note [Task randomness]
_OBS_SEED_SALT = 0x0B5E  # Note [Observation hooks]
_NEVER = sys.maxsize  # next-change sentinel once a schedule is exhausted
_STATE_FORMAT = 1


class NonStationary(gym.Wrapper[ObsType, ActType, ObsType, ActType], gym.utils.RecordConstructorArgs):
    """Changes the task of an environment on a schedule, keeping the spaces fixed for life.

    What changes is the ``change`` kind (:data:`CHANGES`: ``switch`` between the tasks of a
    :class:`TaskSet`, ``permute_obs``, ``permute_actions``, ``reward_scale``, ``obs_noise``, or a
    :class:`Compose` of several, e.g. a game switch and a channel permutation); when is the
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

    A change kind with an observation hook (``obs_noise``) gets a second generator for its
    per-step randomness, seeded by resets and saved with the lifetime state (Note [Observation
    hooks]).

    Example:
        >>> from plasticrl.envs.schedules import Every
        >>> env = NonStationary(TaskSet(["CartPole-v1", "Acrobot-v1"]), Switch(), Every(5), on="step", seed=0)
        >>> env.observation_space.shape, env.action_space
        ((6,), Discrete(3))
        >>> obs, info = env.reset(seed=42)
        >>> info
        {'task_id': 0, 'task_switched': False, 'game': 0}
        >>> steps = [env.step(0) for _ in range(5)]
        >>> [s[3] for s in steps]  # the change is due at step 5: that step is truncated
        [False, False, False, False, True]
        >>> [s[4] for s in steps]  # the first step repeats the task (Note [Task announcements])
        [{'task_id': 0, 'game': 0}, {}, {}, {}, {}]
        >>> obs, info = env.reset()
        >>> obs.shape, info
        ((6,), {'task_id': 1, 'task_switched': True, 'game': 1})
        >>> env.reset()[1], env.task_id  # the same task again: nothing to announce
        ({}, 1)

    Change logs:
     * v0.1.0 - Initially added
    """

    # Note [Observation hooks]: set on the instance only for a change kind with a hook, so the
    # pickles of other wrappers hold none of it (and older pickles unpickle without it).
    _observes: bool = False
    """Whether the change kind has an observation hook."""
    _obs_seed: int | None = None
    """The wrapper's seed, for seeding ``_obs_rng``."""
    _obs_rng: np.random.Generator | None = None
    """The observation hook's generator; None until the first reset."""

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
        if self._change.has_obs_hook:  # Note [Observation hooks]
            self._observes, self._obs_seed = True, None if seed is None else int(seed)
        if seed is not None:
            self._start(np.random.default_rng([int(seed), _TASK_SEED_SALT]))

    # -- lifetime bookkeeping --------------------------------------------------------------

    def _start(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._params = self._change.first_draw(rng)  # a fixed first task draws nothing
        self._next_change = self._next_event = self._scheduled_after(0)

    def _seeded_obs_rng(self, reset_seed: int | None) -> np.random.Generator:
        """The observation hook's generator for a reset with ``reset_seed`` (Note [Observation hooks])."""
        seeds = [s for s in (self._obs_seed, reset_seed) if s is not None]
        if not seeds:
            return np.random.default_rng()
        flags = [int(self._obs_seed is not None), int(reset_seed is not None)]  # which seeds these are
        return np.random.default_rng([_OBS_SEED_SALT, *flags, *(int(s) for s in seeds)])

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
            and not self._observes
        )
        # A reset has nothing to do but forward when the latest due task runs already and
        # there is nothing to announce or count.
        self._quiet_reset = (
            self._activated
            and self._active_changes == self._num_changes
            and not self._must_reset
            and not self._announce
            and not self._tick_on_reset
            and not self._observes
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

    def skip_changes(self, count: int) -> None:
        """Make the first ``count`` changes due now, before the first episode, as a run would draw them.

        The lifetime clock moves to the step of the ``count``-th change, so the next change comes
        when it would in a run from task 0, and the first ``reset`` starts task ``count`` (for
        ``start_task``: a fresh agent on a continual run's task k).

        Raises:
            RuntimeError: the wrapper is unseeded or has started (skip before the first reset).
            ValueError: the schedule has fewer than ``count`` changes.
        """
        if self._rng is None or self._started:
            raise RuntimeError(
                "NonStationary.skip_changes(): call it on a seeded wrapper before its first reset"
            )
        while self._num_changes < count:
            if self._next_change == _NEVER:
                raise ValueError(
                    f"the schedule {self._schedule!r} has only {self._num_changes} changes, not {count}"
                )
            self._lifetime_step = self._next_change
            self._advance()
        self._next_event = 0 if self._announce else self._next_change

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
        if self._observes:
            if seed is not None or self._obs_rng is None:
                self._obs_rng = self._seeded_obs_rng(seed)
            obs = self._change.obs_hook(obs, self._obs_rng)
        if announce:
            info["task_id"] = self._task_id
            info["task_switched"] = switched
            self._announce_game(info)
        return obs, info

    def _announce_game(self, info: dict[str, Any]) -> None:
        """Add ``info["game"]``, the index of the running task of a :class:`TaskSet` below, if any.

        With composed kinds (a game switch and a permutation) ``task_id`` counts changes, so the
        game is announced beside it, for per-game curves (Note [Task announcements]).
        """
        below = self.env.unwrapped
        if isinstance(below, TaskSet):
            info["game"] = below.index

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
            action = lut[action]  # type: ignore[index,call-overload]
        obs, reward, terminated, truncated, info = self._forward(action)
        index = self._obs_index
        if index is not None:
            obs = obs.take(index)
        if self._observes:
            assert self._obs_rng is not None  # seeded at the first reset (Note [Observation hooks])
            obs = self._change.obs_hook(obs, self._obs_rng)
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
            self._announce_game(info)
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
    def change(self) -> Change[Any]:
        """The change kind, bound to this wrapper's env (its own copy)."""
        return self._change

    @property
    def on(self) -> str:
        """When a due change applies: ``"step"`` (truncating the episode) or ``"episode"``."""
        return "step" if self._on_step else "episode"

    @property
    def transforms(self) -> Transforms:
        """What the running episode's task does to every step.

        The observation gather (folded into the env below or not), the action table and the
        reward scale; ``env_step`` is not given.
        """
        index = self._obs_index if self._obs_index is not None else self._folded
        return Transforms(index, self._action_lut, self._reward_scale)

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
        ``bit_generator.state``); for a change kind with an observation hook also ``obs_rng`` (its
        generator's state, None before the first reset: Note [Observation hooks]).

        Raises:
            RuntimeError: the task generator is not seeded yet (``seed=None`` and no ``reset()``).
        """
        if self._rng is None:
            raise RuntimeError("NonStationary.get_state(): no state before the first reset() when seed=None")
        state: dict[str, Any] = {
            "format": _STATE_FORMAT,
            "change": self._change.name,
            "lifetime_step": self._lifetime_step,
            "next_change": None if self._next_change == _NEVER else self._next_change,
            "num_changes": self._num_changes,
            "task_id": self._task_id,
            "params": self._change.to_state(self._params),
            "rng": copy.deepcopy(self._rng.bit_generator.state),
        }
        if self._observes:  # Note [Observation hooks]
            obs_rng = self._obs_rng
            state["obs_rng"] = None if obs_rng is None else copy.deepcopy(obs_rng.bit_generator.state)
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore lifetime state from :meth:`get_state`; the next call must be ``reset()``.

        The episode that ``reset()`` then starts runs the latest due task, exactly as the saved
        wrapper's next episode would have.

        Raises:
            ValueError: ``state`` is malformed or was saved from another change kind or env.
        """
        keys = {"format", "change", "lifetime_step", "next_change", "num_changes", "task_id", "params", "rng"}
        if self._observes:
            keys.add("obs_rng")
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
        rng = _generator_from_state("rng", state["rng"])
        obs_rng = None
        if self._observes and state["obs_rng"] is not None:
            obs_rng = _generator_from_state("obs_rng", state["obs_rng"])

        self._rng, self._params = rng, params
        if self._observes:
            self._obs_rng = obs_rng
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


def _generator_from_state(key: str, state: Any) -> np.random.Generator:
    """A generator in the saved ``bit_generator.state`` at ``state[key]`` (PCG64 only)."""
    if not isinstance(state, Mapping) or state.get("bit_generator") != "PCG64":
        raise ValueError(f"NonStationary state[{key!r}] must be a PCG64 state dict, got {state!r:.200}")
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = copy.deepcopy(dict(state))
    return rng
