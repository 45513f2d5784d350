"""A study's report from its runs' event files (``plasticrl report RUN_DIRS... --out DIR``).

Contains:
    RunData: one run's series read back: method, seed, returns, task segments, plasticity curves.
    load_run / method_of: read a run folder; its method label (folder name without ``__s<seed>``).
    config_value: the value at a dotted key of a nested config.
    unfinished: the run folders whose checkpoint records fewer steps than their ``total_steps``.
    split_by_config: never pool runs of different configs under one label (pure).
    grouping_lines: what the report grouped, for ``report.md`` and the terminal (pure).
    task_segments: the (start, end, task id) of every task a run visited, from ``env/task_id`` (pure).
    binned_curve: per-episode returns → a curve on a fixed step grid (pure).
    segment_scores: final return and AUC of every task segment of a run (pure).
    Scores / score_table: the (method, seed, segment) scores, and the whole study's tables.
    write_report: ``report.md``, ``scores.csv`` and the PNGs into ``--out``.
    run_report_command: the ``report`` subcommand of :mod:`plasticrl.trainers.cli`.

Definitions ([ours], stated in every report):

* **Task segment k**: the k-th stretch of env steps with one task (from the run's ``env/task_id``
  changes), so a cycle that returns to a game is a new segment. Runs are aligned by segment
  index: segment k of seed 0 is compared with segment k of seed 1 even when ``on: episode`` makes
  their switch steps differ by an episode.
* **Learning curve**: each run's per-episode returns averaged into bins of ``bin`` env steps (an
  episode counts in the bin where it ended; an empty bin repeats the previous value).
* **Final return** of a segment: the mean return of the episodes that ended in its last
  ``final_fraction`` (default 20 %) of steps; **AUC**: the mean of the learning curve over the
  segment (its area divided by its length, so segments of different lengths compare).
* **Method**: the runs that share a label (the folder name without ``__s<seed>`` and a
  timestamp, or ``--group-by``'s value) *and* a resolved config minus ``seed``, ``logging``,
  ``checkpoint``, ``device`` and ``torch_threads``: runs of different configs are never pooled as
  seeds, whatever their names (a label holding several configs is split, each part labelled with
  the keys that differ). ``report.md`` lists every method with its runs, seeds and distinguishing
  keys.
* **Plasticity gap** of segment k: final return on segment k minus final return on segment 0
  (negative: the agent learns the new task less well than it learned the first).
* **IQM**: interquartile mean of a method's (seeds x segments) final returns (or AUCs), with a
  95 % stratified-bootstrap interval, segments as strata (:mod:`plasticrl.trainers.experiments.stats`,
  rliable's
  definitions). Segment 0 is included. With ``--normalize minmax`` every score is first mapped to
  [0, 1] by the min and max of that task id's scores over all runs (use it when tasks differ in
  scale, as games do).
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

import numpy as np
import yaml
from plasticrl.trainers.config import read_run_config
from plasticrl.trainers.experiments.plot import TASK_TAG, Series, read_scalars, task_boundaries
from plasticrl.trainers.experiments.stats import (
    Interval,
    bootstrap_mean_ci,
    format_interval,
    iqm,
    stratified_bootstrap_ci,
)
from plasticrl.trainers.logging import EVAL_RETURN_TAG, RETURN_TAG, UNCLIPPED_RETURN_TAG

__all__ = [
    "RETURN_KINDS",
    "CURVE_TAGS",
    "RunData",
    "Segment",
    "Scores",
    "method_of",
    "qualify_methods",
    "split_by_config",
    "config_key",
    "config_value",
    "unfinished",
    "grouping_lines",
    "IGNORED_CONFIG_KEYS",
    "load_run",
    "task_segments",
    "binned_curve",
    "segment_scores",
    "score_table",
    "normalized",
    "iqm_interval",
    "markdown_tables",
    "write_scores_csv",
    "write_report",
    "run_report_command",
]

RETURN_KINDS: Mapping[str, str] = {
    EVAL_RETURN_TAG: "evaluation episodes",
    UNCLIPPED_RETURN_TAG: "training episodes, the env's own rewards",
    RETURN_TAG: "training episodes",
}
"""The return tags the report scores, in order of preference (the first one a run logged is
used), each with the words ``report.md`` names it by.

