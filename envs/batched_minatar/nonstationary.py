"""Non-stationarity for the batched MinAtar: every env changes task at once, on the sub-envs' schedule.

Contains:
    BatchedNonStationary: a vector wrapper that changes the task of a :class:`BatchedMinAtar`
        (game, observation permutation, action table, reward scale) when the schedule says.
    make_task_clock: the ``NonStationary`` that decides the task sequence (Note [Task clock]).
    ClockTask: the stand-in env a task clock is made of.

Note [Task clock]
    The sync vector env gives every sub-env its own ``NonStationary`` with the run seed and
    ``clock_scale=num_envs``, so every sub-env draws the same task sequence and changes task at
    the same global step. The batched env has one state for all envs, so it needs that sequence
    once: it keeps one ``NonStationary`` built exactly as sub-env 0's (``build_sub_env`` with the
    same config and seed), over stand-in tasks (:class:`ClockTask`: the games' observation and
    action spaces, zero observations, episodes that never end). Stepping it once per vector step
    advances its lifetime clock by ``num_envs``; when a change is due it truncates, and its
    ``reset`` draws and activates the next task, whose :attr:`NonStationary.transforms` (and,
    for a switch, its ``TaskSet``'s game) the wrapper installs in the batched env with
    :meth:`BatchedMinAtar.schedule_task` (Note [Task changes] there). So the task sequence,
    the change steps, the permutations, ``get_state`` and the announcements are the sub-envs'
    by construction, not by a second implementation; plasticrl's evaluation builds package
    sub-envs from the clock's state (:func:`plasticrl.envs.vector.task_state`).

    What cannot be batched is refused at construction: ``on: episode`` (each env would change at
    its own episode end, and one batched state runs one game) and observation hooks
    (``obs_noise``, whose noise is per sub-env).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space
from plasticrl.envs.batched_minatar.common import GRID
from plasticrl.envs.batched_minatar.vector import GAMES, BatchedMinAtar, game_name
from plasticrl.envs.nonstationary import NonStationary
from plasticrl.envs.tasks import TaskSet

__all__ = ["BatchedNonStationary", "ClockTask", "make_task_clock"]

_ANNOUNCED = ("task_id", "task_switched", "game")  # the keys NonStationary announces


class ClockTask(gym.Env[np.ndarray, int]):
    """A stand-in for a MinAtar game in a task clock: its spaces, zero observations, no episode end."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, game: str, actions: int = 6) -> None:
        channels = GAMES[game_name(game)].num_channels
        self.observation_space = gym.spaces.Box(0.0, 1.0, (channels, GRID, GRID), np.float32)
        self.action_space = gym.spaces.Discrete(actions)  # type: ignore[assignment]
        self._zeros = np.zeros(self.observation_space.shape, np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:  # noqa: D102
        super().reset(seed=seed)
        return self._zeros, {}

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict]:  # noqa: D102
        return self._zeros, 0.0, False, False, {}


def _clock_task(cfg: Any, env_id: str | None = None) -> ClockTask:
    """``build_sub_env``'s ``make``: the stand-in task for ``env_id`` (default: ``cfg.id``)."""
    from plasticrl.envs.make import ENV_ALIASES

    name = env_id or cfg.id
    minimal = name.endswith("-v1")
    game = game_name(ENV_ALIASES.get(name, name))
    return ClockTask(game, len(GAMES[game].minimal_actions) if minimal else 6)


def make_task_clock(cfg: Any, seed: int, nonstationary: Any) -> NonStationary:
    """The ``NonStationary`` that sub-env 0 of a sync vector env would have, over stand-in tasks.

    Args:
        cfg: the ``env`` section (``num_envs`` is the clock's scale).
        seed: the run seed.
        nonstationary: the ``nonstationary`` section, with a kind.
    """
    from plasticrl.envs.make import build_sub_env

    clock = build_sub_env(cfg, seed, 0, nonstationary, make=_clock_task)
    assert isinstance(clock, NonStationary)
    return clock


