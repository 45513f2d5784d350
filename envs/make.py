"""Environment construction from config: gymnasium ids, aliases, ``module:Class``, MinAtar.

Contains:
    EnvConfig: the ``env.*`` config section.
    ENV_ALIASES: short names users may type (``breakout`` → ``MinAtar/Breakout-v0``).
    resolve_env_id: alias / id validation with close-match suggestions.
    make_env: one environment, MinAtar converted to channel-first float32, time limit applied.
    NonStationaryConfig: the ``nonstationary.*`` config section (what changes, when, how).
    change_kinds / change_options / make_change / check_nonstationary: from that section to a
        change kind object, through each kind's options dataclass (strictly); a list of kinds is a
        :class:`~plasticrl.envs.changes.Compose`. ``nonstationary_keys`` says which keys apply.
    build_sub_env: one seeded sub-env, wrapped by ``NonStationary`` when configured (vector
        envs, sync or async, are made of these: :mod:`plasticrl.envs.vector`).
    MinAtarObservation: the (10, 10, C) bool → (C, 10, 10) float32 observation wrapper; it folds
        permutations and padding into that conversion (``plasticrl.envs.nonstationary.ObservationGather``).
"""

from __future__ import annotations

import functools
import importlib
import os
import pickle
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from plasticrl.envs.changes import CHANGES, Change, Compose
from plasticrl.envs.gather import check_gather_index, gathered_space
from plasticrl.envs.nonstationary import NonStationary
from plasticrl.envs.schedules import SCHEDULES, Schedule
from plasticrl.envs.tasks import TaskSet
from plasticrl.plasticity.options import ConfigError, build_options, unknown_key
from plasticrl.plasticity.registry import close_matches

__all__ = [
    "EnvConfig",
    "NonStationaryConfig",
    "make_schedule",
    "make_change",
    "change_kinds",
    "change_options",
    "check_nonstationary",
    "nonstationary_keys",
    "ENV_ALIASES",
    "MINATAR_GAMES",
    "MINATAR_TIME_LIMIT",
    "resolve_env_id",
    "make_env",
    "import_plugins",
    "parse_wrapper",
    "apply_wrappers",
    "ClipTrainingReward",
    "FlattenObservation",
    "ClipAction",
    "MujocoState",
    "build_sub_env",
    "MinAtarObservation",
]

MINATAR_GAMES = ("asterix", "breakout", "freeway", "seaquest", "space_invaders")
ENV_ALIASES: dict[str, str] = {game: f"MinAtar/{game.title().replace('_', '')}-v0" for game in MINATAR_GAMES}
MINATAR_TIME_LIMIT = 10_000
"""Default episode cap for MinAtar [ours]: the games set no ``truncated`` themselves."""