Evaluation returns (``eval.every``) first: evaluation plays the current task apart from training,
so it is the cleaner measure. Then the env's own returns of training episodes where a wrapper
clips or normalises the rewards (Atari's clipping, MuJoCo's normalisation: papers report the
game's score, not the agent's training signal). Else the training episodes' returns."""

CURVE_TAGS: Mapping[str, str] = {
    "dormant_fraction": r"plasticity/dormant_fraction/tau_[^/]+",
    "isometry_gap": r"plasticity/isometry_gap/.+",
    "srank": r"plasticity/srank(/[^/]+)?",
}
"""Plasticity figures of the report: name → regular expression of the tags drawn, one panel each,
methods overlaid (mean over seeds with its 95 % bootstrap band)."""

Normalize = Literal["none", "minmax"]

IGNORED_CONFIG_KEYS: tuple[str, ...] = ("seed", "logging", "checkpoint", "device", "torch_threads")
"""Config keys (and sections) that do not make two runs different experiments: runs whose
resolved configs agree on every other key are seeds of one method. ``total_steps`` is not here:
runs of different lengths are not pooled."""

_SEED_SUFFIX = re.compile(r"__s(\d+)$")
_TIMESTAMP = re.compile(r"[_\-.]*\d{8}-\d{6}(_\d+)?$")


@dataclass(frozen=True)
class Segment:
    """One task segment of a run: env steps ``[start, end)`` with task ``task_id``."""

    start: int
    end: int
    task_id: int


@dataclass(frozen=True)
class RunData:
    """What the report needs of one run.

    Attributes:
        run_dir: the run folder.
        method: the group the run belongs to (:func:`method_of`, or a config key's value).
        seed: the run's seed (from its ``config.yaml``).
        total_steps: the run's configured length (from ``config.yaml``).
        last_step: the last step it logged (below ``total_steps`` while a run is unfinished; its
            last segment then ends there).
        returns: (steps, returns) of its episodes: evaluation episodes when it logged them.
        segments: its task segments, in order (one segment for a stationary run).
        curves: the other scalar series the figures draw (plasticity metrics).
        config: the run's resolved config (``config.yaml``), nested.
    """

    run_dir: Path
    method: str
    seed: int
    total_steps: int
    last_step: int
    returns: Series
    segments: tuple[Segment, ...]
    curves: Mapping[str, Series] = field(default_factory=dict)
    config: Mapping[str, object] = field(default_factory=dict)
    returns_tag: str = RETURN_TAG
    """Which of :data:`RETURN_KINDS` ``returns`` holds (the first one the run logged)."""


def method_of(run_dir: Path) -> str:
    """A run's method label: its folder name without the sweep's ``__s<seed>`` and a timestamp.

    ``plasticrl train``'s names end with ``__s<seed>__<time>``: both go, so the seeds of one
    config share a label.

    Examples:
        >>> method_of(Path("runs/study/adamo__optimizer.lr=0.001__s3"))
        'adamo__optimizer.lr=0.001'
        >>> method_of(Path("runs/breakout_adam_20260101-120000"))
        'breakout_adam'
        >>> method_of(Path("runs/CartPole-v1__dqn__adam__mlp__s2__20260101-120000_1"))
        'CartPole-v1__dqn__adam__mlp'
    """
    name = run_dir.name
    stripped = _SEED_SUFFIX.sub("", name)
    if stripped != name:
        return stripped
    unstamped = _TIMESTAMP.sub("", name)
    return _SEED_SUFFIX.sub("", unstamped) or unstamped or name


def qualify_methods(runs: Sequence[RunData]) -> list[RunData]:
    """Keep runs apart that share a method label but not a sweep: ``<sweep folder>/<label>``.

    Two sweeps with the same grid name their runs alike (``optimizer.iso_coef=1.0__s0``); a
    report over both must not pool them. A label whose runs all sit in one folder is left as it
    is; a label found in several folders gets each run's parent folder name as a prefix.

    Example:
        >>> runs = [RunData(Path(p), "x", 0, 1, 1, ([], []), ()) for p in ("a/x__s0", "b/x__s0")]
        >>> [r.method for r in qualify_methods(runs)]
        ['a/x', 'b/x']
    """
    folders: dict[str, set[Path]] = {}
    for run in runs:
        folders.setdefault(run.method, set()).add(run.run_dir.resolve().parent)
    return [
        dataclasses.replace(run, method=f"{run.run_dir.resolve().parent.name}/{run.method}")
        if len(folders[run.method]) > 1
        else run
        for run in runs
    ]


