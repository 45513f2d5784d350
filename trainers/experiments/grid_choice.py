"""Choosing a hyperparameter from a sweep's grid by rank, task by task (``python -m`` this module).

Contains:
    grid_scores: per (seed, task), every grid value's mean evaluation return inside that task.
    Choice / rank_choice: each value's mean rank over the (seed, task) pairs all values share.
    choice_table: the ranking as markdown.
    main: ``python -m plasticrl.trainers.experiments.grid_choice RUNS_DIR... --key optimizer.iso_coef``.

Note [Choosing by rank]
    A sweep over one key (AdamO's λ, say) on a task sequence gives, for every seed, the same tasks
    (game, permutation: the sequence depends on the seed only) to every value. Raw returns cannot
    be averaged across games of different scales, so each (seed, task) pair ranks the values by
    their score on it (rank 1: the highest), ties sharing the mean of their ranks, and the value
    with the lowest mean rank over the pairs is chosen. The score of a value on a task is the mean
    of its evaluations inside the task (the area under the task's evaluation curve over its
    length, :func:`plasticrl.trainers.experiments.plasticity_loss.task_evaluations`), leaving out
    the evaluation at offset 0, which is zero-shot on a task just switched to. Only pairs where
    every value has a score are ranked; the command leaves unfinished runs out (their checkpoint
    short of ``total_steps``), so a run still training neither counts as last nor shrinks the
    ranked pairs to its few tasks.

    ``--key method`` ranks the runs' method labels (their folder names without ``__s<seed>``)
    instead of one config key's values: the way to rank the methods of several sweeps run on the
    same seeds and setting against each other (AdamO's λ grid against the coupled penalty's, say),
    each run folder given as its own ``RUNS_DIR``'s child.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from plasticrl.trainers.config import read_run_config
from plasticrl.trainers.experiments.plasticity_loss import task_evaluations
from plasticrl.trainers.experiments.plot import read_scalars
from plasticrl.trainers.experiments.report import config_value, method_of, unfinished

__all__ = ["grid_scores", "Choice", "rank_choice", "choice_table", "main"]

Pair = tuple[int, int]
"""(seed, task)."""


METHOD = "method"
"""The ``key`` that ranks the runs' method labels rather than a config key's values."""


def grid_scores(run_dirs: Iterable[str | Path], key: str) -> dict[Pair, dict[str, float]]:
    """(seed, task) → {value of ``key`` as text: mean evaluation return inside the task}.

    Args:
        run_dirs: run folders holding ``config.yaml`` and event files.
        key: the swept config key, dotted (``optimizer.iso_coef``), or ``"method"``: each run's
            method label (its folder name without ``__s<seed>``).

    Raises:
        KeyError: a run's config lacks ``key``.
    """
    scores: dict[Pair, dict[str, float]] = {}
    for run_dir in map(Path, run_dirs):
        config = read_run_config(run_dir)
        value = method_of(run_dir) if key == METHOD else str(config_value(config, key))
        seed = int(config.get("seed", 0))
        for task, evaluations in task_evaluations(config, read_scalars(run_dir)).items():
            inside = [v for offset, v in evaluations.items() if offset > 0]
            if inside:
                scores.setdefault((seed, task), {})[value] = float(np.mean(inside))
    return scores


@dataclass(frozen=True)
class Choice:
    """One grid value's standing (Note [Choosing by rank])."""

    value: str
    mean_rank: float
    """Mean over the ranked pairs of its rank (1 = best)."""
    firsts: int
    """Pairs on which it ranked first (ties included)."""
    pairs: int
    """Pairs ranked: those every value has a score on."""


def _ranks(values: Sequence[float]) -> np.ndarray:
    """Rank 1 for the highest; tied values share the mean of the ranks they span."""
    x = np.asarray(values, dtype=float)
    return np.array([1 + np.sum(x > v) + (np.sum(x == v) - 1) / 2 for v in x])


def rank_choice(scores: Mapping[Pair, Mapping[str, float]]) -> list[Choice]:
    """Every value's mean rank over the pairs all values share, best (lowest) first.

    Values are taken from all pairs; a pair missing any of them is not ranked. Equal mean ranks
    keep the values' first-seen order.
    """
    values: list[str] = []
    for cell in scores.values():
        values.extend(v for v in cell if v not in values)
    complete = [cell for cell in scores.values() if all(v in cell for v in values)]
    if not values or not complete:
        return []
    ranks = np.array([_ranks([cell[v] for v in values]) for cell in complete])
    choices = [
        Choice(v, float(ranks[:, i].mean()), int(np.sum(ranks[:, i] == ranks.min(axis=1))), len(complete))
        for i, v in enumerate(values)
    ]
    return sorted(choices, key=lambda c: c.mean_rank)


def choice_table(choices: Sequence[Choice], key: str) -> str:
    """Markdown: value, mean rank, pairs ranked first, pairs ranked; the chosen one first."""
    lines = [f"| {key} | mean rank | ranked first | pairs |", "|---|---:|---:|---:|"]
    lines += [f"| {c.value} | {c.mean_rank:.2f} | {c.firsts} | {c.pairs} |" for c in choices]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the ranking of a grid's values (or methods) over the run folders under each RUNS_DIR."""
    parser = argparse.ArgumentParser(
        prog="python -m plasticrl.trainers.experiments.grid_choice", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "runs_dir",
        type=Path,
        nargs="+",
        help="folder of run folders (a sweep's <dir>/<name>); several: pooled",
    )
    parser.add_argument(
        "--key",
        default="optimizer.iso_coef",
        help="the swept config key (dotted), or 'method': rank the runs' method labels",
    )
    args = parser.parse_args(argv)
    run_dirs: list[Path] = []
    for runs_dir in args.runs_dir:
        found = sorted(p.parent for p in runs_dir.glob("*/config.yaml"))
        if not found:
            print(f"error: no run folders (*/config.yaml) under runs_dir {runs_dir}", file=sys.stderr)
            return 2
        run_dirs += found
    short = unfinished(run_dirs)
    if short:
        print(f"left out, unfinished: {', '.join(p.name for p in short)}\n")
        run_dirs = [p for p in run_dirs if p not in short]
    try:
        scores = grid_scores(run_dirs, args.key)
    except KeyError:
        print(f"error: --key {args.key} is not in the runs' config.yaml", file=sys.stderr)
        return 2
    choices = rank_choice(scores)
    print(choice_table(choices, args.key))
    if choices:
        print(f"\nchosen: {args.key}={choices[0].value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
