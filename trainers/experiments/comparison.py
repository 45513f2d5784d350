"""The AdamO paper's method comparison, read from the continual runs of a game sequence.

Contains:
    ArmRun / load_arm_run: one run read back: arm, seed, the game and evaluations of every task,
        and the mechanism series.
    game_scores: per arm, the (seeds x games) matrix of a score (final or AUC, each game's tasks
        averaged over the cycles that met it).
    fresh_reference: per game, the mean score of the fresh-agent controls (the normaliser).
    meeting_scores: per arm, the (seeds x games x meetings) score of each meeting of a game.
    task_means: per arm, the (seeds x tasks) matrix of a mechanism's mean inside each task.
    MECHANISMS: the mechanism curves the comparison draws, each a way to read it from a run.
    comparison_markdown / write_comparison: the tables and figures into ``--out``.
    add_compare_parser / run_compare_command: ``plasticrl compare RUN_DIR... --out DIR``.

Note [Scores per game]
    The paper's sequence cycles through games (each (game, cycle) a task of ``nonstationary.every``
    env steps, with its own observation permutation); the order is shuffled per seed, so the k-th
    task is a different game in different seeds and tasks are compared by game, not by position.
    A task's evaluations are placed by their env step (``eval/episodic_return/game_<game>``
    names the game), the one at offset 0 (zero-shot, right after the switch) left out. A run's
    **final** score on a game is the mean over the game's tasks of the last evaluation inside the
    task; its **AUC** is the mean over those tasks of the mean evaluation inside the task.
    Apart, the same scores per **meeting** (the game's first task, its second, ...) show whether
    an arm learns a game worse when it meets it again, under a new permutation.

    Games differ in scale, so the scores pooled over games are **fresh-normalised** [ours]: each
    divided by the fresh-agent controls' mean score on that game (the controls of
    :mod:`plasticrl.trainers.experiments.plasticity_loss`: freshly initialised Adam agents trained
    on one task alone for the same budget). 1.0 is what a fresh agent reaches; below it is
    plasticity lost. The IQM and its 95 % stratified-bootstrap interval (games as strata, seeds
    resampled within each) pool the (seeds x games) normalised scores
    (:func:`plasticrl.trainers.experiments.stats.stratified_bootstrap_ci`); the probability of
    improvement over the reference arm is computed on the raw per-game scores
    (:func:`plasticrl.trainers.experiments.stats.probability_of_improvement`), which no
    normaliser changes.

Note [Mechanisms per task]
    A mechanism's value on task k is the mean of its measurements inside the task (env steps in
    ``(k·every, (k+1)·every]``: the measurement at the boundary closes the task it ends). Some are
    read from one tag, others averaged over layers: the isometry gap over the hidden layers (every
    ``plasticity/isometry_gap/<net>.<i>`` but each network's last, its output layer), srank over
    the layers it is measured at. Reactivation is ``plasticity/dormant_reactivated/tau_0``: of the
    units dormant at the last task switch, the fraction that fire again (τ = 0: no activation on the
    whole probe batch).

    The two ratios drawn on a log scale, the empirical-NTK condition number and the variance of the
    layer-Jacobian σ², span orders of magnitude between probes of one task, so their means are
    **geometric** [ours]: inside a task, over seeds in the table, and the figure's line and band
    (a bootstrap of the mean log). An arithmetic mean of such a quantity is its largest probe's.
"""

from __future__ import annotations

import argparse
import math
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from plasticrl.trainers.config import read_run_config
from plasticrl.trainers.experiments.plot import (
    STEP_LABEL,
    Series,
    band_caption,
    fit_legend,
    mean_band,
    natural_key,
    palette,
    panel_figure,
    read_scalars,
    save_figure,
    seed_label,
)
from plasticrl.trainers.experiments.stats import (
    format_interval,
    format_number,
    iqm,
    probability_of_improvement,
    stratified_bootstrap_ci,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "ArmRun",
    "load_arm_run",
    "game_scores",
    "fresh_reference",
    "task_means",
    "MECHANISMS",
    "comparison_markdown",
    "write_comparison",
    "add_compare_parser",
    "run_compare_command",
]