@dataclass(frozen=True)
class EnvConfig:
    """The ``env`` section: which environment and how many copies."""

    id: str = "CartPole-v1"
    """A gymnasium id, an alias from ENV_ALIASES, ``module:EnvId`` (import the module, then make the id:
    ``minigrid:MiniGrid-Empty-5x5-v0``), or ``package.module:ClassOrFactory`` (the id is tried first).
    The working directory is searched for the module too."""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments for the env constructor (MinAtar: sticky_action_prob, difficulty_ramping)."""
    num_envs: int = 1
    """Sub-environments stepped in lockstep; one global step advances every sub-env."""
    max_episode_steps: int | None = None
    """Episode time limit; None keeps the registered one (MinAtar: MINATAR_TIME_LIMIT)."""
    vector: Literal["sync", "async", "batched"] = "sync"
    """SyncVectorEnv (one process), AsyncVectorEnv (one worker process per sub-env), or ``batched``:
    MinAtar games stepped as tensor operations for all sub-envs at once, the same game step for step
    (:mod:`plasticrl.envs.batched_minatar`; MinAtar ids only; non-stationary with ``on: step``
    and the kinds switch, permute_obs, permute_actions, reward_scale and their compositions)."""
    imports: tuple[str, ...] = ()
    """Plugin modules imported before the env is made, e.g. [ale_py, minigrid] (they register ids)."""
    wrappers: tuple[str | Mapping[str, Any], ...] = ()
    """Gymnasium wrappers applied in order, before the non-stationarity wrapper: a name from
    ``gymnasium.wrappers`` (or plasticrl's ClipTrainingReward), ``module:Class``, or ``{name: ..., <kwarg>:
    <value>, ...}``; e.g. [FlattenObservation] or [{name: FrameStackObservation, stack_size: 4}]."""

    def __post_init__(self) -> None:
        if self.num_envs < 1:
            raise ValueError(f"env.num_envs must be >= 1, got {self.num_envs}")
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ValueError(f"env.max_episode_steps must be >= 1 or null, got {self.max_episode_steps}")
        for key in ("imports", "wrappers"):
            value = getattr(self, key)
            if isinstance(value, str | Mapping) or not isinstance(value, Sequence):
                raise ValueError(f"env.{key} must be a list, got {value!r}")
            object.__setattr__(self, key, tuple(value))
        import_plugins(self.imports)
        for i, entry in enumerate(self.wrappers):
            parse_wrapper(entry, f"env.wrappers[{i}]", resolve=False)  # module:Class imports at make


@dataclass(frozen=True)
class NonStationaryConfig:
    """The ``nonstationary`` section: what changes (``kind``), when (one schedule key) and how (``on``).

    Exactly one schedule key is set when ``kind`` is: ``every``, ``at``, ``random`` or
    ``geometric``. Steps are global env steps (summed over sub-envs); every sub-env changes at the
    same global step (see :mod:`plasticrl.envs.nonstationary`, Note [Lifetime clock]). The options
    are checked, strictly, against the options dataclass of each kind (``CHANGES.options(kind)``)
    when the section is built: an unknown option key is an error naming the key, the kind and the
    kind's keys.

    Example:
        >>> cfg = NonStationaryConfig(kind=["switch", "permute_obs"], every=100,
        ...     tasks=("breakout", "asterix"), options={"switch": {"order": "shuffle"},
        ...     "permute_obs": {"mode": "channels"}})
        >>> for name, options in change_options(cfg):
        ...     print(name, options)
        switch SwitchOptions(order='shuffle', first_cycle='listed')
        permute_obs PermuteObsOptions(mode='channels', layout='chw', first_task='identity')
        >>> NonStationaryConfig(kind="switch", every=9, tasks=("breakout", "asterix"), options={"ordr": 1})
        Traceback (most recent call last):
        ...
        plasticrl.plasticity.options.ConfigError: unknown key 'nonstationary.options.ordr'; did you \
