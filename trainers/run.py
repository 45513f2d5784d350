"""Start, resume and dispatch a training run.

Contains:
    check_names: resolve every registry name in a config before anything is built or written.
    train: new run from a config (an ``ExperimentConfig``, a YAML path or a dict, with keyword
        overrides) → the agent's training loop; ``plasticrl.train`` in Python.
    resume: continue a run folder from its checkpoint (optionally with a larger ``total_steps``).
    (a finished run's agent, ``plasticrl.load`` and ``plasticrl eval``: :mod:`plasticrl.trainers.evaluation`)
    resolve_config: what ``train`` accepts → a validated ``ExperimentConfig``.
    RESUME_OVERRIDABLE: the keys that may change on resume.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml
from plasticrl.agents.networks import NETWORKS
from plasticrl.envs.make import check_nonstationary, resolve_env_id
from plasticrl.plasticity.interventions import check_intervention
from plasticrl.plasticity.optimizers import OPTIMIZERS
from plasticrl.plasticity.registry import resolve_import
from plasticrl.plasticity.regularizers import REGULARIZERS
from plasticrl.trainers.callbacks import check_callbacks
from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, load_checkpoint
from plasticrl.trainers.config import (
    ConfigError,
    ExperimentConfig,
    applicable_only,
    apply_overrides,
    config_from_dict,
    load_config,
)
from plasticrl.trainers.logging import check_tracking
from plasticrl.trainers.runfolder import write_config
from plasticrl.trainers.runlock import lock_run_dir, run_dir_holder, unlock_run_dir
from plasticrl.trainers.session import TrainResult

__all__ = [
    "check_names",
    "check_signature",
    "check_env_observations",
    "train",
    "resume",
    "resolve_config",
    "RESUME_OVERRIDABLE",
    "TrainResult",
]

RESUME_OVERRIDABLE = ("total_steps", "checkpoint.every", "logging.every", "logging.progress")


def _cwd_on_path() -> None:
    """Let a ``package.module:attr`` name find a module in the working directory (as env ids do).

    Appended, not prepended, so a user's file never shadows an installed package.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def check_signature(kind: str, key: str, spec: str, obj: object, call: str, nargs: int) -> None:
    """Refuse a ``package.module:attr`` that imports but cannot be called as a ``kind``.

    Args:
        kind: what the attribute should be (``network factory``).
        key: the config key that named it (``network.name``).
        spec: the user's text (``mynets:build``).
        obj: what it resolved to.
        call: how plasticrl calls it, for the message (``(observation_space, action_space, cfg)``).
        nargs: how many positional arguments that call passes.

    Raises:
        ConfigError: ``obj`` is not callable, or its signature does not take ``nargs`` positional
            arguments (a builtin without a signature is let through).
    """
    if not callable(obj):
        raise ConfigError(
            f"invalid {key}: {spec!r} is not callable (it is {type(obj).__name__} {obj!r:.40}); "
            f"a {kind} must be a callable {call}",
            key=key,
        )
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*range(nargs))
    except TypeError as exc:
        raise ConfigError(
            f"invalid {key}: {spec!r} has the signature {signature}, but a {kind} is called as "
            f"{call} ({exc})",
            key=key,
        ) from None