class BatchedNonStationary(gym.vector.VectorWrapper):
    """Changes the task of every env of a :class:`BatchedMinAtar` at once, on a task clock's schedule.

    The observations, rewards and flags are the batched env's, with the active task's reward
    scale applied; a change truncates every running episode at the step it is due (``on: step``)
    and starts the next ones under the new task. The infos announce tasks as a sync vector env of
    ``NonStationary`` sub-envs does (``task_id``, ``task_switched``, ``game``, each with its
    ``_``-mask, for every env at once): at the first step and at every change.

    Args:
        env: the batched env, with as many channels as the clock's observations
            (``nonstationary.pad_to``).
        clock: the task clock (:func:`make_task_clock`), fresh or unpickled with its env.

    Raises:
        ValueError: a clock with ``on: episode`` or an observation hook, or observation spaces
            that do not match.
    """

    def __init__(self, env: BatchedMinAtar, clock: NonStationary) -> None:
        super().__init__(env)
        if clock.on != "step":
            raise ValueError(
                "env.vector=batched changes every env at once: it needs nonstationary.on=step, got 'episode'"
            )
        if clock.change.has_obs_hook:
            raise ValueError(
                f"env.vector=batched cannot apply {clock.change.name!r}'s per-env observation hook "
                "(obs_noise); use env.vector=sync"
            )
        if clock.observation_space.shape != env.single_observation_space.shape:
            raise ValueError(
                f"the batched env's observations {env.single_observation_space.shape} do not match the "
                f"tasks' {clock.observation_space.shape}; set nonstationary.pad_to to "
                f"{list(env.single_observation_space.shape or ())} or env.kwargs.channels to the tasks'"
            )
        self.clock = clock
        self.base = env
        self.single_observation_space = clock.observation_space
        self.single_action_space = clock.action_space
        self.observation_space = batch_space(self.single_observation_space, env.num_envs)
        self.action_space = batch_space(self.single_action_space, env.num_envs)
        self._scale: float | None = None  # the running task's reward scale

    def _schedule_clock_task(self) -> float | None:
        """Schedule the clock's running task in the batched env; returns its reward scale."""
        transforms = self.clock.transforms
        below = self.clock.env.unwrapped
        game = below.names[below.index] if isinstance(below, TaskSet) else None
        self.base.schedule_task(game, transforms.obs_index, transforms.action_lut)
        return transforms.reward_scale

    def _announce(self, infos: dict[str, Any], news: dict[str, Any]) -> None:
        n = self.base.num_envs
        for key in _ANNOUNCED:
            if key in news:
                infos[key] = np.full(n, news[key])
                infos[f"_{key}"] = np.ones(n, dtype=bool)

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None) -> Any:
        """Reset every env under the clock's task (the first reset starts the first task)."""
        _, news = self.clock.reset()
        self._scale = self._schedule_clock_task()
        obs, infos = self.base.reset(seed=seed, options=options)  # starts the scheduled task
        self._announce(infos, news)
        return obs, infos

    def step(self, actions: Any) -> Any:
        """Step every env; at a due change, end every episode and reset under the next task."""
        _, _, _, due, news = self.clock.step(0)
        scale = self._scale
        reset_news: dict[str, Any] = {}
        if due:
            _, reset_news = self.clock.reset()
            self._scale = self._schedule_clock_task()
        obs, reward, terminated, truncated, infos = self.base.step(actions)
        if scale is not None:
            reward = reward * scale
        self._announce(infos, news)
        self._announce(infos, reset_news)
        return obs, reward, terminated, truncated, infos

    @property
    def task_id(self) -> int:
        """The running task (as ``info["task_id"]``)."""
        return self.clock.task_id

    def close_extras(self, **kwargs: Any) -> None:  # noqa: D102
        self.base.close_extras(**kwargs)
