"""Plasticity loss measured against its control: a fresh agent trained on the same task alone.

Contains:
    fresh_task: the task a run is the fresh control of (``nonstationary.start_task`` with a
        run of at most one task), or None for a continual run.
    control_key: the config text that pairs fresh runs with the continual run they control.
    task_evaluations: a run's evaluation returns per task, by env steps into the task.
    LossRow / plasticity_loss: fresh − continual per (method, task, seed), on the task's last
        evaluation and on the mean over its evaluations (the area under its evaluation curve).
    loss_table: the rows and their per-task means as markdown.

Note [The fresh-agent control]
    Loss of plasticity is a comparison (Lyle et al. 2023; Dohare et al. 2024): on task k, an
    agent that has trained on tasks 0..k-1 before is compared with a freshly initialised agent
    trained on task k alone for the same budget. plasticrl makes the second a run of its own: the
    continual run's config with ``nonstationary.start_task=k`` and ``total_steps`` = one task's
    steps, same seed (so the same task: game, permutation and all; :mod:`plasticrl.envs.make`).
    Tasks are ``nonstationary.every`` env steps long, so an evaluation (``eval/episodic_return``)
    is placed by its task and its steps into that task (:func:`task_evaluations`); each fresh
    evaluation is paired with the continual run's nearest in offset (within half the evaluation
    cadence). The loss on task k is

        loss_final(k) = fresh(k) − continual(k)   on the last pair inside task k
        loss_auc(k)   = mean over the pairs inside task k of fresh − continual

    (positive: the continual agent learns the task worse than a fresh one); the mean over pairs
    is the area under the evaluation curve divided by its length. A continual run's evaluation
    right after a switch (zero-shot on the new task) has no fresh counterpart and drops out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from plasticrl.trainers.config import read_run_config
from plasticrl.trainers.experiments.plot import read_scalars
from plasticrl.trainers.experiments.report import config_key

__all__ = ["fresh_task", "control_key", "task_evaluations", "LossRow", "plasticity_loss", "loss_table"]

EVAL_TAG = "eval/episodic_return"
_PAIRING_IGNORES = ("total_steps", "nonstationary.start_task")


def _task_steps(config: Mapping[str, object]) -> int | None:
    ns = config.get("nonstationary")
    return int(ns["every"]) if isinstance(ns, Mapping) and ns.get("every") else None


def fresh_task(config: Mapping[str, object]) -> int | None:
    """The task a run is the fresh control of, or None (a continual run).

    A control is a run with ``nonstationary.start_task`` set (``>= 0`` counts: task 0's control
    is a run of task 0 alone) and ``total_steps`` of at most one task (``nonstationary.every``).
    """
    ns = config.get("nonstationary")
    every = _task_steps(config)
    if not isinstance(ns, Mapping) or every is None or "start_task" not in ns:
        return None
    total = int(config.get("total_steps", 0))  # type: ignore[call-overload]
    return int(ns["start_task"]) if 0 < total <= every else None


def control_key(config: Mapping[str, object]) -> str:
    """The config minus seed, logging, length and start task: equal for a continual run and its controls."""
    return config_key(config, ignore=_PAIRING_IGNORES)


def task_evaluations(
    config: Mapping[str, object], scalars: Mapping[str, tuple[list[int], list[float]]]
) -> dict[int, dict[int, float]]:
    """Task → {env steps into the task: evaluation return} of one run (``nonstationary.every`` tasks).

    An evaluation at env step ``g`` of a run that started at task ``k0`` (``start_task``) belongs to
    task ``k0 + g // every`` at ``g % every`` steps into it: at ``g = (k + 1) · every`` the change to
    task ``k + 1`` is due, so that evaluation is of the new task (at 0 steps into it).
    """
    every = _task_steps(config)
    if every is None:
        return {}
    ns = config.get("nonstationary")
    first = int(ns.get("start_task", 0)) if isinstance(ns, Mapping) else 0
    out: dict[int, dict[int, float]] = {}
    for step, value in zip(*scalars.get(EVAL_TAG, ([], [])), strict=True):
        out.setdefault(first + step // every, {})[step % every] = value
    return out


def _pairs(
    fresh: Mapping[int, float], continual: Mapping[int, float], tolerance: int
) -> list[tuple[float, float]]:
    """(fresh, continual) returns of the evaluations at matching offsets into the task.

    Each fresh evaluation is paired with the continual one nearest in offset, within
    ``tolerance`` env steps (rollouts end at different offsets in the two runs when a task's
    length is not a multiple of the rollout); offset 0 (a continual run's zero-shot evaluation
    right after a switch) is never paired.
    """
    offsets = np.array(sorted(o for o in continual if o > 0))
    pairs = []
    for offset in sorted(o for o in fresh if o > 0):
        if offsets.size == 0:
            break
        nearest = int(offsets[np.abs(offsets - offset).argmin()])
        if abs(nearest - offset) <= tolerance:
            pairs.append((fresh[offset], continual[nearest]))
    return pairs


@dataclass(frozen=True)
class LossRow:
    """Plasticity loss on one task of one seed (Note [The fresh-agent control])."""

    method: str
    task: int
    seed: int
    fresh_final: float
    continual_final: float
    fresh_auc: float
    continual_auc: float
    evaluations: int
    """Evaluations both runs made inside the task (the AUC's points)."""

    @property
    def loss_final(self) -> float:
        """Fresh − continual on the last shared evaluation of the task."""
        return self.fresh_final - self.continual_final

    @property
    def loss_auc(self) -> float:
        """Fresh − continual on the mean of the shared evaluations of the task."""
        return self.fresh_auc - self.continual_auc


def _read(run_dir: Path) -> tuple[Mapping[str, object], dict[int, dict[int, float]]]:
    config = read_run_config(run_dir)
    return config, task_evaluations(config, read_scalars(run_dir))


def plasticity_loss(
    run_dirs: Iterable[str | Path], methods: Mapping[Path, str] | None = None
) -> list[LossRow]:
    """Pair every fresh control with its continual run (same config and seed) and compare them.

    Args:
        run_dirs: run folders, continual runs and fresh controls mixed.
        methods: a method name per continual run folder (default: the folder's name without seed
            and timestamp, as the report names methods).

    Returns:
        One row per (continual run, task) that has a control with shared evaluations, sorted by
        method, task and seed.
    """
    from plasticrl.trainers.experiments.report import method_of

    continual: dict[tuple[str, int], tuple[Path, dict[int, dict[int, float]]]] = {}
    controls: list[tuple[str, int, int, dict[int, float], int]] = []
    for run_dir in map(Path, run_dirs):
        config, evaluations = _read(run_dir)
        seed = int(config.get("seed", 0))  # type: ignore[call-overload]
        task = fresh_task(config)
        if task is None:
            continual[(control_key(config), seed)] = (run_dir, evaluations)
        elif task in evaluations:
            ev = config.get("eval")
            cadence = int(ev.get("every", 0)) if isinstance(ev, Mapping) else 0
            controls.append((control_key(config), seed, task, evaluations[task], cadence // 2))
    rows = []
    for key, seed, task, fresh, tolerance in controls:
        if (key, seed) not in continual or task not in continual[(key, seed)][1]:
            continue
        run_dir, evaluations = continual[(key, seed)]
        pairs = _pairs(fresh, evaluations[task], tolerance)
        if not pairs:
            continue
        method = (methods or {}).get(run_dir) or method_of(run_dir)
        f, c = np.array(pairs).T
        rows.append(
            LossRow(
                method, task, seed, float(f[-1]), float(c[-1]), float(f.mean()), float(c.mean()), len(pairs)
            )
        )
    return sorted(rows, key=lambda r: (r.method, r.task, r.seed))


def loss_table(rows: Sequence[LossRow]) -> str:
    """Markdown: per method and task, the seeds' mean loss (final and AUC) and its inputs."""
    lines = [
        "| method | task | seeds | fresh (last eval) | continual (last eval) | loss (last eval) "
        "| loss (AUC) | evaluations |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups: dict[tuple[str, int], list[LossRow]] = {}
    for row in rows:
        groups.setdefault((row.method, row.task), []).append(row)
    for (method, task), group in sorted(groups.items()):
        mean = {
            k: float(np.mean([getattr(r, k) for r in group]))
            for k in ("fresh_final", "continual_final", "loss_final", "loss_auc")
        }
        lines.append(
            f"| {method} | {task} | {len(group)} | {mean['fresh_final']:.2f} | {mean['continual_final']:.2f} "
            f"| {mean['loss_final']:+.2f} | {mean['loss_auc']:+.2f} | {min(r.evaluations for r in group)} |"
        )
    return "\n".join(lines)
