"""Start, resume and dispatch a training run.

Contains:
    check_names: resolve every registry name in a config before anything is built or written.
    train: new run from a config → the agent's training loop.
    resume: continue a run folder from its checkpoint (optionally with a larger ``total_steps``).
    RESUME_OVERRIDABLE: the keys that may change on resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from plasticrl.agents.networks import NETWORKS
from plasticrl.envs.make import check_nonstationary, resolve_env_id
from plasticrl.plasticity.interventions import check_intervention
from plasticrl.plasticity.optimizers import OPTIMIZERS
from plasticrl.plasticity.regularizers import REGULARIZERS
from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, load_checkpoint
from plasticrl.trainers.config import (
    ConfigError,
    ExperimentConfig,
    applicable_only,
    apply_overrides,
    config_from_dict,
)
from plasticrl.trainers.runfolder import write_config
from plasticrl.trainers.runlock import lock_run_dir, unlock_run_dir
from plasticrl.trainers.session import TrainResult

__all__ = [
    "check_names",
    "train",
    "resume",
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


def _loop_for(cfg: ExperimentConfig) -> Any:
    from plasticrl.trainers.off_policy import train_off_policy
    from plasticrl.trainers.on_policy import train_on_policy

    loops = {"dqn": train_off_policy, "ppo": train_on_policy}
    return loops[cfg.agent.name]


def train(cfg: ExperimentConfig, *, quiet: bool = False) -> TrainResult:
    """Start a new run of ``cfg``; returns the loop's summary (``run_dir``, ``global_step``, ...)."""
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