def _flat(tree: object, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, Mapping) and tree:
        out: dict[str, object] = {}
        for key, value in tree.items():
            out |= _flat(value, f"{prefix}{key}.")
        return out
    return {prefix[:-1]: tree}


def _relevant(config: Mapping[str, object], ignore: Sequence[str] = ()) -> dict[str, object]:
    """The flattened config without :data:`IGNORED_CONFIG_KEYS` and ``ignore`` (keys and whole sections)."""
    dropped = (*IGNORED_CONFIG_KEYS, *ignore)
    flat = _flat(config).items()
    return {k: v for k, v in flat if not any(k == i or k.startswith(i + ".") for i in dropped)}


def config_key(config: Mapping[str, object], ignore: Sequence[str] = ()) -> str:
    """A canonical text of a run's config minus :data:`IGNORED_CONFIG_KEYS`: equal iff same experiment.

    ``ignore`` drops more keys or sections (the fresh-agent control ignores the run's length and
    start task: :func:`plasticrl.trainers.experiments.plasticity_loss.control_key`).

    Example:
        >>> a = config_key({"seed": 0, "optimizer": {"lr": 0.1}})
        >>> a == config_key({"optimizer": {"lr": 0.1}, "seed": 4}), a
        (True, '{optimizer.lr: 0.1}')
    """
    return yaml.safe_dump(_relevant(config, ignore), sort_keys=True, default_flow_style=True).strip()


def _short(value: object) -> str:
    text = yaml.safe_dump(value, default_flow_style=True).strip() if not isinstance(value, str) else value
    return text.removesuffix("\n...").strip()


def split_by_config(runs: Sequence[RunData], ignore: Sequence[str] = ()) -> list[RunData]:
    """Keep runs of different configs apart even when they share a method label.

    A label whose runs have one config (minus :data:`IGNORED_CONFIG_KEYS`) is left as it is. A
    label holding several configs becomes one group per config, each labelled with the keys on
    which that label's configs differ: ``dqn [optimizer.lr=0.001]``, ``dqn [optimizer.lr=0.0001]``.
    (Two seed-0 runs of different learning rates are never reported as "2 seeds".) ``ignore``
    names keys (or sections) the researcher declares immaterial (``plasticrl report --pool-over``).

    Example:
        >>> runs = [RunData(Path(f"r{i}"), "dqn", 0, 1, 1, ([], []), (), config={"optimizer": {"lr": lr}})
        ...         for i, lr in enumerate((0.1, 0.1, 0.01))]
        >>> [r.method for r in split_by_config(runs)]
        ['dqn [optimizer.lr=0.1]', 'dqn [optimizer.lr=0.1]', 'dqn [optimizer.lr=0.01]']
    """
    configs: dict[str, dict[str, dict[str, object]]] = {}
    for run in runs:
        configs.setdefault(run.method, {})[config_key(run.config, ignore)] = _relevant(run.config, ignore)
    out = []
    for run in runs:
        variants = configs[run.method]
        if len(variants) == 1:
            out.append(run)
            continue
        keys = sorted({k for flat in variants.values() for k in flat})
        differing = [
            k for k in keys if len({_short(flat.get(k, "<unset>")) for flat in variants.values()}) > 1
        ]
        mine = variants[config_key(run.config, ignore)]
        detail = ", ".join(f"{k}={_short(mine.get(k, '<unset>'))}" for k in differing)
        out.append(dataclasses.replace(run, method=f"{run.method} [{detail}]"))
    return out