GAME_EVAL = re.compile(r"eval/episodic_return/game_(.+)")
Which = Literal["final", "auc"]


@dataclass(frozen=True)
class ArmRun:
    """One run of the comparison, read back (Note [Scores per game]).

    Attributes:
        run_dir: the run folder.
        arm: its method label (the folder name without ``__s<seed>``, or as renamed).
        seed: its seed.
        every: env steps per task (``nonstationary.every``).
        fresh_task: the task a fresh-agent control trained on alone, or None (a continual run).
        tasks: task index → (game, {env steps into the task: evaluation return}).
        scalars: every scalar series of the run (the mechanisms read theirs from it).
    """

    run_dir: Path
    arm: str
    seed: int
    every: int
    fresh_task: int | None
    tasks: Mapping[int, tuple[str, Mapping[int, float]]]
    scalars: Mapping[str, Series] = field(default_factory=dict)

    def task_score(self, task: int, which: Which) -> float:
        """The last evaluation inside ``task`` (``final``) or their mean (``auc``); NaN if none."""
        inside = sorted((o, v) for o, v in self.tasks[task][1].items() if o > 0)
        if not inside:
            return math.nan
        return inside[-1][1] if which == "final" else float(np.mean([v for _, v in inside]))


def load_arm_run(run_dir: str | Path, arm: str | None = None) -> ArmRun:
    """Read a run folder of a task sequence (``nonstationary.every`` tasks, per-game evaluations).

    Raises:
        ValueError: no ``config.yaml``, no ``nonstationary.every``, or no per-game evaluation.
    """
    from plasticrl.trainers.experiments.plasticity_loss import fresh_task
    from plasticrl.trainers.experiments.report import method_of

    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ValueError(f"{str(run_dir)!r} has no config.yaml (not a plasticrl run folder)")
    config = read_run_config(run_dir)
    ns = config.get("nonstationary") or {}
    if not ns.get("every"):
        raise ValueError(f"run {str(run_dir)!r} has no nonstationary.every (not a task sequence)")
    every, first = int(ns["every"]), int(ns.get("start_task", 0) or 0)
    end = first + math.ceil(int(config.get("total_steps", 0)) / every)  # the evaluation at the
    scalars = read_scalars(run_dir)  # run's last step opens a task it never trained on: left out
    tasks: dict[int, tuple[str, dict[int, float]]] = {}
    for tag, (steps, values) in scalars.items():
        match = GAME_EVAL.fullmatch(tag)
        if match:
            for step, value in zip(steps, values, strict=True):
                if (task := first + step // every) < end:
                    tasks.setdefault(task, (match.group(1), {}))[1][step % every] = value
    if not tasks:
        raise ValueError(
            f"run {str(run_dir)!r} logged no eval/episodic_return/game_* (no per-game evaluation)"
        )
    return ArmRun(
        run_dir,
        arm or method_of(run_dir),
        int(config.get("seed", 0)),
        every,
        fresh_task(config),
        tasks,
        scalars,
    )


def _games(runs: Sequence[ArmRun]) -> list[str]:
    return sorted({game for r in runs for game, _ in r.tasks.values()})


def _by_arm(runs: Sequence[ArmRun]) -> dict[str, list[ArmRun]]:
    out: dict[str, list[ArmRun]] = {}
    for run in sorted(runs, key=lambda r: r.seed):
        out.setdefault(run.arm, []).append(run)
    return out


def _game_score(run: ArmRun, game: str, which: Which) -> float:
    values = [run.task_score(k, which) for k, (g, _) in run.tasks.items() if g == game]
    values = [v for v in values if math.isfinite(v)]
    return float(np.mean(values)) if values else math.nan


def game_scores(runs: Sequence[ArmRun], which: Which) -> tuple[list[str], dict[str, np.ndarray]]:
    """The games (sorted) and, per arm, its (seeds x games) scores; NaN where a seed lacks a game."""
    games = _games(runs)
    return games, {
        arm: np.array([[_game_score(r, g, which) for g in games] for r in members])
        for arm, members in _by_arm(runs).items()
    }


def meeting_scores(runs: Sequence[ArmRun], which: Which) -> tuple[list[str], dict[str, np.ndarray]]:
    """The games (sorted) and, per arm, its (seeds x games x meetings) scores, NaN-padded.

    Meeting m of a game is the run's m-th task on it, in task order (Note [Scores per game]).
    """
    games = _games(runs)

    def meetings(run: ArmRun, game: str) -> list[float]:
        return [run.task_score(k, which) for k in sorted(run.tasks) if run.tasks[k][0] == game]

    per_arm = {
        arm: [[meetings(r, g) for g in games] for r in members] for arm, members in _by_arm(runs).items()
    }
    depth = max((len(m) for rows in per_arm.values() for row in rows for m in row), default=0)
    out = {}
    for arm, rows in per_arm.items():
        matrix = np.full((len(rows), len(games), depth), np.nan)
        for i, row in enumerate(rows):
            for j, values in enumerate(row):
                matrix[i, j, : len(values)] = values
        out[arm] = matrix
    return games, out


def fresh_reference(controls: Sequence[ArmRun], which: Which) -> dict[str, float]:
    """Game → the mean score of the fresh-agent controls that trained on it (Note [Scores per game])."""
    pooled: dict[str, list[float]] = {}
    for run in controls:
        for k, (game, _) in run.tasks.items():
            if k == run.fresh_task and math.isfinite(score := run.task_score(k, which)):
                pooled.setdefault(game, []).append(score)
    return {game: float(np.mean(v)) for game, v in sorted(pooled.items())}


# ----------------------------------------------------------------------------- mechanisms


def _layer_order(layer: str) -> tuple[int, tuple[tuple[int, float | str], ...]]:
    """Sort key of a layer's path inside its network: natural order, a ``head`` always last."""
    return (1 if layer.split(".")[-1] == "head" else 0, natural_key(layer))


def _layer_mean(prefix: str, *, hidden_only: bool) -> Callable[[Mapping[str, Series]], Series]:
    """A series averaging ``<prefix>/<net>.<layer path>`` over layers (each net's output left out if asked).

    A tag's network is the first part of its layer path (``actor`` of ``actor.hidden.2.0``); its
    output layer is the one called ``head`` (the isometric MLP's) or else the last in natural
    order (``actor.9`` of an ``nn.Sequential``'s ``actor.1`` ... ``actor.9``).
    """
    pattern = re.compile(re.escape(prefix) + r"/([^./]+)\.([^/]+)")

    def read(scalars: Mapping[str, Series]) -> Series:
        nets: dict[str, dict[str, str]] = {}  # net -> layer path -> tag
        for tag in scalars:
            if m := pattern.fullmatch(tag):
                nets.setdefault(m.group(1), {})[m.group(2)] = tag
        tags = []
        for layers in nets.values():
            ordered = sorted(layers, key=_layer_order)
            tags += [layers[path] for path in (ordered[:-1] if hidden_only else ordered)]
        if not tags:
            return [], []
        steps = sorted(set.intersection(*(set(scalars[t][0]) for t in tags)))
        values = {t: dict(zip(*scalars[t], strict=True)) for t in tags}
        return steps, [float(np.mean([values[t][s] for t in tags])) for s in steps]

    return read


def _tag(tag: str) -> Callable[[Mapping[str, Series]], Series]:
    return lambda scalars: scalars.get(tag, ([], []))


@dataclass(frozen=True)
class Mechanism:
    """One mechanism curve: its title, y label, how a run's series is read, its scale, its column."""

    title: str
    ylabel: str
    read: Callable[[Mapping[str, Series]], Series]
    log: bool = False
    """Drawn on a log scale and averaged geometrically (Note [Mechanisms per task])."""
    column: str = ""
    """Its heading in the mechanisms table (the title when empty)."""


MECHANISMS: Mapping[str, Mechanism] = {
    "isometry_gap": Mechanism(
        "Isometry gap, hidden layers",
        "mean over hidden layers\nof ‖WWᵀ − I‖_F / √dim",
        _layer_mean("plasticity/isometry_gap", hidden_only=True),
        column="isometry gap",
    ),
    "jacobian_sv2_mean": Mechanism(
        "Layer-Jacobian σ², mean",
        "mean σ² of the layer Jacobians",
        _tag("plasticity/jacobian_sv2_mean"),
        column="Jacobian σ² mean",
    ),
    "jacobian_sv2_var": Mechanism(
        "Layer-Jacobian σ², variance",
        "variance of σ²",
        _tag("plasticity/jacobian_sv2_var"),
        log=True,
        column="Jacobian σ² variance",
    ),
    "ntk_condition_number": Mechanism(
        "Empirical-NTK condition number",
        "λ_max / λ_min",
        _tag("plasticity/ntk_condition_number"),
        log=True,
        column="NTK condition number",
    ),
    "dormant_fraction": Mechanism(
        "Dormant units (τ = 0)",
        "fraction of hidden units dormant",
        _tag("plasticity/dormant_fraction/tau_0"),
        column="dormant fraction (τ = 0)",
    ),
    "dormant_reactivated": Mechanism(
        "Dormant units reactivated (τ = 0)",
        "fraction of the units dormant at\nthe last switch that fire again",
        _tag("plasticity/dormant_reactivated/tau_0"),
        column="reactivated",
    ),
    "srank": Mechanism(
        "Feature rank (srank)",
        "srank of the features\n(mean over networks)",
        _layer_mean("plasticity/srank", hidden_only=False),
        column="srank",
    ),
}
"""The mechanism curves (Note [Mechanisms per task]), in the order they are drawn."""


def mean_of(values: np.ndarray, *, geometric: bool) -> float:
    """The mean of the finite ``values`` (NaN when there are none); geometric: of the positive ones.

    Example:
        >>> round(mean_of(np.array([1.0, 100.0, np.nan, -1.0]), geometric=True), 9)
        10.0
        >>> mean_of(np.array([1.0, 3.0, np.nan]), geometric=False)
        2.0
    """
    kept = values[np.isfinite(values) & (values > 0)] if geometric else values[np.isfinite(values)]
    if not kept.size:
        return math.nan
    return float(np.exp(np.log(kept).mean())) if geometric else float(kept.mean())


def _task_mean(series: Series, every: int, n_tasks: int, *, geometric: bool) -> np.ndarray:
    out = np.full(n_tasks, np.nan)
    steps, values = np.asarray(series[0]), np.asarray(series[1], dtype=float)
    for k in range(n_tasks):
        out[k] = mean_of(values[(steps > k * every) & (steps <= (k + 1) * every)], geometric=geometric)
    return out


def task_means(runs: Sequence[ArmRun], mechanism: Mechanism) -> dict[str, np.ndarray]:
    """Per arm, the (seeds x tasks) mean of a mechanism inside each task (Note [Mechanisms per task])."""
    n_tasks = max(max(r.tasks) for r in runs) + 1

    def per_task(run: ArmRun) -> np.ndarray:
        return _task_mean(mechanism.read(run.scalars), run.every, n_tasks, geometric=mechanism.log)

    return {arm: np.stack([per_task(r) for r in members]) for arm, members in _by_arm(runs).items()}


# ----------------------------------------------------------------------------- writing


def _complete(matrix: np.ndarray) -> np.ndarray:
    """The seeds (rows) with a score on every game."""
    return matrix[np.all(np.isfinite(matrix), axis=1)]


def comparison_markdown(
    runs: Sequence[ArmRun],
    controls: Sequence[ArmRun],
    reference: str,
    *,
    reps: int = 50_000,
    mechanism_means: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> str:
    """The comparison's tables: normalised IQM, probability of improvement, per-game means, mechanisms.

    ``mechanism_means``: :func:`task_means` of every mechanism, when the caller has them already.
    """
    if mechanism_means is None:
        mechanism_means = {n: task_means(runs, m) for n, m in MECHANISMS.items()}
    lines: list[str] = []
    arms = list(_by_arm(runs))
    headings: tuple[tuple[Which, str], ...] = (
        ("final", "Final: last evaluation of each task"),
        ("auc", "AUC: mean evaluation in each task"),
    )
    for which, words in headings:
        games, scores = game_scores(runs, which)
        ref = fresh_reference(controls, which)
        norm_games = [g for g in games if ref.get(g, 0.0) > 0]
        lines += [
            f"### {words}",
            "",
            f"Fresh-normalised: each game's score divided by its fresh controls' mean "
            f"({', '.join(f'{g} {ref[g]:.3g}' for g in norm_games) or 'no controls'}); "
            f"IQM over seeds x games ({len(norm_games)} games), 95 % stratified-bootstrap CI, "
            f"{reps} replicates. "
            f"P(> {reference}): probability that a run of the arm scores higher than one of {reference} "
            "on a game, averaged over games (raw scores), with its 95 % CI.",
            "",
            f"| arm | seeds | IQM, fresh-normalised | P(> {reference}) | "
            + " | ".join(f"{g} (mean)" for g in games)
            + " |",
            "|---|---:|---|---|" + "---|" * len(games),
        ]
        for arm in arms:
            matrix = _complete(scores[arm])
            cols = [games.index(g) for g in norm_games]
            norm = matrix[:, cols] / np.array([ref[g] for g in norm_games]) if cols else matrix[:, :0]
            iqm_ci = stratified_bootstrap_ci(norm, iqm, reps=reps) if norm.size else None
            poi = (
                probability_of_improvement(matrix, _complete(scores[reference]), reps=reps)
                if arm != reference
                and reference in scores
                and matrix.size
                and _complete(scores[reference]).size
                else None
            )
            means = [format_number(float(np.nanmean(scores[arm][:, j]))) for j in range(len(games))]
            lines.append(
                f"| {arm} | {matrix.shape[0]} | {format_interval(iqm_ci)} | {format_interval(poi)} | "
                + " | ".join(means)
                + " |"
            )
        lines.append("")
    games, by_meeting = meeting_scores(runs, "final")
    depth = next(iter(by_meeting.values())).shape[2] if by_meeting else 0
    if depth > 1:
        lines += [
            "### Per game, by meeting: last evaluation of the game's first → second → ... task",
            "",
            "Each cell: the mean over seeds of the raw score at the end of the game's m-th task "
            "(a new permutation each time; its position in the sequence differs between seeds); — "
            "where no seed met the game that often.",
            "",
            "| arm | " + " | ".join(games) + " |",
            "|---|" + "---|" * len(games),
        ]
        for arm in arms:
            cells = [
                " → ".join(
                    format_number(mean_of(by_meeting[arm][:, j, m], geometric=False)) for m in range(depth)
                )
                if np.isfinite(by_meeting[arm][:, j]).any()
                else "—"
                for j in range(len(games))
            ]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines.append("")
    n_tasks = max(max(r.tasks) for r in runs) + 1
    shown = (0, n_tasks // 2, n_tasks - 1)
    lines += [
        f"### Mechanisms per task: task {' → '.join(map(str, shown))} (first, middle, last)",
        "",
        "Each cell: the mean over seeds of the mechanism's mean inside the task (geometric means "
        "for the NTK condition number and the σ² variance); — where the arm has no measurement "
        "(reactivated: no unit was dormant at a switch).",
        "",
        "| arm | " + " | ".join(m.column or m.title for m in MECHANISMS.values()) + " |",
        "|---|" + "---|" * len(MECHANISMS),
    ]
    for arm in arms:
        cells = []
        for name, mechanism in MECHANISMS.items():
            per_task = mechanism_means[name].get(arm)  # (seeds x tasks), or None
            columns = [per_task[:, k] for k in shown] if per_task is not None else []
            values = [mean_of(c, geometric=mechanism.log) for c in columns]
            finite = any(math.isfinite(v) for v in values)
            cells.append(" → ".join(format_number(v) for v in values) if finite else "—")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _finish(fig: Any, axes: Sequence[Axes], title: str, path: Path, seeds: Sequence[int]) -> list[Path]:
    handles, labels = axes[0].get_legend_handles_labels()
    fit_legend(fig, handles, labels, ncols=4)
    width = int(fig.get_size_inches()[0] * 12)  # characters of a 10-pt caption per line
    fig.suptitle("\n".join([title, *textwrap.wrap(band_caption(seeds, unit="arm"), width)]), fontsize=10)
    return save_figure(fig, path)


def _per_game_curves(runs: Sequence[ArmRun], out: Path) -> list[Path]:
    """Per game: evaluation return against env steps spent on that game, cycles laid end to end."""
    games, arms = _games(runs), _by_arm(runs)
    every = runs[0].every
    fig, axes, _ = panel_figure(len(games), ncols=2, size=(4.8, 3.4), extra_height=1.6)
    colours = palette(len(arms))
    cycles = 1
    for ax, game in zip(axes, games, strict=True):
        for (arm, members), colour in zip(arms.items(), colours, strict=True):
            per_run = []
            for r in members:
                tasks = sorted(k for k, (g, _) in r.tasks.items() if g == game)
                cycles = max(cycles, len(tasks))
                per_run.append(
                    {c * every + o: v for c, k in enumerate(tasks) for o, v in r.tasks[k][1].items()}
                )
            xs = sorted({x for points in per_run for x in points})
            if not xs:
                continue
            data = np.array([[points.get(x, np.nan) for x in xs] for points in per_run])
            mean_band(
                ax, np.array(xs) / 1e6, data, colour, seed_label(arm, len(members)), seed=0, markers=True
            )
        for c in range(1, cycles):
            ax.axvline(c * every / 1e6, color="grey", linestyle="--", linewidth=0.7, alpha=0.6)
        ax.set_title(game.replace("_", " ").title(), fontsize=10)
        ax.set_xlabel(
            f"millions of {STEP_LABEL} on this game\n(its cycles end to end; dashed: the next cycle)"
        )
        ax.set_ylabel("evaluation return per episode")
        ax.grid(alpha=0.3)
    return _finish(
        fig,
        axes,
        "Evaluation return per game across cycles",
        out / "per_game_returns.png",
        [len(m) for m in arms.values()],
    )


def _mechanism_figure(
    runs: Sequence[ArmRun], out: Path, means: Mapping[str, Mapping[str, np.ndarray]]
) -> list[Path]:
    drawn = [(name, mech, means[name]) for name, mech in MECHANISMS.items()]
    drawn = [(n, m, t) for n, m, t in drawn if any(np.isfinite(v).any() for v in t.values())]
    if not drawn:
        return []
    fig, axes, _ = panel_figure(len(drawn), size=(4.8, 3.4), extra_height=1.6)
    arms = _by_arm(runs)
    colours = palette(len(arms))
    for ax, (_, mech, per_arm) in zip(axes, drawn, strict=True):
        for (arm, matrix), colour in zip(per_arm.items(), colours, strict=True):
            mean_band(
                ax,
                np.arange(matrix.shape[1]),
                matrix,
                colour,
                seed_label(arm, matrix.shape[0]),
                seed=0,
                markers=True,
                geometric=mech.log,
            )
        ax.set_title(mech.title, fontsize=10)
        ax.set_xlabel("task (k-th task of the sequence)")
        ax.set_ylabel(mech.ylabel)
        if mech.log:
            ax.set_yscale("log")
        ax.xaxis.get_major_locator().set_params(integer=True)  # type: ignore[call-arg]
        ax.grid(alpha=0.3)
    return _finish(
        fig,
        axes,
        "Mechanisms per task (mean of each task's measurements; geometric on the log axes)",
        out / "mechanisms_per_task.png",
        [len(m) for m in arms.values()],
    )


def write_comparison(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    reference: str,
    rename: Mapping[str, str] | None = None,
    reps: int = 50_000,
    command: str | None = None,
) -> list[Path]:
    """Read the runs, split continual runs from fresh controls, write ``comparison.md`` and figures.

    Args:
        run_dirs: continual runs of every arm, and the fresh-agent controls (told apart by config);
            unfinished runs (checkpoint short of ``total_steps``) are left out and listed.
        out_dir: where ``comparison.md``, ``per_game_returns.png`` and ``mechanisms_per_task.png``
            (each with its PDF) go.
        reference: the arm the probability of improvement is against (Adam).
        rename: folder label → arm name (``continual`` → ``adam``).
        reps: bootstrap replicates.
        command: the command line, written into ``comparison.md`` to reproduce it.

    Raises:
        ValueError: a run folder cannot be read, there is no continual run, or ``reference`` is
            not one of the arms.
    """
    from plasticrl.trainers.experiments.report import method_of, unfinished

    rename = rename or {}
    short = unfinished(run_dirs)
    loaded = [load_arm_run(d, rename.get(method_of(Path(d)), None)) for d in run_dirs if Path(d) not in short]
    runs = [r for r in loaded if r.fresh_task is None]
    controls = [r for r in loaded if r.fresh_task is not None]
    if not runs:
        raise ValueError("no continual run among the run folders (all are fresh-agent controls)")
    arms = list(_by_arm(runs))
    if reference not in arms:
        raise ValueError(f"--reference {reference!r} is not an arm; the arms are {', '.join(arms)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = [
        "# Method comparison",
        "",
        f"{len(runs)} continual runs of {len(arms)} arms, {len(controls)} fresh-agent controls. "
        "Definitions: `plasticrl.trainers.experiments.comparison` "
        "(Notes [Scores per game], [Mechanisms per task]).",
        "",
        *(f"- `{arm}`: seeds {[r.seed for r in members]}" for arm, members in _by_arm(runs).items()),
        *([f"- left out, unfinished: {', '.join(f'`{Path(d).name}`' for d in short)}"] if short else []),
        "",
    ]
    if command:
        text += ["Reproduce:", "", "```", command, "```", ""]
    md = out / "comparison.md"
    means = {name: task_means(runs, mech) for name, mech in MECHANISMS.items()}  # once for both
    md.write_text(
        "\n".join(text) + comparison_markdown(runs, controls, reference, reps=reps, mechanism_means=means)
    )
    return [md, *_per_game_curves(runs, out), *_mechanism_figure(runs, out, means)]


def add_compare_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``compare RUN_DIR... --out DIR [options]`` to ``plasticrl``'s subparsers."""
    parser = subparsers.add_parser(
        "compare",
        help="the paper's method comparison of game-sequence runs: per-game IQM, P(improvement), mechanisms",
        description="Read continual runs of every arm and the fresh-agent controls among RUN_DIRs,\n"
        "score each arm per game (fresh-normalised IQM over seeds x games, probability of\n"
        "improvement over --reference) and write comparison.md, per-game curves across cycles\n"
        "and the mechanisms per task into --out.",
        epilog="example:\n"
        "  plasticrl compare docs/results/plasticity_loss_adam/runs/*__s*[0-9] \\\n"
        "      docs/results/protocol_arms/runs/*__s*[0-9] --rename continual=adam --out cmp",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="continual runs and fresh controls"
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    parser.add_argument("--reference", default="adam", help="the arm P(improvement) is over (default adam)")
    parser.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="LABEL=ARM",
        help="name the runs of folder label LABEL as ARM (e.g. continual=adam); repeatable",
    )
    parser.add_argument("--reps", type=int, default=50_000, help="bootstrap replicates (default 50000)")
    return parser


def run_compare_command(args: argparse.Namespace) -> int:
    """Run ``plasticrl compare``: write the comparison and print its files.

    Raises:
        ValueError: a ``--rename`` that is not ``LABEL=ARM``, or what :func:`write_comparison` raises.
    """
    rename = {}
    for item in args.rename:
        label, sep, arm = item.partition("=")
        if not sep or not label or not arm:
            raise ValueError(f"--rename {item!r} is not LABEL=ARM")
        rename[label] = arm
    if args.reps < 1:
        raise ValueError(f"--reps {args.reps} must be >= 1")
    command = " ".join(
        ["plasticrl compare", *map(str, args.run_dirs), "--out", str(args.out), "--reference", args.reference]
        + [f"--rename {r}" for r in args.rename]
    )
    paths = write_comparison(
        args.run_dirs, args.out, reference=args.reference, rename=rename, reps=args.reps, command=command
    )
    for path in paths:
        print(path)
    return 0