def _check_kwargs(kind: str, key: str, spec: str, obj: Any, kwargs: Mapping[str, Any]) -> None:
    """Refuse a ``kind`` that its configured keyword arguments cannot call (``obj(**kwargs)``)."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"invalid {key}: {spec!r} has the signature {signature}, but a {kind} is called with "
            f"the entry's keyword arguments {dict(kwargs)} ({exc})",
            key=key,
        ) from None


def _keyed(key: str, check: Callable[[], Any]) -> Any:
    """Run ``check()``; a ValueError it raises becomes a ConfigError for ``key`` (to blame its source)."""
    try:
        return check()
    except ConfigError as exc:
        if exc.key is None:
            raise ConfigError(str(exc), key=key) from None
        raise
    except ValueError as exc:
        raise ConfigError(str(exc), key=key) from None


def check_names(cfg: ExperimentConfig) -> None:
    """Resolve env id, non-stationarity, network, optimizer, regularizer and intervention names.

    Interventions' options are checked too, and every ``package.module:attr`` that imports must be
    a callable of the right signature (:func:`check_signature`). Combinations that need the built
    model (a constrained network, an optimizer whose state cannot be edited) fail when the loop
    builds them, before the run folder is created. Each error carries the config key at fault
    (``ConfigError.key``), so the command line can blame the file or the override that set it.

    Raises:
        ConfigError: naming the unknown or invalid value and the valid choices.
    """
    _cwd_on_path()
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"device={cfg.device!r} but this torch has no CUDA device; use device=cpu", key="device"
        )
    _keyed("env.id", lambda: resolve_env_id(cfg.env.id))
    _keyed("nonstationary", lambda: check_nonstationary(cfg.env, cfg.nonstationary))
    _keyed("network.name", lambda: NETWORKS.check(cfg.network.name))
    if ":" in cfg.network.name:
        network = NETWORKS.get(cfg.network.name)
        call = "(observation_space, action_space, cfg) -> nn.Module"
        check_signature("network factory", "network.name", cfg.network.name, network, call, 3)
    _keyed("optimizer.name", lambda: OPTIMIZERS.check(cfg.optimizer.name))
    if ":" in cfg.optimizer.name:
        optimizer = OPTIMIZERS.get(cfg.optimizer.name)
        if not (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)):
            call = "(param_groups, cfg) -> torch.optim.Optimizer, or a torch.optim.Optimizer subclass"
            check_signature("optimizer factory", "optimizer.name", cfg.optimizer.name, optimizer, call, 2)
    for i, reg in enumerate(cfg.regularizers):
        key = f"regularizers[{i}].name"
        _keyed(key, functools.partial(REGULARIZERS.check, reg.name))
        if ":" in reg.name:
            call = "(model, param_groups, cfg) -> regularizer"
            check_signature("regularizer factory", key, reg.name, REGULARIZERS.get(reg.name), call, 3)
    for i, intervention in enumerate(cfg.interventions):
        _keyed(f"interventions[{i}]", functools.partial(check_intervention, intervention))
    _keyed("logging.wandb", lambda: check_tracking(cfg))
    _keyed("callbacks", lambda: check_callbacks(cfg.callbacks))
    for i, entry in enumerate(cfg.callbacks):
        spec, kwargs = (entry, {}) if isinstance(entry, str) else (entry["name"], dict(entry))
        kwargs.pop("name", None)
        _check_kwargs("callback factory", f"callbacks[{i}]", spec, resolve_import(spec), kwargs)


def _space_mismatch(obs: Any, space: gym.Space[Any]) -> str | None:
    """How ``obs`` breaks the dtype or shape ``space`` declares, in words; None when it does not."""
    if not isinstance(space, gym.spaces.Box | gym.spaces.MultiBinary | gym.spaces.MultiDiscrete):
        return None  # Discrete, Dict, ...: plasticrl's networks need a Box; make_env says so
    if not isinstance(obs, np.ndarray):
        return f"a {type(obs).__name__}, not a numpy array of dtype {space.dtype} and shape {space.shape}"
    problems = []
    if obs.dtype != space.dtype:
        problems.append(f"dtype {obs.dtype} where the space declares {space.dtype}")
    if obs.shape != space.shape:
        problems.append(f"shape {obs.shape} where the space declares {space.shape}")
    return " and ".join(problems) or None


def check_env_observations(cfg: ExperimentConfig) -> None:
    """Build one sub-env as the run will, reset it and step it once; refuse observations off its space.

    A network is built for the declared observation space and the replay buffer stores that dtype,
    so an env returning float64 under a float32 ``Box`` (or another shape) would fail mid-run or
    train silently on converted values. Checked before any run folder is made; the probe env is
    closed again and the run builds its own.

    Raises:
        ConfigError: naming ``env.id``, the call (reset or step), the dtype or shape it returned and
            the one its observation space declares.
    """
    from plasticrl.envs.make import build_sub_env

    try:
        env = build_sub_env(cfg.env, cfg.seed, 0, cfg.nonstationary)
    except ConfigError:
        raise
    except ValueError as exc:  # make_env's one-line errors, keyed for the blame
        message = str(exc)
        raise ConfigError(
            message, key="env.wrappers" if message.startswith("env.wrappers") else "env.id"
        ) from None
    try:
        space = env.observation_space
        obs, _ = env.reset(seed=cfg.seed)
        problem, call = _space_mismatch(obs, space), "reset()"
        if problem is None:
            obs = env.step(env.action_space.sample())[0]
            problem, call = _space_mismatch(obs, space), "step()"
    finally:
        env.close()
    if problem is not None:
        raise ConfigError(
            f"env.id={cfg.env.id!r}: {call} returned observations of {problem} ({space}); fix the "
            "env or add a wrapper (env.wrappers: [{name: DtypeObservation, dtype: ...}] for the dtype)",
            key="env.id",
        )


def _loop_for(cfg: ExperimentConfig) -> Any:
    """The training loop of ``cfg``'s agent: its class's ``loop`` (``off_policy`` or ``on_policy``)."""
    from plasticrl.agents import AGENTS
    from plasticrl.trainers.off_policy import train_off_policy
    from plasticrl.trainers.on_policy import train_on_policy

    loops = {"off_policy": train_off_policy, "on_policy": train_on_policy}
    return loops[AGENTS.get(cfg.agent.name).loop]  # type: ignore[attr-defined]


def _override_text(key: str, value: Any) -> str:
    """``key=value`` with ``value`` as one-line YAML, which the config's override parser reads back."""
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def resolve_config(
    config: ExperimentConfig | str | Path | Mapping[str, Any] | None = None, **overrides: Any
) -> ExperimentConfig:
    """A validated config from what :func:`train` accepts.

    Args:
        config: an ``ExperimentConfig``, a YAML preset's path, a nested dict of config keys, or
            None (the defaults).
        **overrides: config keys → values, applied after ``config``. A nested key is written
            with ``__`` (``optimizer__lr=1e-3``) or passed as ``**{"optimizer.lr": 1e-3}``; a
            section may be a dict (``optimizer={"name": "adamo", "lr": 1e-3}``, merged key by key).

    Raises:
        ConfigError: an unknown key, a wrong type or an invalid value (naming it).
    """
    texts = [_override_text(key.replace("__", "."), value) for key, value in overrides.items()]
    if isinstance(config, ExperimentConfig):
        if not texts:
            return config
        from plasticrl.trainers.config import config_to_dict

        return config_from_dict(apply_overrides(applicable_only(config_to_dict(config)), texts))
    if config is None or isinstance(config, str | Path):
        try:
            return load_config(config, texts)
        except ConfigError as exc:  # the overrides came as keywords here, not from a command line
            raise ConfigError(
                str(exc).replace("command-line override", "keyword override"), key=exc.key
            ) from None
    if isinstance(config, Mapping):
        try:
            return config_from_dict(apply_overrides(dict(config), texts))
        except ConfigError as exc:
            raise ConfigError(f"config dict: {exc}", key=exc.key) from None
    raise ConfigError(
        f"train() takes an ExperimentConfig, a YAML path or a dict, got {type(config).__name__}"
    )