def grouping_lines(runs: Sequence[RunData], ignore: Sequence[str] = ()) -> list[str]:
    """What the report grouped: one line per method (runs, seeds, folder, keys that set it apart).

    A method is the runs that share a label and a config minus :data:`IGNORED_CONFIG_KEYS`; the
    line names the config keys whose values differ between methods (the comparison the report
    makes), says when two labels hold the same config (two sweeps, say: kept apart, never
    pooled across names), and warns when a seed occurs twice in one method. ``ignore``: as in
    :func:`split_by_config`.
    """
    grouped: dict[str, list[RunData]] = {}
    for run in runs:
        grouped.setdefault(run.method, []).append(run)
    flats = {m: _relevant(members[0].config, ignore) for m, members in grouped.items()}
    keys = sorted({k for flat in flats.values() for k in flat})
    differing = [k for k in keys if len({_short(flat.get(k, "<unset>")) for flat in flats.values()}) > 1]
    lines = []
    for method, members in grouped.items():
        seeds = sorted(r.seed for r in members)
        parents = sorted({str(r.run_dir.parent) for r in members})
        text = f"- `{method}`: {len(members)} run{'s' if len(members) != 1 else ''}, seeds {seeds}"
        text += f", in {', '.join(f'`{p}`' for p in parents)}"
        if differing:
            text += "; " + ", ".join(f"{k}={_short(flats[method].get(k, '<unset>'))}" for k in differing)
        twins = [
            m
            for m in grouped
            if m != method
            and config_key(grouped[m][0].config, ignore) == config_key(members[0].config, ignore)
        ]
        if twins:
            text += f" (same config as {', '.join(f'`{m}`' for m in twins)}: kept apart by name)"
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            text += f" (**seed {', '.join(map(str, repeated))} repeated**: same config run twice)"
        lines.append(text)
    return lines


def config_value(config: Mapping[str, object], key: str) -> object:
    """The value at dotted ``key`` of a nested config (``optimizer.iso_coef``); KeyError if absent."""
    node: object = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def unfinished(run_dirs: Sequence[str | Path]) -> list[Path]:
    """The folders whose checkpoint (or its committed sidecar) records fewer steps than ``total_steps``.

    Runs still training or interrupted: analyses that compare whole runs (a grid's ranking, the
    method comparison) leave them out rather than score their missing tasks. A folder without any
    checkpoint record counts as unfinished too: every run writes one at its end
    (``checkpoint.every`` or not), so it is a run still in its first checkpoint period, or one that
    crashed before it.
    """
    from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, recorded_summary

    out = []
    for run_dir in map(Path, run_dirs):
        summary = recorded_summary(run_dir / CHECKPOINT_NAME) or {}
        total = int(read_run_config(run_dir).get("total_steps", 0))
        if int(summary.get("global_step", -1)) < total:
            out.append(run_dir)
    return out


