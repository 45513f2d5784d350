"""Vector environments from config (sync or async) and their checkpoint form.

Contains:
    make_vector_env: ``num_envs`` sub-envs (:func:`plasticrl.envs.make.build_sub_env`) in a ``SyncVectorEnv``
        or ``AsyncVectorEnv`` with same-step autoreset and episode statistics.
    envs_state / restore_envs: everything to continue a vector env mid-episode (checkpoints).
    final_observations: the true next observation of each sub-env under same-step autoreset.

Note [Autoreset]
    Vector envs use gymnasium's ``AutoresetMode.SAME_STEP``: when a sub-env's episode ends, the
    observation returned by ``step`` is already the first one of the next episode and the true last
    observation is in ``info["final_obs"]``. So every ``step`` is one real transition of every
    sub-env (no dummy reset steps to skip, the step counter counts real env steps) and the
    bootstrap target of a truncated episode uses the real final observation. The one place that
    reads ``final_obs`` is :func:`final_observations`.

Note [Async sub-envs in checkpoints]
    An ``AsyncVectorEnv`` keeps its sub-envs in worker processes, so it cannot be pickled whole
    as a ``SyncVectorEnv`` is. Each async sub-env is wrapped in :class:`_PicklableSubEnv`, whose
    ``pickled_env`` the parent calls through ``AsyncVectorEnv.call``; the checkpoint holds those
    bytes and the vector wrapper's episode statistics, and a resumed run starts its workers from
    the unpickled sub-envs. Async runs therefore resume exactly like sync ones.
"""

from __future__ import annotations

import copy
import functools
import pickle
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from plasticrl.envs.make import EnvConfig, NonStationaryConfig, build_sub_env

__all__ = [
    "make_vector_env",
    "envs_state",
    "restore_envs",
    "final_observations",
    "task_state",
    "host_episodes",
]


class _PicklableSubEnv(gym.Wrapper[Any, Any, Any, Any]):
    """An async sub-env that can hand its pickled self to the parent (Note [Async sub-envs ...])."""

    def pickled_env(self) -> bytes:
        """The wrapped env, pickled inside the worker process."""
        return pickle.dumps(self.env)


def _async_sub_env(
    cfg: EnvConfig, seed: int, index: int, nonstationary: NonStationaryConfig | None, pickled: bytes | None
) -> gym.Env:
    # Module-level, so the worker process can unpickle it; builds sub-env ``index`` or restores it.
    env = pickle.loads(pickled) if pickled is not None else build_sub_env(cfg, seed, index, nonstationary)
    return _PicklableSubEnv(env)


