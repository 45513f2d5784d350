"""Task sets: several tasks behind one padded observation space and one action set.

Contains:
    TaskSet: the env that the ``switch`` change kind (:mod:`plasticrl.envs.changes`) moves between tasks of.
    StepResult: what ``Env.step`` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.error import ResetNeeded
from gymnasium.spaces import Box, Discrete
from plasticrl.envs.gather import supports_gather

__all__ = ["TaskSet", "StepResult"]

StepResult = tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]
"""What ``Env.step`` returns: (observation, reward, terminated, truncated, info)."""


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
    ``n``. See Note [Extra actions] for an action a task does not have, and Note [ALE action sets]
    for Atari games (their common space is the full 18-action set).

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

    Note [ALE action sets]
        An ALE game's minimal action set is its own list of joystick inputs (Breakout: NOOP, FIRE,
        RIGHT, LEFT; Pong adds RIGHTFIRE, LEFTFIRE), so index i is a different input in different
        games, and wrapping would make it yet another one. ALE games whose action sets differ are
        therefore refused, with the fix: ``env.kwargs.full_action_space: true`` (gymnasium's ALE
        option) gives every game the 18 inputs of the full set in one order (NOOP, FIRE, UP,
        RIGHT, LEFT, DOWN, ...), the common space in which an agent keeps what each action means
        across a switch (``configs/atari/dqn_switch_breakout_pong.yaml``). Games with the same
        minimal set (Pong and Space Invaders) switch as they are.

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
        pad_to: Sequence[int] | None = None,
    ) -> None:
        """Build every task now; spaces are fixed from here on.

        Args:
            tasks: gymnasium ids (built with ``make_task``) or zero-argument env factories.
            make_task: builds an env from an id, e.g. the trainer's builder that converts MinAtar
                to channel-first float32; default ``gymnasium.make``.
            pad_to: the padded observation shape, at least every task's (None: the largest task's
                shape per axis). The AdamO paper pads its four MinAtar games to 10 channels,
                Seaquest's, though Seaquest is not among them: ``pad_to=(10, 10, 10)``.

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
        self._check_ale_actions()
        box = self._padded_box([e.observation_space for e in envs], pad_to)
        discrete = self._largest_discrete([e.action_space for e in envs])
        self.observation_space, self.action_space = box, discrete  # type: ignore[assignment]

        shape, start, n = box.shape, int(discrete.start), int(discrete.n)
        task_shapes: list[tuple[int, ...]] = [tuple(e.observation_space.shape or ()) for e in envs]
        task_actions: list[int] = [int(e.action_space.n) for e in envs]  # type: ignore[attr-defined]
        # Per task: the slice its observation fills (None when it needs no padding) and its
        # action table (None when it has every action).
        self._pads = [None if task_shape == shape else _region(task_shape) for task_shape in task_shapes]
        self._luts = [
            None
            if count == n
            else tuple(range(start))
            + tuple(int(start + (a - start) % count) for a in range(start, start + n))
            for count in task_actions
        ]
        for i, env in enumerate(envs):
            if self._pads[i] is not None and supports_gather(env):
                # The padded cells that this task fills, in order; the rest pick the zero cell.
                size = int(np.prod(task_shapes[i]))
                index = np.full(shape, size, np.intp)
                index[self._pads[i]] = np.arange(size).reshape(env.observation_space.shape)
                env.set_observation_gather(index)  # type: ignore[attr-defined]
                self._pads[i] = None
        self._blank = np.zeros(shape, self.observation_space.dtype)
        self._task_seeds: list[int | None] = [None] * len(envs)  # consumed at each task's next reset
        self.index = 0  # the active task
        self._env, self._pad, self._lut = envs[0], self._pads[0], self._luts[0]
        self._needs_reset = True

    def _check_ale_actions(self) -> None:
        """Refuse ALE games whose action sets differ (Note [ALE action sets])."""
        meanings = {
            name: tuple(env.unwrapped.get_action_meanings())  # type: ignore[attr-defined]
            for name, env in zip(self.names, self.tasks, strict=True)
            if type(env.unwrapped).__module__.startswith("ale_py")
        }
        if len(set(meanings.values())) > 1:
            listing = "; ".join(f"{name}: {len(m)} ({', '.join(m)})" for name, m in meanings.items())
            self.close()
            raise ValueError(
                f"switch across ALE games with different action sets ({listing}): action i would be a "
                "different joystick input in each game; set env.kwargs.full_action_space=true, so that "
                "every game has the 18 actions of the full set, the same ones in the same order"
            )

    def _padded_box(self, spaces: list[gym.Space[Any]], pad_to: Sequence[int] | None = None) -> Box:
        if not all(isinstance(s, Box) for s in spaces):
            raise ValueError(f"TaskSet pads Box observation spaces only, got {self._listing(spaces)}")
        boxes: list[Box] = spaces  # type: ignore[assignment]
        if len({len(b.shape) for b in boxes}) > 1 or len({b.dtype for b in boxes}) > 1:
            raise ValueError(
                f"TaskSet needs observation spaces of one ndim and dtype, got {self._listing(spaces)}"
            )
        shape = tuple(int(d) for d in np.max([b.shape for b in boxes], axis=0))
        if pad_to is not None:
            target = tuple(int(d) for d in pad_to)
            if len(target) != len(shape) or any(t < s for t, s in zip(target, shape, strict=True)):
                raise ValueError(
                    f"TaskSet pad_to={list(target)} must have one size per axis, each at least the largest "
                    f"task's {list(shape)}"
                )
            shape = target
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