mean 'order'? valid keys of change kind 'switch': ['first_cycle', 'order']
    """

    kind: str | tuple[str, ...] | None = None
    """None (stationary); a change kind: switch, permute_obs, permute_actions, reward_scale,
    obs_noise; or a list of kinds applied together at every change, e.g. [switch, permute_obs]."""
    every: int | None = None
    """Change every N env steps."""
    at: tuple[int, ...] = ()
    """Change at these env steps (strictly increasing)."""
    random: tuple[int, int] | None = None
    """Change after intervals drawn uniformly from [low, high] env steps (seeded)."""
    geometric: float | None = None
    """Change after memoryless intervals of this mean length (seeded)."""
    on: Literal["episode", "step"] = "episode"
    """Apply a due change at the next episode boundary, or at once (truncating the episode)."""
    tasks: tuple[str, ...] = ()
    """switch: the env ids (or aliases) visited; ``env.id`` must be the first."""
    pad_to: tuple[int, ...] | None = None
    """switch: pad every task's observation to this shape (None: the largest task's, per axis);
    e.g. ``[10, 10, 10]`` for MinAtar games padded to 10 channels as in the AdamO paper."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Options of the change kind: switch {order: cycle|random|shuffle}, permute_obs {mode,
    layout}, reward_scale {scales, order}, obs_noise {scales, order}; for a list of kinds one
    mapping per kind, {switch: {order: shuffle}, permute_obs: {mode: channels}}
    (see ``plasticrl.envs.changes``)."""
    start_task: int = 0
    """Start at task k of the sequence: the task clock makes the first k changes (drawing them as a
    run from task 0 would) before the run's first step, so a run with ``start_task=k`` and
    ``total_steps`` = one task's steps trains a fresh agent on exactly the continual run's task k
    (same seed): the reset control of plasticity-loss studies (``NonStationary.skip_changes``)."""

    def __post_init__(self) -> None:
        if self.kind is None:
            return
        if not isinstance(self.start_task, int) or isinstance(self.start_task, bool) or self.start_task < 0:
            raise ValueError(f"nonstationary.start_task must be an integer >= 0, got {self.start_task!r}")
        parts = change_kinds(self.kind)
        if not isinstance(self.kind, str):
            object.__setattr__(self, "kind", parts)
        set_keys = [k for k in ("every", "at", "random", "geometric") if getattr(self, k)]
        if len(set_keys) != 1:
            raise ValueError(
                f"nonstationary.kind={self.kind!r} needs exactly one schedule key of "
                f"every, at, random, geometric; got {set_keys or 'none'}"
            )
        if "switch" in parts and len(self.tasks) < 2:
            raise ValueError(
                f"nonstationary.kind=switch needs at least two nonstationary.tasks, got {list(self.tasks)}"
            )
        if "switch" not in parts and self.tasks:
            raise ValueError(f"nonstationary.tasks is only for kind=switch, not {self.kind!r}")
        if "switch" not in parts and self.pad_to is not None:
            raise ValueError(f"nonstationary.pad_to is only for kind=switch, not {self.kind!r}")
        change_options(self)  # strict: unknown option keys and bad values stop here


def change_kinds(kind: str | Sequence[str]) -> tuple[str, ...]:
    """The change kinds of ``nonstationary.kind``: one name, or a list of two or more distinct ones.

    Raises:
        ValueError: not a name or a list of names, a list of fewer than two or with repeats, or an
            unknown name (listing the valid ones).
    """
    if isinstance(kind, str):
        parts: tuple[str, ...] = (kind,)
    elif (
        isinstance(kind, Sequence)
        and len(kind) >= 2
        and all(isinstance(k, str) for k in kind)
        and len(set(kind)) == len(kind)
    ):
        parts = tuple(kind)
    else:
        raise ValueError(
            f"nonstationary.kind must be a change kind or a list of two or more distinct ones, got {kind!r}"
        )
    for name in parts:
        CHANGES.check(name)
    return parts


def _options_class(name: str) -> type | None:
    """The options dataclass of change kind ``name`` (a ``module:Class`` kind's ``Options``, if any)."""
    if name in CHANGES:
        return CHANGES.options(name)
    return getattr(CHANGES.get(name), "Options", None)


def change_options(cfg: NonStationaryConfig) -> list[tuple[str, Any]]:
    """(kind, its options) for every kind of ``cfg``, each built strictly by its options dataclass.

    A single kind reads ``nonstationary.options`` itself; a list of kinds reads one mapping per
    kind, ``nonstationary.options.<kind>`` (a kind without one takes its defaults). A
    ``package.module:Class`` kind without an ``Options`` dataclass gets the plain mapping.

    Raises:
        ConfigError: an unknown key (naming it, the kind and the kind's keys), a value of the wrong
            type, or one that the options' validation refuses.
    """
    assert cfg.kind is not None
    parts = change_kinds(cfg.kind)
    if len(parts) == 1:
        return [(parts[0], _part_options(parts[0], cfg.options, "nonstationary.options"))]
    for key, value in cfg.options.items():
        if key not in parts:
            raise unknown_key(f"nonstationary.options.{key}", key, list(parts), f"of kinds {list(parts)}")
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"nonstationary.options.{key}: expected a mapping of {key} options, got {value!r}",
                key=f"nonstationary.options.{key}",
            )
    return [
        (name, _part_options(name, cfg.options.get(name, {}), f"nonstationary.options.{name}"))
        for name in parts
    ]


def _part_options(name: str, data: Mapping[str, Any], prefix: str) -> Any:
    options = _options_class(name)
    if options is None:
        return dict(data)
    return build_options(options, data, prefix, f"change kind {name!r}")


def nonstationary_keys(kind: str | Sequence[str] | None) -> frozenset[str]:
    """The ``nonstationary.*`` keys that apply to ``kind`` (for ``plasticrl config`` and saved configs).

    Stationary (None): ``kind`` alone. Otherwise every key but ``tasks``, which applies only when
    ``switch`` is among the kinds. The keys inside ``options`` are the fields of each kind's
    options dataclass (:func:`change_options`).
    """
    if kind is None:
        return frozenset({"kind"})
    keys = {"kind", "every", "at", "random", "geometric", "on", "options", "start_task"}
    if "switch" in change_kinds(kind):
        keys.update({"tasks", "pad_to"})
    return frozenset(keys)


def make_schedule(cfg: NonStationaryConfig) -> Schedule:
    """The schedule object of ``cfg`` (raises ValueError on bad values)."""
    if cfg.every:
        return SCHEDULES.get("every")(cfg.every)
    if cfg.at:
        return SCHEDULES.get("at")(list(cfg.at))
    if cfg.random:
        return SCHEDULES.get("random")(*cfg.random)
    if cfg.geometric:
        return SCHEDULES.get("geometric")(cfg.geometric)
    raise ValueError("nonstationary: no schedule key set (every, at, random, geometric)")


