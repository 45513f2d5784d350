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

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from plasticrl.agents.networks import NETWORKS
from plasticrl.envs.make import check_nonstationary, resolve_env_id
from plasticrl.plasticity.interventions import check_intervention
from plasticrl.plasticity.optimizers import OPTIMIZERS
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
from plasticrl.trainers.runlock import lock_run_dir, unlock_run_dir
from plasticrl.trainers.session import TrainResult

__all__ = [
    "check_names",
    "train",
    "resume",
    "resolve_config",
    "RESUME_OVERRIDABLE",
    "TrainResult",
]

RESUME_OVERRIDABLE = ("total_steps", "checkpoint.every", "logging.every", "logging.progress")


def check_names(cfg: ExperimentConfig) -> None:
    """Resolve env id, non-stationarity, network, optimizer, regularizer and intervention names.

    Interventions' options are checked too; combinations that need the built model (a constrained
    network, an optimizer whose state cannot be edited) fail when the loop builds them, before
    the run folder is created.

    Raises:
        ValueError: naming the unknown or invalid value and the valid choices.
    """
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={cfg.device!r} but this torch has no CUDA device; use device=cpu")
    resolve_env_id(cfg.env.id)
    check_nonstationary(cfg.env, cfg.nonstationary)
    NETWORKS.check(cfg.network.name)
    OPTIMIZERS.check(cfg.optimizer.name)
    for reg in cfg.regularizers:
        REGULARIZERS.check(reg.name)
    for intervention in cfg.interventions:
        check_intervention(intervention)
    check_tracking(cfg)
    check_callbacks(cfg.callbacks)


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
    lock_run_dir(run_dir)  # before reading the checkpoint another process may be writing
    try:
        state = load_checkpoint(run_dir / CHECKPOINT_NAME)
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