def train(
    config: ExperimentConfig | str | Path | Mapping[str, Any] | None = None,
    *,
    quiet: bool = False,
    **overrides: Any,
) -> TrainResult:
    """Start a new run; returns its :class:`TrainResult` (``run_dir``, ``status``, ``agent``, ...).

    Examples:
        ``plasticrl.train("configs/cartpole/dqn.yaml", seed=3, total_steps=20_000)``;
        ``plasticrl.train({"env": {"id": "CartPole-v1"}, "agent": {"name": "ppo"}},
        optimizer__name="adamo", quiet=True)``.

    Args:
        config: an ``ExperimentConfig``, a YAML preset's path, a nested dict, or None (defaults).
        quiet: no progress line.
        **overrides: config keys → values (see :func:`resolve_config`).

    Raises:
        ConfigError / ValueError: a bad config (nothing is created).
    """
    cfg = resolve_config(config, **overrides)
    check_names(cfg)
    check_env_observations(cfg)
    return _loop_for(cfg)(cfg, None, None, quiet=quiet)


def resume(run_dir: str | Path, overrides: list[str] = (), *, quiet: bool = False) -> TrainResult:  # type: ignore[assignment]
    """Continue ``run_dir`` from its checkpoint; ``overrides`` may only touch RESUME_OVERRIDABLE keys.

    A finished run is extended by raising ``total_steps``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run folder {str(run_dir)!r} not found")
    for text in overrides:
        key = text.partition("=")[0].strip()
        if key not in RESUME_OVERRIDABLE:
            raise ConfigError(f"cannot change {key!r} on resume; only {list(RESUME_OVERRIDABLE)} may change")
    holder = run_dir_holder(run_dir)  # (creates nothing) a folder in use is reported before the read
    if holder is not None and holder != "this process":
        lock_run_dir(run_dir)  # raises RunFolderInUse, naming the holder
    path = run_dir / CHECKPOINT_NAME
    if not path.is_file():
        raise ConfigError(
            f"run folder {str(run_dir)!r} has no {CHECKPOINT_NAME} (stopped before its first checkpoint?); "
            "start the run again under a new name, or remove the folder"
        )
    # Read (and so validate) the checkpoint before taking the lock, so a corrupt or foreign file
    # leaves the folder as it was; re-read it if another process replaced it meanwhile.
    stamp = path.stat()
    state = load_checkpoint(path)
    lock_run_dir(run_dir)
    try:
        now = path.stat()
        if (now.st_ino, now.st_mtime_ns, now.st_size) != (stamp.st_ino, stamp.st_mtime_ns, stamp.st_size):
            state = load_checkpoint(path)
        cfg = config_from_dict(apply_overrides(applicable_only(state["config"]), overrides))
        if cfg.total_steps <= state["global_step"]:
            raise ConfigError(
                f"run {str(run_dir)!r} is already at step {state['global_step']} of "
                f"total_steps={cfg.total_steps}; pass a larger total_steps=N to extend it"
            )
        check_names(cfg)
        write_config(cfg, run_dir)
    except BaseException:
        unlock_run_dir(run_dir)
        raise
    return _loop_for(cfg)(cfg, run_dir, state, quiet=quiet)