def make_change(cfg: NonStationaryConfig) -> Change[Any]:
    """The change-kind object of ``cfg``: one kind, or a :class:`Compose` of a list of kinds.

    Raises:
        ValueError: bad options (see :func:`change_options`).
    """
    changes = []
    for name, options in change_options(cfg):
        change_cls = CHANGES.get(name)
        kwargs = (
            options
            if isinstance(options, dict)
            else {f.name: getattr(options, f.name) for f in fields(options)}
        )
        try:
            changes.append(change_cls(**kwargs))
        except TypeError as exc:
            raise ValueError(f"nonstationary.options {kwargs} rejected by kind {name!r}: {exc}") from None
    return changes[0] if len(changes) == 1 else Compose(changes)


def check_nonstationary(env_cfg: EnvConfig, cfg: NonStationaryConfig) -> None:
    """Validate names, options and tasks of ``cfg`` before anything is built."""
    if cfg.kind is None:
        return
    make_change(cfg)
    make_schedule(cfg)
    if "switch" in change_kinds(cfg.kind):
        ids = [resolve_env_id(t) for t in cfg.tasks]
        if ids[0] != resolve_env_id(env_cfg.id):
            raise ValueError(
                f"nonstationary.tasks must start with env.id ({env_cfg.id!r}), got {list(cfg.tasks)}"
            )


def _register_minatar() -> None:
    if "MinAtar/Breakout-v0" not in gym.registry:
        import minatar.gym

        minatar.gym.register_envs()


def is_minatar(env_id: str) -> bool:
    """Whether ``env_id`` (after alias resolution) is a MinAtar game."""
    return env_id.startswith("MinAtar/")


