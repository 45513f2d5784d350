"""Run folders: their names, their creation and the resolved config they hold.

Contains:
    run_name: ``<env>__<agent>__<optimizer>__<network>__s<seed>__<time>`` (or ``logging.name``).
    make_run_dir: create a fresh run folder atomically, take its lock and write ``config.yaml``.
    write_config: the resolved config as ``<run>/config.yaml``.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from plasticrl.trainers.config import ConfigError, ExperimentConfig, config_to_dict
from plasticrl.trainers.runlock import LOCK_NAME, lock_run_dir, unlock_run_dir

__all__ = ["run_name", "make_run_dir", "write_config"]


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
    """Create a fresh run folder, take its lock (:mod:`plasticrl.trainers.runlock`) and write config.yaml.

    A generated name that clashes (same second, even in another process) gets a numeric suffix;
    a ``logging.name`` whose folder already holds files, or that another process is training
    into, is an error, never silently mixed with another run. The caller holds the lock until
    the run ends (``plasticrl.trainers.session.Session`` releases it).
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