def _async_vector_env(
    cfg: EnvConfig, seed: int, nonstationary: NonStationaryConfig | None, pickled: list[bytes | None]
) -> gym.vector.VectorEnv:
    fns = [
        functools.partial(_async_sub_env, cfg, seed, i, nonstationary, blob) for i, blob in enumerate(pickled)
    ]
    return gym.vector.AsyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def make_vector_env(
    cfg: EnvConfig, seed: int, nonstationary: NonStationaryConfig | None = None
) -> gym.vector.VectorEnv:
    """``cfg.num_envs`` sub-envs, sync or async (``env.vector``), with same-step autoreset.

    Episode statistics (``info["episode"]``) are recorded by gymnasium's vector wrapper.

    Args:
        cfg: the env section.
        seed: the run seed; the action spaces are seeded with ``seed + i``. The caller seeds the
            observations with ``envs.reset(seed=seed)`` (sub-env i gets ``seed + i``). The
            non-stationary wrappers all get ``seed`` itself, so every sub-env sees the same task
            sequence, and ``clock_scale=num_envs``, so every sub-env changes at the same global step.
        nonstationary: the ``nonstationary`` section; None or ``kind: null`` is stationary.

    Sync and async step the same sub-envs, so a run gives identical results with either.
    """
    if cfg.vector == "batched":  # MinAtar as tensor operations (plasticrl.envs.batched_minatar)
        from plasticrl.envs.batched_minatar import make_batched_vector_env

        return make_batched_vector_env(cfg, seed, nonstationary)
    if cfg.vector == "async":
        envs = _async_vector_env(cfg, seed, nonstationary, [None] * cfg.num_envs)
    else:
        envs = gym.vector.SyncVectorEnv(
            [functools.partial(build_sub_env, cfg, seed, i, nonstationary) for i in range(cfg.num_envs)],
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


def envs_state(envs: gym.vector.VectorEnv) -> dict[str, Any]:
    """Everything to restore ``envs`` mid-episode: the pickled env, or (async) its pieces."""
    if not isinstance(envs.unwrapped, gym.vector.AsyncVectorEnv):
        return {"pickled": pickle.dumps(envs)}
    statistics = copy.copy(envs)  # the vector wrapper without its (unpicklable) async env
    statistics.env = None  # type: ignore[attr-defined]  # the episode-statistics wrapper's env
    return {"sub_envs": list(envs.unwrapped.call("pickled_env")), "statistics": pickle.dumps(statistics)}


def restore_envs(
    state: Mapping[str, Any], cfg: EnvConfig, seed: int, nonstationary: NonStationaryConfig | None = None
) -> gym.vector.VectorEnv:
    """Inverse of :func:`envs_state` (the config rebuilds async workers around the saved sub-envs)."""
    if "pickled" in state:
        return pickle.loads(state["pickled"])
    envs = pickle.loads(state["statistics"])
    envs.env = _async_vector_env(cfg, seed, nonstationary, state["sub_envs"])
    return envs


def task_state(envs: gym.vector.VectorEnv) -> dict[str, Any]:
    """Sub-env 0's ``NonStationary`` lifetime state (``get_state``) of envs from :func:`make_vector_env`.

    A batched MinAtar keeps that state in its task clock (Note [Task clock] in
    :mod:`plasticrl.envs.batched_minatar.nonstationary`); sync and async envs in their sub-envs.
    """
    layer: Any = envs
    while isinstance(layer, gym.vector.VectorWrapper):
        clock = getattr(layer, "clock", None)
        if clock is not None:
            return clock.get_state()
        layer = layer.env
    return envs.unwrapped.call("get_state")[0]  # type: ignore[attr-defined]


def host_episodes(infos: dict[str, Any]) -> dict[str, Any]:
    """``infos`` with a tensor env's episode statistics as numpy arrays (what episode logging reads).

    A batched MinAtar in ``tensors`` mode records ``infos["episode"]`` (``r``, ``l``) and
    ``_episode`` as tensors on its device; they are copied to the host only at steps where an
    episode ended.
    """
    ended = infos.get("_episode")
    if ended is None or isinstance(ended, np.ndarray):
        return infos
    if not bool(ended.any()):
        infos = dict(infos)
        del infos["episode"], infos["_episode"]
        return infos
    episode = {key: value.cpu().numpy() for key, value in infos["episode"].items()}
    return {**infos, "episode": episode, "_episode": ended.cpu().numpy()}


def final_observations(next_obs: Any, infos: Mapping[str, Any], done: Any) -> Any:
    """The real next observation of every sub-env (Note [Autoreset]).

    Where a sub-env's episode ended this step, ``next_obs`` already holds the reset observation;
    its true final observation is taken from ``infos["final_obs"]``. Returns ``next_obs`` itself
    when no episode ended (no copy). Torch tensors (a batched env's ``tensors`` mode, whose
    ``final_obs`` is one full tensor) are selected with ``torch.where``, without a host sync.
    """
    if not isinstance(next_obs, np.ndarray):
        if "final_obs" not in infos:
            return next_obs
        mask = done.reshape(-1, *([1] * (next_obs.ndim - 1)))
        return next_obs.where(~mask, infos["final_obs"])
    if not done.any():
        return next_obs
    real = next_obs.copy()
    final = infos["final_obs"]
    for i in np.flatnonzero(done):
        real[i] = final[i]
    return real
