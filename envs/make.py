"""Environment construction from config: gymnasium ids, aliases, ``module:Class``, MinAtar.

Contains:
    EnvConfig: the ``env.*`` config section.
    ENV_ALIASES: short names users may type (``breakout`` → ``MinAtar/Breakout-v0``).
    resolve_env_id: alias / id validation with close-match suggestions.
    make_env: one environment, MinAtar converted to channel-first float32, time limit applied.
    make_vector_env: ``num_envs`` copies in a ``SyncVectorEnv`` (same-step autoreset) with episode
        statistics, seeded per sub-env.
    MinAtarObservation: the (10, 10, C) bool → (C, 10, 10) float32 observation wrapper.
    final_observations: the true next observation of each sub-env under same-step autoreset.

Note [Autoreset]
    Vector envs use gymnasium's ``AutoresetMode.SAME_STEP``: when a sub-env's episode ends, the
    observation returned by ``step`` is already the first one of the next episode and the true last
    observation is in ``info["final_obs"]``. So every ``step`` is one real transition of every
    sub-env (no dummy reset steps to skip, the step counter counts real env steps) and the
    bootstrap target of a truncated episode uses the real final observation. The one place that
    reads ``final_obs`` is :func:`final_observations`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from plasticity.registry import close_matches, resolve_import

__all__ = [
    "EnvConfig",
    "ENV_ALIASES",
    "MINATAR_GAMES",
    "MINATAR_TIME_LIMIT",
    "resolve_env_id",
    "make_env",
    "make_vector_env",
    "MinAtarObservation",
    "final_observations",
]

MINATAR_GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")
ENV_ALIASES: dict[str, str] = {
    game: f"MinAtar/{game.title().replace('_', '')}-v0" for game in MINATAR_GAMES
}
MINATAR_TIME_LIMIT = 10_000
"""Default episode cap for MinAtar [ours]: the games set no ``truncated`` themselves."""


@dataclass(frozen=True)
class EnvConfig:
    """The ``env`` section: which environment and how many copies."""

    id: str = "CartPole-v1"
    """A gymnasium id, an alias from ENV_ALIASES, or ``package.module:ClassOrFactory``."""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments for the env constructor (MinAtar: sticky_action_prob, difficulty_ramping)."""
    num_envs: int = 1
    """Sub-environments stepped in lockstep; one global step advances every sub-env."""
    max_episode_steps: int | None = None
    """Episode time limit; None keeps the registered one (MinAtar: MINATAR_TIME_LIMIT)."""

    def __post_init__(self) -> None:
        if self.num_envs < 1:
            raise ValueError(f"env.num_envs must be >= 1, got {self.num_envs}")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ValueError(f"env.max_episode_steps must be >= 1 or null, got {self.max_episode_steps}")


def _register_minatar() -> None:
    if "MinAtar/Breakout-v0" not in gym.registry:
        import minatar.gym

        minatar.gym.register_envs()


def is_minatar(env_id: str) -> bool:
    """Whether ``env_id`` (after alias resolution) is a MinAtar game."""
    return env_id.startswith("MinAtar/")


def resolve_env_id(env_id: str) -> str:
    """Return the gymnasium id for ``env_id`` (alias or id), or raise with close matches.

    ``package.module:attr`` strings are returned unchanged (resolved by :func:`make_env`).
    """
    if ":" in env_id:
        return env_id
    env_id = ENV_ALIASES.get(env_id, env_id)
    if env_id.startswith("MinAtar/"):
        _register_minatar()
    if env_id in gym.registry:
        return env_id
    _register_minatar()
    choices = list(gym.registry) + list(ENV_ALIASES)
    hint = close_matches(env_id, choices)
    did_you_mean = f" did you mean {' or '.join(repr(h) for h in hint)}?" if hint else ""
    raise ValueError(
        f"unknown env id {env_id!r};{did_you_mean} use a gymnasium id, an alias "
        f"{sorted(ENV_ALIASES)} or 'package.module:ClassOrFactory'"
    )