def load_run(run_dir: str | Path, *, group_by: str | None = None) -> RunData:
    """Read one run folder (event files and ``config.yaml``).

    Args:
        run_dir: a run folder written by ``plasticrl train`` or ``plasticrl sweep``.
        group_by: a dotted config key whose value is the run's method (default: :func:`method_of`).

    Raises:
        ValueError: no such folder, no event files, no ``config.yaml``, no episode finished, or
            ``group_by`` names no key of the run's config.
    """
    run_dir = Path(run_dir)
    scalars = read_scalars(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ValueError(f"{str(run_dir)!r} has no config.yaml (not a plasticrl run folder)")
    config = read_run_config(run_dir)
    returns_tag = next((tag for tag in RETURN_KINDS if scalars.get(tag, ([], []))[0]), None)
    if returns_tag is None:
        raise ValueError(f"run {str(run_dir)!r} logged no {RETURN_TAG} (no episode finished)")
    method = method_of(run_dir)
    if group_by is not None:
        try:
            method = f"{group_by}={config_value(config, group_by)}"
        except KeyError:
            raise ValueError(f"--group-by {group_by!r}: no such key in {config_path}") from None
    last = max(max(steps) for steps, _ in scalars.values() if steps)
    total = int(config.get("total_steps", 0)) or last
    last = min(last, total)
    from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, recorded_summary

    summary = recorded_summary(run_dir / CHECKPOINT_NAME)  # a committed run keeps only the sidecar
    if summary is not None:
        last = max(last, min(total, int(summary.get("global_step", 0))))
    task = scalars.get(TASK_TAG, ([], []))
    patterns = [re.compile(p) for p in CURVE_TAGS.values()]
    curves = {t: s for t, s in scalars.items() if any(p.fullmatch(t) for p in patterns)}
    return RunData(
        run_dir=run_dir,
        method=method,
        seed=int(config.get("seed", 0)),
        total_steps=total,
        last_step=last,
        returns=scalars[returns_tag],
        segments=tuple(task_segments(task[0], task[1], last)),
        curves=curves,
        config=config,
        returns_tag=returns_tag,
    )


# ----------------------------------------------------------------------------- pure parts


def task_segments(steps: Sequence[int], task_ids: Sequence[float], total_steps: int) -> list[Segment]:
    """The task segments of a run from its ``env/task_id`` points.

    Args:
        steps: the steps of the ``env/task_id`` points (logged at the first step and at each change).
        task_ids: their values.
        total_steps: where the last segment ends.

    Returns:
        Segments covering ``[0, total_steps)`` in order; one segment of task 0 without points.

    Example:
        >>> [(s.start, s.end, s.task_id) for s in task_segments([1, 250, 500, 700], [0, 1, 0, 1], 700)]
        [(0, 250, 0), (250, 500, 1), (500, 700, 0)]
    """
    if not steps:
        return [Segment(0, total_steps, 0)]
    order = sorted(range(len(steps)), key=lambda i: steps[i])
    first = int(task_ids[order[0]])
    # A change at or after the run's end (the schedule's step == total_steps) opens no segment.
    bounds = [b for b in task_boundaries(steps, task_ids) if b < total_steps]
    ids = [first]
    for b in bounds:  # the id in force at each boundary: the last point logged at that step
        ids.append(int([task_ids[i] for i in order if steps[i] <= b][-1]))
    starts = [0, *bounds]
    ends = [*bounds, max(total_steps, bounds[-1] + 1 if bounds else total_steps)]
    return [Segment(s, e, t) for s, e, t in zip(starts, ends, ids, strict=True)]


def binned_curve(
    steps: Sequence[int],
    values: Sequence[float],
    bin_steps: int,
    total_steps: int,
    last_step: int | None = None,
) -> np.ndarray:
    """Per-episode returns → the mean return of the episodes ending in each bin of ``bin_steps``.

    Bin ``i`` covers env steps ``(i * bin_steps, (i + 1) * bin_steps]``; there are
    ``ceil(total_steps / bin_steps)`` bins. An empty bin repeats the previous bin's value (NaN
    before the first episode, and from the first bin starting at or after ``last_step``, where an
    unfinished run has no data yet).

    Example:
        >>> binned_curve([5, 8, 25], [1.0, 3.0, 7.0], 10, 50, last_step=35).tolist()
        [2.0, 2.0, 7.0, 7.0, nan]
    """
    if bin_steps < 1:
        raise ValueError(f"bin must be >= 1 env step, got {bin_steps}")
    n = max(1, math.ceil(total_steps / bin_steps))
    sums = np.zeros(n)
    counts = np.zeros(n)
    for s, v in zip(steps, values, strict=True):
        i = min(max(math.ceil(s / bin_steps) - 1, 0), n - 1)
        sums[i] += v
        counts[i] += 1
    out = np.full(n, np.nan)
    last = np.nan
    for i in range(n):
        if counts[i]:
            last = sums[i] / counts[i]
        out[i] = last
    if last_step is not None:
        out[np.arange(n) * bin_steps >= last_step] = np.nan
    return out


def segment_scores(
    run: RunData, curve: np.ndarray, bin_steps: int, final_fraction: float = 0.2
) -> list[tuple[float, float]]:
    """(final return, AUC) of each of ``run``'s task segments (definitions: module docstring).

    Args:
        run: the run.
        curve: its :func:`binned_curve` with ``bin_steps``.
        bin_steps: the curve's bin width.
        final_fraction: the share of a segment's steps whose episodes make its final return.

    Returns:
        One (final, auc) per segment; NaN where the segment holds no finished episode.
    """
    if not 0.0 < final_fraction <= 1.0:
        raise ValueError(f"final fraction must be in (0, 1], got {final_fraction}")
    steps = np.asarray(run.returns[0])
    values = np.asarray(run.returns[1])
    centres = (np.arange(curve.size) + 1) * bin_steps  # a bin's value is known at its end
    out = []
    for seg in run.segments:
        tail_start = seg.end - final_fraction * (seg.end - seg.start)
        tail = values[(steps > tail_start) & (steps <= seg.end)]
        if tail.size == 0:  # no episode ended in the tail: the last one of the segment, if any
            inside = values[(steps > seg.start) & (steps <= seg.end)]
            tail = inside[-1:]
        final = float(tail.mean()) if tail.size else math.nan
        in_segment = curve[(centres > seg.start) & (centres <= seg.end)]
        in_segment = in_segment[np.isfinite(in_segment)]
        auc = float(in_segment.mean()) if in_segment.size else math.nan
        out.append((final, auc))
    return out


@dataclass(frozen=True)
class Scores:
    """Every run's per-segment scores, grouped by method.

    Attributes:
        methods: method labels in first-seen order.
        runs: the runs of each method, ordered by seed.
        final / auc: method → (seeds, segments) matrices (NaN where a run has fewer segments).
        task_ids: method → the task id of each segment (from its first run).
        curves: method → (seeds, bins) learning curves.
        bin_steps: the curves' bin width.
    """

    methods: tuple[str, ...]
    runs: Mapping[str, tuple[RunData, ...]]
    final: Mapping[str, np.ndarray]
    auc: Mapping[str, np.ndarray]
    task_ids: Mapping[str, tuple[int, ...]]
    curves: Mapping[str, np.ndarray]
    bin_steps: int


def score_table(
    runs: Sequence[RunData], *, bin_steps: int | None = None, final_fraction: float = 0.2
) -> Scores:
    """Group runs by method and score every segment.

    Args:
        runs: the runs (any order; several methods).
        bin_steps: the learning-curve bin; default 1/100 of the longest run (at least 1 step).
        final_fraction: see :func:`segment_scores`.
    """
    if not runs:
        raise ValueError("report needs at least one run")
    longest = max(r.total_steps for r in runs)
    bin_steps = bin_steps or max(1, longest // 100)
    grouped: dict[str, list[RunData]] = {}
    for run in runs:
        grouped.setdefault(run.method, []).append(run)
    finals: dict[str, np.ndarray] = {}
    aucs: dict[str, np.ndarray] = {}
    curves: dict[str, np.ndarray] = {}
    ids: dict[str, tuple[int, ...]] = {}
    ordered: dict[str, tuple[RunData, ...]] = {}
    for method, members in grouped.items():
        members.sort(key=lambda r: r.seed)
        ordered[method] = tuple(members)
        n_seg = max(len(r.segments) for r in members)
        finals[method] = np.full((len(members), n_seg), np.nan)
        aucs[method] = np.full((len(members), n_seg), np.nan)
        curves[method] = np.stack(
            [binned_curve(*r.returns, bin_steps, longest, r.last_step) for r in members]
        )
        for i, run in enumerate(members):
            for k, (final, auc) in enumerate(
                segment_scores(run, curves[method][i], bin_steps, final_fraction)
            ):
                finals[method][i, k] = final
                aucs[method][i, k] = auc
        ids[method] = tuple(s.task_id for s in max(members, key=lambda r: len(r.segments)).segments)
    return Scores(tuple(grouped), ordered, finals, aucs, ids, curves, bin_steps)


def normalized(scores: Scores, which: Literal["final", "auc"], how: Normalize) -> dict[str, np.ndarray]:
    """``scores.final`` or ``scores.auc``, min-max normalised per task id over all runs if asked."""
    table = scores.final if which == "final" else scores.auc
    if how == "none":
        return {m: v.copy() for m, v in table.items()}
    bounds: dict[int, list[float]] = {}
    for m, matrix in table.items():
        for k, task in enumerate(scores.task_ids[m]):
            bounds.setdefault(task, []).extend(matrix[:, k][np.isfinite(matrix[:, k])].tolist())
    out = {}
    for m, matrix in table.items():
        norm = matrix.copy()
        for k, task in enumerate(scores.task_ids[m]):
            values = bounds.get(task) or [0.0]
            lo, hi = min(values), max(values)
            norm[:, k] = (matrix[:, k] - lo) / (hi - lo) if hi > lo else 0.0
        out[m] = norm
    return out


def iqm_interval(matrix: np.ndarray, *, reps: int, seed: int) -> Interval | None:
    """IQM with its stratified-bootstrap 95 % CI over the complete segments (no NaN) of ``matrix``."""
    complete = matrix[:, np.all(np.isfinite(matrix), axis=0)]
    if complete.size == 0:
        return None
    return stratified_bootstrap_ci(complete, iqm, reps=reps, seed=seed)


# ----------------------------------------------------------------------------- writing


def _mean_ci(column: np.ndarray, seed: int) -> Interval | None:
    values = column[np.isfinite(column)]
    if values.size == 0:
        return None
    mean, low, high = bootstrap_mean_ci(values[:, None], seed=seed)
    return Interval(float(mean[0]), float(low[0]), float(high[0]))


def markdown_tables(scores: Scores, *, normalize: Normalize = "none", reps: int = 50_000) -> str:
    """The report's tables as markdown: IQM per method, then per-segment final return, AUC, gap."""
    lines: list[str] = []
    n_seg = max(v.shape[1] for v in scores.final.values())
    seg_header = " | ".join(f"seg {k} (task {_task_of(scores, k)})" for k in range(n_seg))
    final_n = normalized(scores, "final", normalize)
    auc_n = normalized(scores, "auc", normalize)
    unit = "normalised score" if normalize == "minmax" else "return"
    lines += [
        f"### IQM over seeds x task segments ({unit}; 95 % stratified-bootstrap CI, {reps} replicates)",
        "",
        "| method | seeds | IQM final return | IQM AUC | IQM final return, segments >= 1 |",
        "|---|---|---|---|---|",
    ]
    for m in scores.methods:
        later = iqm_interval(final_n[m][:, 1:], reps=reps, seed=0) if final_n[m].shape[1] > 1 else None
        lines.append(
            f"| {m} | {len(scores.runs[m])} | {format_interval(iqm_interval(final_n[m], reps=reps, seed=0))} "
            f"| {format_interval(iqm_interval(auc_n[m], reps=reps, seed=0))} | {format_interval(later)} |"
        )
    for title, table in (
        ("Final return per task segment (mean over seeds, 95 % bootstrap CI)", scores.final),
        ("AUC (mean return over the segment) per task segment", scores.auc),
    ):
        lines += ["", f"### {title}", "", f"| method | {seg_header} |", "|---|" + "---|" * n_seg]
        for m in scores.methods:
            cells = [
                format_interval(_mean_ci(table[m][:, k], k)) if k < table[m].shape[1] else "—"
                for k in range(n_seg)
            ]
            lines.append(f"| {m} | {' | '.join(cells)} |")
    if n_seg > 1:
        lines += [
            "",
            "### Plasticity gap: final return on segment k minus on segment 0 (mean over seeds, 95 % CI)",
            "",
            f"| method | {' | '.join(f'seg {k}' for k in range(1, n_seg))} |",
            "|---|" + "---|" * (n_seg - 1),
        ]
        for m in scores.methods:
            f = scores.final[m]
            cells = [
                format_interval(_mean_ci(f[:, k] - f[:, 0], k)) if k < f.shape[1] else "—"
                for k in range(1, n_seg)
            ]
            lines.append(f"| {m} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _task_of(scores: Scores, k: int) -> str:
    ids = {scores.task_ids[m][k] for m in scores.methods if k < len(scores.task_ids[m])}
    return ",".join(str(i) for i in sorted(ids))


def write_scores_csv(scores: Scores, path: Path) -> Path:
    """One row per (run, segment): method, seed, run folder, segment, task, start, end, final, auc."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["method", "seed", "run_dir", "segment", "task_id", "start", "end", "final_return", "auc"]
        )
        for m in scores.methods:
            for i, run in enumerate(scores.runs[m]):
                for k, seg in enumerate(run.segments):
                    writer.writerow(
                        [m, run.seed, run.run_dir, k, seg.task_id, seg.start, seg.end]
                        + [f"{scores.final[m][i, k]:.6g}", f"{scores.auc[m][i, k]:.6g}"]
                    )
    return path


def write_report(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    group_by: str | None = None,
    bin_steps: int | None = None,
    final_fraction: float = 0.2,
    normalize: Normalize = "none",
    reps: int = 50_000,
    command: str | None = None,
    groups_out: TextIO | None = None,
    pool_over: Sequence[str] = (),
) -> list[Path]:
    """Read the runs and write ``report.md``, ``scores.csv`` and the figures into ``out_dir``.

    ``groups_out`` (the command's stderr) also gets :func:`grouping_lines`, so the terminal says
    which runs were pooled before anyone opens the report. ``pool_over`` names config keys (or
    sections) on which runs may differ and still be seeds of one method, beyond
    :data:`IGNORED_CONFIG_KEYS`: a key added to the framework after older runs were made, say,
    which they lack and newer ones hold at its default. ``report.md`` lists them.

    Returns:
        The written paths (report.md first).

    Raises:
        ValueError: no runs, a bad run folder (named), a bad option value.
    """
    from plasticrl.trainers.experiments.figures import write_figures

    if not run_dirs:
        raise ValueError("report needs at least one run folder")
    if normalize not in ("none", "minmax"):
        raise ValueError(f"--normalize must be one of ['none', 'minmax'], got {normalize!r}")
    runs = [load_run(d, group_by=group_by) for d in run_dirs]
    if group_by is None:
        runs = qualify_methods(runs)
    runs = split_by_config(runs, pool_over)
    if groups_out is not None:
        lines = grouping_lines(runs, pool_over)
        print(f"report: {len(runs)} runs in {len(lines)} method(s):", file=groups_out)
        for line in lines:
            print("  " + line.removeprefix("- ").replace("`", "").replace("**", ""), file=groups_out)
    scores = score_table(runs, bin_steps=bin_steps, final_fraction=final_fraction)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = write_figures(scores, out)
    csv_path = write_scores_csv(scores, out / "scores.csv")
    seeds = sorted({r.seed for r in runs})
    text = [
        "# Report",
        "",
        f"{len(runs)} runs, {len(scores.methods)} methods, seeds {seeds}; learning-curve bin "
        f"{scores.bin_steps} env steps; final return = episodes ending in the last "
        f"{final_fraction:.0%} of a segment. Definitions: `trainers/experiments/report.py`.",
        "",
        "Returns: "
        + "; ".join(
            f"{n} run(s) on {RETURN_KINDS[tag]} (`{tag}`)"
            for tag, n in sorted(collections.Counter(r.returns_tag for r in runs).items())
        )
        + ".",
    ]
    text += [
        "",
        "## Groups",
        "",
        "Runs are pooled as seeds of one method only when their resolved configs agree on every key "
        f"but {', '.join(f'`{k}`' for k in (*IGNORED_CONFIG_KEYS, *pool_over))}"
        + (f" (`{'`, `'.join(pool_over)}` by `--pool-over`)" if pool_over else "")
        + (f" (labelled by `{group_by}`)" if group_by else " (labelled by folder name without seed)")
        + "; the keys that differ between methods follow each:",
        "",
        *grouping_lines(runs, pool_over),
    ]
    unfinished = [r for r in runs if r.last_step < r.total_steps]
    if unfinished:
        text += ["", "**Unfinished runs** (scored up to their last logged step):"]
        text += [f"- `{r.run_dir}`: step {r.last_step} of {r.total_steps}" for r in unfinished]
    if command:
        text += ["", "Reproduce:", "", "```", command, "```"]
    text += ["", markdown_tables(scores, normalize=normalize, reps=reps)]
    pngs = [p for p in figures if p.suffix == ".png"]
    text += ["## Figures", "", "Each figure is also written as a PDF beside its PNG.", ""]
    text += [f"![{p.stem}]({p.name})" for p in pngs]
    report = out / "report.md"
    report.write_text("\n".join(text) + "\n")
    return [report, csv_path, *figures]


# ----------------------------------------------------------------------------- command line


def _runs_argument(dirs: Sequence[Path]) -> str:
    """``parent/*`` when ``dirs`` are every run folder of one parent, else the folders themselves."""
    parents = {d.parent for d in dirs}
    if len(parents) == 1:
        parent = parents.pop()
        if {p for p in parent.iterdir() if p.is_dir()} == set(dirs):
            return f"{parent}/*"
    return " ".join(str(d) for d in dirs)


def run_report_command(args: argparse.Namespace) -> int:
    """Run ``plasticrl report``; prints the written paths; returns 0."""
    import shlex
    import sys

    dirs = [Path(p) for p in args.run_dirs if Path(p).is_dir()]  # a shell glob also matches *.log
    if not dirs:
        raise ValueError(f"no run folders among {args.run_dirs}")
    if args.reps < 1:
        raise ValueError(f"--reps must be >= 1, got {args.reps}")
    command = None
    if sys.argv[1:2] == ["report"]:  # the console script: record the command, runs as parent/* if all
        options = [shlex.quote(a) for a in sys.argv[2:] if a not in args.run_dirs]
        command = " ".join(["plasticrl", "report", _runs_argument(dirs), *options])
    for path in write_report(
        dirs,
        args.out,
        group_by=args.group_by,
        bin_steps=args.bin,
        final_fraction=args.final_fraction,
        normalize=args.normalize,
        reps=args.reps,
        command=command,
        groups_out=sys.stderr,
        pool_over=tuple(args.pool_over or ()),
    ):
        print(path)
    return 0