def _cwd_on_path() -> None:
    """Let ``import`` find a user's own module in the working directory, as ``python -m`` would.

    The working directory is appended (not prepended) to ``sys.path``, so it never shadows an
    installed package.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def _import_module(module_name: str, key: str, value: str) -> Any:
    """Import ``module_name`` for config key ``key`` (of value ``value``), or raise one ValueError line."""
    _cwd_on_path()
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"{key}={value!r}: cannot import module {module_name!r} ({exc}); install the package that "
            f"provides it (plasticrl's extras: pip install 'plasticrl[atari]', '[minigrid]', '[mujoco]') or "
            f"put the module in the working directory"
        ) from None


def import_plugins(modules: Sequence[str]) -> None:
    """Import every module of ``env.imports`` (plugins that register gymnasium ids).

    Raises:
        ValueError: a module that cannot be imported, naming ``env.imports[i]``.
    """
    if isinstance(modules, str):
        raise ValueError(f"env.imports must be a list of module names, got {modules!r}")
    for i, name in enumerate(modules):
        if not isinstance(name, str) or not name or ":" in name:
            raise ValueError(f"env.imports[{i}]: expected a module name such as 'ale_py', got {name!r}")
        _import_module(name, f"env.imports[{i}]", name)


def _split_spec(spec: str) -> tuple[Literal["id", "attr"], str, Any]:
    """What ``module:rest`` means: an env id of the module, else an attribute of it.

    ``("id", rest, None)`` when importing ``module`` registers the gymnasium id ``rest``
    (gymnasium's own ``module:EnvId`` convention, tried first), else
    ``("attr", rest, obj)`` for the attribute ``rest`` of the module (a class or a factory).

    Raises:
        ValueError: the module cannot be imported, or it neither registers ``rest`` nor has it as an
            attribute (one line saying what each reading would have needed).
    """
    module_name, _, rest = spec.partition(":")
    if not module_name or not rest:
        raise ValueError(
            f"env.id={spec!r}: expected 'module:EnvId' (e.g. 'minigrid:MiniGrid-Empty-5x5-v0') or "
            f"'package.module:ClassOrFactory'"
        )
    module = _import_module(module_name, "env.id", spec)
    if rest in gym.registry:
        return "id", rest, None
    obj: Any = module
    for part in rest.split("."):
        if not hasattr(obj, part):
            hint = close_matches(rest, list(gym.registry))
            did_you_mean = f" (did you mean {' or '.join(repr(h) for h in hint)}?)" if hint else ""
            raise ValueError(
                f"env.id={spec!r}: neither an env id registered by importing {module_name!r}"
                f"{did_you_mean} nor a class or factory: module {module_name!r} has no attribute {rest!r}"
            )
        obj = getattr(obj, part)
    return "attr", rest, obj


def resolve_env_id(env_id: str) -> str:
    """Return the gymnasium id for ``env_id`` (alias or id), or raise with close matches.

    ``module:rest`` strings are returned unchanged once they resolve: ``rest`` is an id that importing
    ``module`` registers (tried first), or an attribute of ``module`` (made by :func:`make_env`).
    """
    if not isinstance(env_id, str):
        raise ValueError(f"env.id must be a string, got {env_id!r}")
    if ":" in env_id:
        _split_spec(env_id)
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
    plugin = ""
    namespace = env_id.split("/")[0] if "/" in env_id else env_id.split("-")[0]
    if namespace in _PLUGINS:
        module = _PLUGINS[namespace]
        plugin = f" ({namespace} ids need env.imports: [{module}], or env.id={module}:{env_id})"
    raise ValueError(
        f"unknown env id {env_id!r};{did_you_mean}{plugin} use a gymnasium id, an alias "
        f"{sorted(ENV_ALIASES)}, 'module:EnvId' (the module registers the id) or "
        f"'package.module:ClassOrFactory'"
    )


_PLUGINS = {"ALE": "ale_py", "MiniGrid": "minigrid", "BabyAI": "minigrid"}
"""Id namespaces of plugin packages, for the hint of an unknown id."""


class ClipTrainingReward(gym.Wrapper[Any, Any, Any, Any]):
    """Rewards clipped to ``[low, high]`` for training (DQN on Atari: [-1, 1], Mnih et al. 2015).

    The unclipped return and length of the episode that ends on a step go into that step's
    ``info["unclipped_episode"] = {"r": ..., "l": ...}`` (the episode statistics of the vector env
    see the clipped rewards).
    """

    def __init__(self, env: gym.Env, low: float = -1.0, high: float = 1.0) -> None:
        super().__init__(env)
        if not low < high:
            raise ValueError(f"ClipTrainingReward: low must be < high, got low={low}, high={high}")
        self.low, self.high = float(low), float(high)
        self._return, self._length = 0.0, 0

    def reset(self, **kwargs: Any) -> Any:
        """Reset the env and the episode's unclipped return."""
        self._return, self._length = 0.0, 0
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> Any:
        """Step, clip the reward, and report the unclipped episode at its end."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._return += float(reward)
        self._length += 1
        if terminated or truncated:
            info = {**info, "unclipped_episode": {"r": self._return, "l": self._length}}
        return obs, float(np.clip(reward, self.low, self.high)), terminated, truncated, info


class FlattenObservation(gym.ObservationWrapper[np.ndarray, Any, Any]):
    """Observations flattened to one vector by ``gymnasium.spaces.flatten`` (Dict, Tuple, Box, ...).

    The ``FlattenObservation`` of ``env.wrappers``: gymnasium's holds a lambda, which the
    checkpoint (it pickles the env) cannot pickle; this one does the same and pickles.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.flatten_space(env.observation_space)

    def observation(self, observation: Any) -> np.ndarray:
        """The flattened observation."""
        return gym.spaces.flatten(self.env.observation_space, observation)


class ClipAction(gym.ActionWrapper[Any, np.ndarray, np.ndarray]):
    """Box actions clipped to the action space's bounds at the env boundary (continuous PPO).

    The agent keeps (and computes log-probabilities of) the unclipped sample, as CleanRL's
    ``ppo_continuous_action``. The ``ClipAction`` of ``env.wrappers``: gymnasium's holds a lambda,
    which checkpoints cannot pickle; this one does the same and pickles.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        if not isinstance(env.action_space, gym.spaces.Box):
            raise ValueError(f"ClipAction needs a Box action space, got {env.action_space}")

    def action(self, action: np.ndarray) -> np.ndarray:
        """``action`` clipped to ``[low, high]``."""
        space = self.env.action_space
        return np.clip(action, space.low, space.high).astype(space.dtype, copy=False)


_OWN_WRAPPERS: dict[str, type] = {
    "ClipTrainingReward": ClipTrainingReward,
    "FlattenObservation": FlattenObservation,
    "ClipAction": ClipAction,
}


def _wrapper_names() -> list[str]:
    """Wrapper names ``env.wrappers`` accepts without a module: gymnasium's and plasticrl's."""
    names = [
        name
        for name in dir(gym.wrappers)
        if isinstance(getattr(gym.wrappers, name), type)
        and issubclass(getattr(gym.wrappers, name), gym.Wrapper)
    ]
    return sorted(set(names) | set(_OWN_WRAPPERS))


def parse_wrapper(entry: Any, key: str, *, resolve: bool = True) -> tuple[Any, dict[str, Any]]:
    """(wrapper class or factory, kwargs) of one ``env.wrappers`` entry.

    ``resolve=False`` (config time) checks the entry's form and plain names only and returns
    ``(None, kwargs)`` for a ``module:Class`` entry without importing it, so that a preset whose
    plugin (minigrid, ...) is not installed still loads; :func:`apply_wrappers` imports it.

    Raises:
        ValueError: not a name or a mapping with ``name``, an unknown name (with close matches and
            the valid choices), or a ``module:attr`` that does not import or is not callable.
    """
    if isinstance(entry, str):
        name, kwargs = entry, {}
    elif isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
        name = entry["name"]
        kwargs = {k: v for k, v in entry.items() if k != "name"}
    else:
        raise ValueError(
            f"{key}: expected a wrapper name or a mapping {{name: Wrapper, <kwarg>: <value>}}, got {entry!r}"
        )
    if ":" in name:
        module_name, _, attr = name.partition(":")
        if not module_name or not attr:
            raise ValueError(f"{key}: invalid wrapper {name!r}; expected a name or 'module:Class'")
        if not resolve:
            return None, kwargs
        obj: Any = _import_module(module_name, key, name)
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ValueError(f"{key}: module {module_name!r} has no attribute {attr!r} ({name!r})")
            obj = getattr(obj, part)
    elif name in _OWN_WRAPPERS:
        obj = _OWN_WRAPPERS[name]
    elif name in _wrapper_names():
        obj = getattr(gym.wrappers, name)
    else:
        valid = _wrapper_names()
        hint = close_matches(name, valid)
        did_you_mean = f" did you mean {' or '.join(repr(h) for h in hint)}?" if hint else ""
        raise ValueError(
            f"{key}: unknown wrapper {name!r};{did_you_mean} valid: 'module:Class' or one of {valid}"
        )
    if not callable(obj):
        raise ValueError(f"{key}: wrapper {name!r} is not callable")
    return obj, kwargs


def apply_wrappers(env: gym.Env, wrappers: Sequence[Any]) -> gym.Env:
    """``env`` wrapped by every entry of ``env.wrappers``, the first innermost.

    Raises:
        ValueError: a bad entry (:func:`parse_wrapper`), kwargs the wrapper rejects, or a wrapper that
            does not return a ``gymnasium.Env``.
    """
    for i, entry in enumerate(wrappers):
        key = f"env.wrappers[{i}]"
        wrapper, kwargs = parse_wrapper(entry, key)
        try:
            wrapped = wrapper(env, **kwargs)
        except TypeError as exc:
            raise ValueError(
                f"{key}: kwargs {kwargs} rejected by {getattr(wrapper, '__name__', wrapper)}: {exc}"
            ) from None
        if not isinstance(wrapped, gym.Env):
            raise ValueError(f"{key}: {wrapper!r} returned {type(wrapped).__name__}, not a gymnasium.Env")
        env = wrapped
        try:
            pickle.dumps(env)
        except (AttributeError, TypeError, pickle.PicklingError) as exc:
            raise ValueError(
                f"{key}: {getattr(wrapper, '__name__', wrapper)} cannot be pickled, and checkpoints "
                f"pickle the env ({exc}); use a wrapper class without lambdas"
            ) from None
    return env


class MinAtarObservation(gym.ObservationWrapper[np.ndarray, int, np.ndarray]):
    """Channel-last bool MinAtar frames → channel-first float32 ``(C, 10, 10)`` in {0, 1}.

    The conversion copies the frame into a channel-first buffer of the frame's dtype (through a
    transposed view), then casts the whole buffer, contiguous, to a fresh float32 array: faster
    than casting the transposed frame directly (0.76 µs instead of 0.89 µs per Breakout frame).

    Implements ``plasticrl.envs.nonstationary.ObservationGather``: the conversion copies every frame anyway,
    so a gather installed with :meth:`set_observation_gather` (a ``permute_obs`` permutation, a
    ``TaskSet``'s zero-padding) costs about what the plain conversion does (see Note [Folded
    observation gather] in :mod:`plasticrl.envs.nonstationary`). A gather that only appends zero channels
    (padding) is the buffer with extra channels that stay zero: no slower than no gather.
    """

    # Class-level defaults, so that a wrapper pickled before gathers existed unpickles without one.
    _source: np.ndarray | None = None
    """The installed gather, unless it only pads: flat indices into ``_scratch`` (frame cells,
    then the zero cell)."""
    _scratch: np.ndarray | None = None
    """float32 buffer: one frame's cells (channel-last, as MinAtar gives them) and a last cell 0."""
    _frame: np.ndarray | None = None
    """``_scratch[:-1]``, made once: slicing on every step would cost as much as the gather."""
    _planes: np.ndarray | None = None
    """Channel-first buffer of the frame's dtype, with the padding's zero channels if any."""
    _planes_in: np.ndarray | None = None
    """``_planes[:C].transpose(1, 2, 0)``: where a channel-last frame is copied (made once)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        h, w, c = env.observation_space.shape
        self.observation_space = self._plain_space = gym.spaces.Box(0.0, 1.0, (c, h, w), np.float32)
        self._set_planes(c)

    def _set_planes(self, channels: int | None) -> None:
        """Make the conversion buffer ``channels`` deep (beyond the frame's: zero padding), and its view.

        ``None`` keeps the buffer and re-makes only the frame view (after unpickling).
        """
        h, w, c = self.env.observation_space.shape
        if channels is not None:
            self._planes = np.zeros((channels, h, w), self.env.observation_space.dtype)
        self._planes_in = self._planes[:c].transpose(1, 2, 0)  # type: ignore[index]

    def set_observation_gather(self, index: np.ndarray | None) -> None:
        """From the next observation on, return ``gather(plain, index)`` (None: the plain one).

        ``plain`` is the channel-first float32 observation; see ``plasticrl.envs.nonstationary.gather``.
        ``observation_space`` becomes the gathered space.

        Raises:
            ValueError: ``index`` has entries outside ``[0, C * 10 * 10]`` or is not integer.
        """
        h, w, c = self.env.observation_space.shape
        self._source = self._scratch = self._frame = None
        if index is None:
            self._set_planes(c)
            self.observation_space = self._plain_space
            return
        size = h * w * c
        index = check_gather_index(index, size)
        self.observation_space = gathered_space(self._plain_space, index)
        pads_only = _appends_zero_channels(index, (c, h, w))
        self._set_planes(index.shape[0] if pads_only else c)
        if pads_only:
            return
        # Cell k of the plain observation is cell plain_to_frame[k] of the frame; the appended
        # `size` keeps meaning "the zero cell", the last of _scratch.
        plain_to_frame = np.arange(size, dtype=np.intp).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)
        self._source = np.append(plain_to_frame, size)[index]
        self._scratch = np.zeros(size + 1, np.float32)
        self._frame = self._scratch[:-1]

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """Copy into the channel-first buffer and cast (bool and uint8 inputs alike), or gather and cast."""
        source = self._source
        if source is None:
            self._planes_in[...] = observation  # type: ignore[index]
            return self._planes.astype(np.float32)  # type: ignore[union-attr]  # a fresh C-ordered copy
        self._frame[...] = observation.ravel()  # type: ignore[index]  # the cast, into _scratch
        return self._scratch.take(source)  # type: ignore[union-attr]

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle (or deep-copy), making the buffer views views of the new buffers again."""
        self.__dict__.update(state)
        if "_plain_space" not in state:  # pickled before gathers existed: it had none
            self._plain_space = self.observation_space
        if self._scratch is not None:
            self._frame = self._scratch[:-1]
        # A wrapper pickled before the buffer existed had none: make a plain one.
        self._set_planes(None if self._planes is not None else self._plain_space.shape[0])


def _appends_zero_channels(index: np.ndarray, plain_shape: tuple[int, int, int]) -> bool:
    """Whether gathering ``index`` from a ``plain_shape`` observation only appends zero channels."""
    size = int(np.prod(plain_shape))
    flat = index.reshape(-1)
    return (
        index.ndim == 3
        and index.shape[1:] == plain_shape[1:]
        and index.shape[0] >= plain_shape[0]
        and bool(np.array_equal(flat[:size], np.arange(size)))
        and bool((flat[size:] == size).all())
    )


def make_env(cfg: EnvConfig, env_id: str | None = None) -> gym.Env:
    """Build one environment for ``cfg`` (or for ``env_id`` with ``cfg``'s options).

    ``env.imports`` are imported first. MinAtar games come out channel-first float32 with the
    full action set of ``-v0`` and a time limit; any other id is built by ``gymnasium.make``
    (``module:EnvId`` imports the module first); ``module:attr`` is called with ``cfg.kwargs`` and
    must return a ``gymnasium.Env``. ``env.wrappers`` are then applied in order.
    """
    import_plugins(cfg.imports)
    return apply_wrappers(_make_base_env(cfg, env_id), cfg.wrappers)


BATCHED_ONLY_KWARGS = frozenset({"device", "source", "channels", "tensors"})
"""``env.kwargs`` of the batched MinAtar alone (:class:`plasticrl.envs.batched_minatar.BatchedMinAtar`):
the package's envs that a batched run evaluates on are made without them."""


def _make_base_env(cfg: EnvConfig, env_id: str | None) -> gym.Env:
    env_id = resolve_env_id(env_id or cfg.id)
    kwargs = dict(cfg.kwargs)
    if cfg.vector == "batched":
        kwargs = {key: value for key, value in kwargs.items() if key not in BATCHED_ONLY_KWARGS}
    if ":" in env_id:
        kind, rest, factory = _split_spec(env_id)
        if kind == "id":
            env_id = rest
        else:
            if not callable(factory):
                raise ValueError(f"env.id {env_id!r} is not callable")
            env = factory(**kwargs)
            if not isinstance(env, gym.Env):
                raise ValueError(f"env.id {env_id!r} returned {type(env).__name__}, not a gymnasium.Env")
            if cfg.max_episode_steps is not None:
                env = gym.wrappers.TimeLimit(env, cfg.max_episode_steps)
            return _keep_physics(env)
    try:
        if is_minatar(env_id):
            limit = cfg.max_episode_steps or MINATAR_TIME_LIMIT
            with warnings.catch_warnings():
                # -v0 is MinAtar's full 6-action set, the published setting; gymnasium flags it as
                # "out of date" only because -v1 (minimal action sets) exists.
                warnings.filterwarnings("ignore", message=".*is out of date.*")
                env = gym.make(env_id, max_episode_steps=limit, disable_env_checker=True, **kwargs)
            return MinAtarObservation(env)
        return _keep_physics(gym.make(env_id, max_episode_steps=cfg.max_episode_steps, **kwargs))
    except TypeError as exc:
        raise ValueError(f"env.kwargs {kwargs} rejected by {env_id!r}: {exc}") from None


def _keep_physics(env: gym.Env) -> gym.Env:
    """``env`` wrapped by :class:`MujocoState` when it is one of gymnasium's MuJoCo envs."""
    mujoco_env = sys.modules.get("gymnasium.envs.mujoco.mujoco_env")
    if mujoco_env is not None and isinstance(env.unwrapped, mujoco_env.MujocoEnv):
        return MujocoState(env)
    return env


class MujocoState(gym.Wrapper[Any, Any, Any, Any]):
    """Pickles a gymnasium MuJoCo env with its physics and its generator, so that it continues.

    gymnasium's MuJoCo envs pickle as their constructor arguments (``EzPickle``): an unpickled one
    is a fresh env at its initial state, so a resumed run would not continue its episodes. This
    wrapper (put on every MuJoCo env by :func:`make_env`) adds the integration state
    (``mj_getState`` with ``mjSTATE_INTEGRATION``: positions, velocities, activations, controls,
    warm start, time) and the env's generator state to the pickle and restores them.
    """

    def __getstate__(self) -> dict[str, Any]:
        import mujoco

        base: Any = self.env.unwrapped
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        physics = np.empty(mujoco.mj_stateSize(base.model, spec))
        mujoco.mj_getState(base.model, base.data, physics, spec)
        return {**self.__dict__, "_physics": physics, "_rng": base.np_random.bit_generator.state}

    def __setstate__(self, state: dict[str, Any]) -> None:
        import mujoco

        state = dict(state)
        physics, rng = state.pop("_physics"), state.pop("_rng")
        self.__dict__.update(state)
        base: Any = self.env.unwrapped
        mujoco.mj_setState(base.model, base.data, physics, mujoco.mjtState.mjSTATE_INTEGRATION)
        base.np_random.bit_generator.state = rng


def build_sub_env(
    cfg: EnvConfig,
    seed: int,
    index: int,
    nonstationary: NonStationaryConfig | None = None,
    make: Any = None,
) -> gym.Env:
    """Sub-env ``index`` of a run, as every vector env of plasticrl is made (:mod:`plasticrl.envs.vector`).

    ``make_env`` (a ``TaskSet`` of the tasks for ``switch``), wrapped by ``NonStationary`` with the
    run seed and ``clock_scale=num_envs`` when configured; its action space seeded ``seed + index``.
    Module-level, not a closure, so that vector envs built from it pickle. ``make`` replaces
    ``make_env`` as ``make(cfg, env_id=None)`` (the batched MinAtar's task clock builds its
    stand-in tasks this way, so that its task sequence is the sub-envs' by construction).
    """
    make = make_env if make is None else make
    ns = nonstationary if nonstationary is not None and nonstationary.kind is not None else None
    if ns is not None and "switch" in change_kinds(ns.kind):  # type: ignore[arg-type]
        env: gym.Env = TaskSet(list(ns.tasks), make_task=functools.partial(make, cfg), pad_to=ns.pad_to)
    else:
        env = make(cfg)
    if ns is not None:
        env = NonStationary(
            env,
            make_change(ns),
            make_schedule(ns),
            on=ns.on,
            seed=seed,
            clock_scale=cfg.num_envs,
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
        if ns.start_task:
            env.skip_changes(ns.start_task)
    env.action_space.seed(seed + index)
    return env