class MinAtarObservation(gym.ObservationWrapper[np.ndarray, int, np.ndarray]):
    """Channel-last bool MinAtar frames → channel-first float32 ``(C, 10, 10)`` in {0, 1}."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        h, w, c = env.observation_space.shape
        self.observation_space = gym.spaces.Box(0.0, 1.0, (c, h, w), np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """Transpose to channel-first and cast (bool and uint8 inputs alike)."""
        return np.ascontiguousarray(observation.transpose(2, 0, 1), dtype=np.float32)


def make_env(cfg: EnvConfig, env_id: str | None = None) -> gym.Env:
    """Build one environment for ``cfg`` (or for ``env_id`` with ``cfg``'s options).

    MinAtar games come out channel-first float32 with the full action set of ``-v0`` and a time
    limit; any other id is built by ``gymnasium.make``; ``module:attr`` is called with
    ``cfg.kwargs`` and must return a ``gymnasium.Env``.
    """
    env_id = resolve_env_id(env_id or cfg.id)
    kwargs = dict(cfg.kwargs)
    if ":" in env_id:
        factory = resolve_import(env_id)
        if not callable(factory):
            raise ValueError(f"env.id {env_id!r} is not callable")
        env = factory(**kwargs)
        if not isinstance(env, gym.Env):
            raise ValueError(f"env.id {env_id!r} returned {type(env).__name__}, not a gymnasium.Env")
        if cfg.max_episode_steps is not None:
            env = gym.wrappers.TimeLimit(env, cfg.max_episode_steps)
        return env
    try:
        if is_minatar(env_id):
            limit = cfg.max_episode_steps or MINATAR_TIME_LIMIT
            with warnings.catch_warnings():
                # -v0 is MinAtar's full 6-action set, the published setting; gymnasium flags it as
                # "out of date" only because -v1 (minimal action sets) exists.
                warnings.filterwarnings("ignore", message=".*is out of date.*")
                env = gym.make(env_id, max_episode_steps=limit, disable_env_checker=True, **kwargs)
            return MinAtarObservation(env)
        return gym.make(env_id, max_episode_steps=cfg.max_episode_steps, **kwargs)
    except TypeError as exc:
        raise ValueError(f"env.kwargs {kwargs} rejected by {env_id!r}: {exc}") from None


def _build_sub_env(
    cfg: EnvConfig, seed: int, index: int, wrap: Callable[[gym.Env, int], gym.Env] | None
) -> gym.Env:
    # Module-level (not a closure) so that the vector env pickles: checkpoints store it whole.
    env = make_env(cfg)
    if wrap is not None:
        env = wrap(env, index)
    env.action_space.seed(seed + index)
    return env


def make_vector_env(
    cfg: EnvConfig,
    seed: int,
    wrap: Callable[[gym.Env, int], gym.Env] | None = None,
) -> gym.vector.VectorEnv:
    """``cfg.num_envs`` sub-envs in a same-step-autoreset ``SyncVectorEnv`` with episode statistics.

    Args:
        cfg: the env section.
        seed: the run seed; the action spaces are seeded with ``seed + i``. The caller seeds the
            observations with ``envs.reset(seed=seed)`` (sub-env i gets ``seed + i``).
        wrap: optional ``(env, index) -> env`` applied to each sub-env (the non-stationary
            wrapper goes here).
    """
    envs = gym.vector.SyncVectorEnv(
        [functools.partial(_build_sub_env, cfg, seed, i, wrap) for i in range(cfg.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


def final_observations(next_obs: np.ndarray, infos: Mapping[str, Any], done: np.ndarray) -> np.ndarray:
    """The real next observation of every sub-env (Note [Autoreset]).

    Where a sub-env's episode ended this step, ``next_obs`` already holds the reset observation;
    its true final observation is taken from ``infos["final_obs"]``. Returns ``next_obs`` itself
    when no episode ended (no copy).
    """
    if not done.any():
        return next_obs
    real = next_obs.copy()
    final = infos["final_obs"]
    for i in np.flatnonzero(done):
        real[i] = final[i]
    return real
