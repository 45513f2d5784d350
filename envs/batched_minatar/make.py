"""The batched MinAtar from a run's config: the drop-in for ``plasticrl.envs.vector.make_vector_env``.

Contains:
    make_batched_vector_env: an ``EnvConfig`` (and the ``nonstationary`` section) in, a
        :class:`~plasticrl.envs.batched_minatar.vector.BatchedMinAtar` out, under
        :class:`~plasticrl.envs.batched_minatar.nonstationary.BatchedNonStationary` when the
        section has a kind and in gymnasium's ``RecordEpisodeStatistics`` unless ``tensors``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from plasticrl.envs.batched_minatar.nonstationary import BatchedNonStationary, make_task_clock
from plasticrl.envs.batched_minatar.vector import BatchedMinAtar

__all__ = ["make_batched_vector_env"]


def make_batched_vector_env(
    cfg: Any, seed: int, nonstationary: Any = None, **options: Any
) -> gym.vector.VectorEnv:
    """``plasticrl.envs.vector.make_vector_env`` for a MinAtar ``cfg.id``, batched.

    ``cfg`` is an ``EnvConfig``: ``id`` (a MinAtar id or alias), ``num_envs``, ``kwargs``
    (``sticky_action_prob``, ``difficulty_ramping``, and this module's ``device``, ``source``,
    ``channels``, ``tensors``), ``max_episode_steps`` (None: plasticrl's 10 000). The source is
    seeded with ``seed`` (the caller's ``reset(seed=seed)`` re-seeds it the same way). With a
    ``nonstationary`` kind, the envs change task together on sub-env 0's schedule
    (:class:`plasticrl.envs.batched_minatar.nonstationary.BatchedNonStationary`; the channels
    default to the tasks' padded ones). Wrapped in gymnasium's ``RecordEpisodeStatistics`` unless
    ``tensors``.

    Raises:
        ValueError: a non-stationarity the batched env cannot apply (``on: episode``, ``obs_noise``).
    """
    from plasticrl.envs.make import ENV_ALIASES, MINATAR_TIME_LIMIT

    kwargs = {**dict(cfg.kwargs), **options}
    clock = None
    if nonstationary is not None and getattr(nonstationary, "kind", None) is not None:
        clock = make_task_clock(cfg, seed, nonstationary)
        shape = clock.observation_space.shape
        assert shape is not None  # (a Box of MinAtar frames)
        kwargs.setdefault("channels", shape[0])
    env_id = ENV_ALIASES.get(cfg.id, cfg.id)
    limit = cfg.max_episode_steps or MINATAR_TIME_LIMIT
    envs: gym.vector.VectorEnv = BatchedMinAtar(
        env_id, cfg.num_envs, max_episode_steps=limit, seed=seed, **kwargs
    )
    tensors = kwargs.get("tensors", False)
    if clock is not None:
        envs = BatchedNonStationary(envs, clock)  # type: ignore[arg-type]
    return envs if tensors else gym.wrappers.vector.RecordEpisodeStatistics(envs)
