"""Start, resume and dispatch a training run.

Contains:
    check_names: resolve every registry name in a config before anything is built or written.
    run_name / make_run_dir: the run folder (``runs/<env>__<agent>__<opt>__<net>__s<seed>__<time>``).
    train: new run from a config → the agent's training loop.
    resume: continue a run folder from its checkpoint (optionally with a larger ``total_steps``).
    RESUME_OVERRIDABLE: the keys that may change on resume.
    make_lr_scheduler: the configured schedule as a LambdaLR that scales every group's own lr.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import yaml

from agents.networks import NETWORKS
from envs.make import check_nonstationary, resolve_env_id
from plasticity.interventions import check_intervention
from plasticity.optimizers import OPTIMIZERS, OptimizerConfig
from plasticity.regularizers import REGULARIZERS
from trainers.checkpoint import CHECKPOINT_NAME, load_checkpoint
from trainers.config import ConfigError, ExperimentConfig, apply_overrides, config_from_dict, config_to_dict
from trainers.runlock import LOCK_NAME, lock_run_dir, unlock_run_dir

__all__ = [
    "check_names",
    "run_name",
    "make_run_dir",
    "train",
    "resume",
    "RESUME_OVERRIDABLE",
    "make_lr_scheduler",
    "TrainResult",
]

RESUME_OVERRIDABLE = ("total_steps", "checkpoint.every", "logging.every", "logging.progress")

TrainResult = dict[str, Any]


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


def run_name(cfg: ExperimentConfig) -> str:
    """``<env>__<agent>__<optimizer>__<network>__s<seed>__<YYYYmmdd-HHMMSS>`` (or logging.name)."""
    if cfg.logging.name:
        return cfg.logging.name

    def clean(text: str) -> str:
        return text.replace("/", "-").replace(":", "-")

    stamp = time.strftime("%Y%m%d-%H%M%S")
    parts = [cfg.env.id, cfg.agent.name, cfg.optimizer.name, cfg.network.name, f"s{cfg.seed}", stamp]
    return "__".join(clean(p) for p in parts)


def make_run_dir(cfg: ExperimentConfig) -> Path:
    """Create a fresh run folder, take its lock (:mod:`trainers.runlock`) and write config.yaml.

    A generated name that clashes (same second, even in another process) gets a numeric suffix;
    a ``logging.name`` whose folder already holds files, or that another process is training
    into, is an error, never silently mixed with another run. The caller holds the lock until
    the run ends (``trainers.session.Session`` releases it).
    """
    base = Path(cfg.logging.dir) / run_name(cfg)
    if cfg.logging.name is not None:
        base.mkdir(parents=True, exist_ok=True)
        lock_run_dir(base)  # before looking inside: another process may be creating the same run
        if any(p.name != LOCK_NAME for p in base.iterdir()):
            unlock_run_dir(base)
            raise ConfigError(
                f"run folder {str(base)!r} already holds a run; use --resume or another logging.name"
            )
        run_dir = base
    else:
        base.parent.mkdir(parents=True, exist_ok=True)
        run_dir, i = base, 1
        while True:
            try:
                run_dir.mkdir()  # atomic: of two processes asking for one name, one gets it
                break
            except FileExistsError:
                run_dir, i = base.with_name(f"{base.name}_{i}"), i + 1
        lock_run_dir(run_dir)
    write_config(cfg, run_dir)
    return run_dir


def write_config(cfg: ExperimentConfig, run_dir: Path) -> None:
    """The resolved config as ``run_dir/config.yaml``."""
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, total_updates: int
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """None for a constant lr; a linear decay to ``lr_end_factor`` over ``total_updates`` otherwise.

    LambdaLR multiplies each param group's own base lr, keeping per-group ratios.
    """
    if cfg.lr_schedule == "constant":
        return None
    horizon = max(total_updates, 1)
    end = cfg.lr_end_factor

    def factor(update: int) -> float:
        return 1.0 - (1.0 - end) * min(update / horizon, 1.0)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _loop_for(cfg: ExperimentConfig) -> Any:
    from trainers.off_policy import train_off_policy
    from trainers.on_policy import train_on_policy

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
        cfg = config_from_dict(apply_overrides(state["config"], overrides))
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
