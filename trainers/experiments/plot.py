"""Figures of runs from their TensorBoard event files (``plasticrl plot``).

Contains:
    DEFAULT_TAGS: the figures :func:`plot_runs` draws by default: PNG stem → tag pattern.
    read_scalars: every scalar series of one run folder, every point kept.
    task_boundaries: the steps at which a task-id series changes value (pure).
    moving_average: the trailing mean of a series (pure).
    run_labels: short legend labels from run folder names (pure).
    natural_key / palette: tag sort order with numbers as numbers; n colour-blind-safe colours.
    tag_title / axis_label / FIGURE_TITLES: what a figure says instead of a raw tag (pure).
    fit_legend / save_figure: a figure legend that never leaves the figure; PNG and PDF.
    panel_figure / mean_band / seed_label / band_caption: a grid of panels (and a task strip under
        a lone one); a mean over seeds with its 95 % bootstrap band; a legend label with its seed
        count; the caption saying what the band is and over how many seeds.
    plot_runs: the figures (returns, dormant fractions, srank, isometry gaps) of one or more runs.
    run_plot_command: the ``plot`` subcommand of :mod:`plasticrl.trainers.cli`.

Figures are meant to go into a paper as they are: every axis is labelled with its quantity and
unit (env steps on x), titles are words (``Dormant units, τ = 0.025``, not the tag), the palette
is Okabe–Ito (colour-blind safe), task switches are dashed vertical lines with a legend entry,
the task id is drawn as a step function under the returns, the legend sits below the panels and
is kept inside the figure, and every figure is written as PNG and PDF. Every figure overlays the
runs, one colour per run, with a legend of :func:`run_labels`; every subplot marks each run's
task boundaries (changes of its ``env/task_id`` scalar) as light dashed vertical lines in the
run's colour. A figure is written only when at least one run has one of its tags. Matplotlib
(the Agg canvas, never a display) and TensorBoard are imported on first use, so importing this
module (as the CLI does) costs nothing.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DEFAULT_TAGS",
    "TASK_TAG",
    "EVENT_GLOB",
    "read_scalars",
    "task_boundaries",
    "moving_average",
    "run_labels",
    "natural_key",
    "palette",
    "OKABE_ITO",
    "FIGURE_TITLES",
    "STEP_LABEL",
    "tag_title",
    "axis_label",
    "fit_legend",
    "save_figure",
    "panel_figure",
    "mean_band",
    "seed_label",
    "seeds_text",
    "band_caption",
    "plot_runs",
    "run_plot_command",
]

DEFAULT_TAGS: Mapping[str, str] = MappingProxyType(
    {
        "episodic_return": r"charts/episodic_return",
        "dormant_fraction": r"plasticity/dormant_fraction/tau_[^/]+",
        "srank": r"plasticity/srank(/[^/]+)?",
        "isometry_gap": r"plasticity/isometry_gap/.+",
    }
)
"""Figure name (the PNG is ``<name>.png``) → a regular expression that scalar tags must match in
full; each matching tag is one subplot, in natural order (``tau_0 < tau_0.025 < tau_0.1``,
``2 < 10``). The dormant totals (not their per-layer tags), the feature rank (per head when the
network has several heads) and every layer's isometry gap."""

TASK_TAG = "env/task_id"
"""The scalar whose changes are the task boundaries."""

STEP_LABEL = "environment steps"
"""The x-axis label of every curve (steps summed over sub-envs)."""

OKABE_ITO: tuple[str, ...] = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#000000",  # black
    "#F0E442",  # yellow (last: weak on white)
)
"""Okabe & Ito's colour-blind-safe palette (Color Universal Design, 2008), in the order used."""

FIGURE_TITLES: Mapping[str, str] = MappingProxyType(
    {
        "episodic_return": "Episodic return",
        "dormant_fraction": "Dormant units (unit-weighted fraction over hidden layers)",
        "srank": "Feature rank of the penultimate layer (srank)",
        "isometry_gap": "Isometry gap of each layer",
    }
)
"""Figure name → its title in words (a name not here gets its words: ``ntk_rank`` → ``Ntk rank``)."""

_METRIC_WORDS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        # tag stem → (title words, y-axis label with its unit)
        "charts/episodic_return": ("Episodic return", "return per episode (sum of rewards)"),
        "charts/episodic_length": ("Episode length", "episode length (env steps)"),
        "charts/SPS": ("Throughput", "env steps per second"),
        "charts/learning_rate": ("Learning rate", "learning rate"),
        "charts/epsilon": ("Exploration ε", "ε (probability of a random action)"),
        "eval/episodic_return": ("Greedy evaluation return", "return per episode (sum of rewards)"),
        "env/task_id": ("Task", "task id"),
        "plasticity/dormant_fraction": ("Dormant units", "fraction of units dormant"),
        "plasticity/dormant_persistent": ("Persistently dormant units", "fraction of units dormant"),
        "plasticity/dormant_reactivated": (
            "Dormant units reactivated after a task switch",
            "fraction of the dormant units reactivated",
        ),
        "plasticity/srank": ("Feature rank (srank)", "srank (dimensions)"),
        "plasticity/effective_rank": ("Effective rank of the features", "effective rank (dimensions)"),
        "plasticity/feature_norm": ("Feature norm", "mean ‖feature‖₂"),
        "plasticity/isometry_gap": ("Isometry gap", "‖G − sI‖_F / √dim"),
        "plasticity/weight_norm": ("Weight norm", "‖W‖_F"),
        "plasticity/weight_dist_init": ("Distance to initial weights", "‖W − W₀‖_F"),
        "plasticity/weight_sv_max": ("Largest singular value", "σ_max(W)"),
        "plasticity/weight_sv_min": ("Smallest singular value", "σ_min(W)"),
        "plasticity/stable_rank": ("Stable rank", "‖W‖_F² / σ_max² (dimensions)"),
        "plasticity/jacobian_sv2_mean": ("Layer-Jacobian σ², mean", "mean σ² of the layer Jacobian"),
        "plasticity/jacobian_sv2_var": ("Layer-Jacobian σ², variance", "variance of σ²"),
        "plasticity/grad_norm": ("Gradient norm", "‖∇θ L‖₂"),
        "plasticity/param_rms": ("Parameter RMS", "RMS of the parameters"),
        "plasticity/ntk_condition_number": ("NTK condition number", "λ_max / λ_min of the empirical NTK"),
        "plasticity/ntk_rank": ("NTK rank", "rank of the empirical NTK"),
        "plasticity/ntk_effective_rank": ("NTK effective rank", "effective rank of the empirical NTK"),
        "plasticity/ntk_lambda_max": ("NTK largest eigenvalue", "λ_max of the empirical NTK"),
        "plasticity/sqrt_v_mean": ("Adam √v, mean", "√v (second-moment estimate)"),
        "plasticity/sqrt_v_max": ("Adam √v, largest", "√v (second-moment estimate)"),
        "plasticity/sqrt_v_min": ("Adam √v, smallest", "√v (second-moment estimate)"),
        "env/task_id_step": ("Task", "task id"),
        "losses/td_loss": ("TD loss", "TD loss"),
        "losses/q_values": ("Q-values", "mean Q(s, a)"),
        "losses/value_loss": ("Value loss", "value loss"),
        "losses/policy_loss": ("Policy loss", "policy loss"),
        "losses/entropy": ("Policy entropy", "entropy (nats)"),
        "losses/approx_kl": ("Approximate KL", "KL(π_old ‖ π) (nats)"),
    }
)

EVENT_GLOB = "events.out.tfevents.*"
"""TensorBoard event files in a run folder."""

_SMOOTHED_PREFIX = "charts/episodic_"  # per-episode series: raw points faint plus a moving average
_WORD = re.compile(r"\d{8}-\d{6}[_\-.]*|[^_\-.]+[_\-.]*|[_\-.]+")  # a timestamp is one word
_TIMESTAMP = re.compile(r"(^|[_\-.]+)\d{8}-\d{6}(_\d+)?(?=$|[_\-.])")  # run_name's stamp (+ clash suffix)

Series = tuple[list[int], list[float]]
"""(steps, values) of one scalar tag, in step order."""


# ----------------------------------------------------------------------------- reading


def _event_files(run_dir: Path) -> list[Path]:
    """The event files of ``run_dir``; ValueError naming the folder when it has none."""
    if not run_dir.is_dir():
        raise ValueError(f"run folder {str(run_dir)!r} not found")
    files = sorted(run_dir.glob(EVENT_GLOB))
    if not files:
        hint = ""
        if any(run_dir.glob(f"*/{EVENT_GLOB}")):  # a folder of runs, such as runs/
            hint = f"; its subfolders hold runs: pass them ({run_dir / '*'})"
        raise ValueError(f"no TensorBoard event files ({EVENT_GLOB}) in {str(run_dir)!r}{hint}")
    return files


def read_scalars(run_dir: str | Path) -> dict[str, Series]:
    """Every scalar tag of a run folder with all its points (no reservoir sampling).

    Several event files (a resumed run) are read as one run; points a crashed run logged after
    its checkpoint are dropped by the resumed writer's purge step, as in TensorBoard.

    Args:
        run_dir: a run folder holding ``events.out.tfevents.*`` files.

    Returns:
        tag → (steps, values), stably sorted by step.

    Raises:
        ValueError: the folder does not exist or holds no event file (the message names it).
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(run_dir)
    _event_files(run_dir)
    guidance = {"scalars": 0, "tensors": 1, "histograms": 1, "images": 1, "audio": 1, "distributions": 1}
    acc = EventAccumulator(str(run_dir), size_guidance=guidance)
    acc.Reload()
    out: dict[str, Series] = {}
    for tag in acc.Tags()["scalars"]:
        points = sorted(((e.step, e.value) for e in acc.Scalars(tag)), key=lambda p: p[0])
        out[tag] = ([int(s) for s, _ in points], [float(v) for _, v in points])
    return out


# ----------------------------------------------------------------------------- pure helpers


def task_boundaries(steps: Sequence[int], task_ids: Sequence[float]) -> list[int]:
    """The steps at which the task id changes: each point whose id differs from the point before.

    Points are taken in step order (stable for equal steps, so a finished episode's task logged
    before the new task at the same step gives a boundary at that step). Non-finite ids are
    skipped. A return to an earlier task (a cycle) is a boundary too.

    Args:
        steps: the steps of the ``env/task_id`` points.
        task_ids: their values.

    Returns:
        The boundary steps, ascending (a step appears once even if the id changes twice there).

    Example:
        >>> task_boundaries([0, 10, 20, 30, 40, 50], [0, 0, 1, 1, 0, 2])
        [20, 40, 50]
        >>> task_boundaries([], [])
        []
    """
    if len(steps) != len(task_ids):
        raise ValueError(f"steps and task_ids differ in length: {len(steps)} != {len(task_ids)}")
    points = sorted(
        ((int(s), float(t)) for s, t in zip(steps, task_ids, strict=True) if math.isfinite(float(t))),
        key=lambda p: p[0],
    )
    out: list[int] = []
    for (_, before), (step, now) in zip(points, points[1:], strict=False):
        if now != before and (not out or out[-1] != step):
            out.append(step)
    return out


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start); same length as ``values``.

    Example:
        >>> moving_average([1.0, 3.0, 5.0, 7.0], 2)
        [1.0, 2.0, 4.0, 6.0]
    """
    if window < 1:
        raise ValueError(f"moving-average window must be >= 1, got {window}")
    out: list[float] = []
    total = 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def run_labels(names: Sequence[str]) -> list[str]:
    """Short, distinct legend labels: what differs between run folder names.

    Names are split into words at ``_``, ``-`` and ``.`` (separators kept; a timestamp is one
    word); the words every name
    starts with and ends with are dropped, then ``run_name``'s timestamp (``20250101-120000``,
    ``_1`` clash suffix included) if the labels stay distinct and non-empty without it. One name,
    or names that would become empty or equal, are kept whole.

    Example:
        >>> run_labels([
        ...     "CartPole-v1__dqn__adam__mlp__s0__20250101-120000",
        ...     "CartPole-v1__dqn__adam__mlp__s1__20250101-120005",
        ... ])
        ['s0', 's1']
        >>> run_labels(["breakout_adam", "breakout_sgd"]), run_labels(["only__one"])
        (['adam', 'sgd'], ['only__one'])
    """
    names = list(names)
    if len(names) < 2 or len(set(names)) < len(names):
        return names
    words = [re.findall(_WORD, n) for n in names]
    shortest = min(len(w) for w in words)
    head = 0
    while head < shortest - 1 and all(w[head] == words[0][head] for w in words):
        head += 1
    tail = 0
    while tail < shortest - head - 1 and all(w[-1 - tail] == words[0][-1 - tail] for w in words):
        tail += 1
    labels = ["".join(w[head : len(w) - tail]).strip("_-.") for w in words]
    if any(not label for label in labels) or len(set(labels)) < len(labels):
        return names
    unstamped = [_TIMESTAMP.sub("", label).strip("_-.") for label in labels]
    if all(unstamped) and len(set(unstamped)) == len(unstamped):
        return unstamped
    return labels


def natural_key(text: str) -> tuple[tuple[int, float | str], ...]:
    """Sort key with numbers compared as numbers (``tau_0.025 < tau_0.1``, ``layer2 < layer10``)."""
    parts = re.split(r"(\d+(?:\.\d+)?)", text)
    return tuple((0, float(p)) if i % 2 else (1, p) for i, p in enumerate(parts) if p)


def _finite(series: Series) -> Series:
    """The points of ``series`` with finite values (an infinite NTK condition number is a gap)."""
    steps, values = series
    kept = [(s, v) for s, v in zip(steps, values, strict=True) if math.isfinite(v)]
    return [s for s, _ in kept], [v for _, v in kept]


# ----------------------------------------------------------------------------- figures


def _run_names(run_dirs: Sequence[Path]) -> list[str]:
    """Folder names; ``parent/name`` where two runs share a folder name."""
    names = [p.resolve().name for p in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [f"{p.resolve().parent.name}/{p.resolve().name}" for p in run_dirs]


def palette(n: int) -> list[Any]:
    """``n`` distinct colour-blind-safe colours: Okabe–Ito up to 8, then samples of viridis.

    Viridis is perceptually uniform and readable with every common colour-vision deficiency;
    past 8 lines no palette keeps every pair apart, so say so in the caption or split the figure.

    Example:
        >>> palette(2)
        ['#0072B2', '#E69F00']
    """
    if n <= len(OKABE_ITO):
        return list(OKABE_ITO[:n])
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.92 * i / (n - 1)) for i in range(n)]  # stop before viridis' pale yellow


def _stem_and_rest(tag: str) -> tuple[str, list[str]]:
    """The longest known stem of ``tag`` (:data:`_METRIC_WORDS`) and the parts after it."""
    parts = tag.split("/")
    for cut in range(len(parts), 0, -1):
        stem = "/".join(parts[:cut])
        if stem in _METRIC_WORDS:
            return stem, parts[cut:]
    return "", parts


def _words(text: str) -> str:
    return text.replace("_", " ").strip().capitalize()


def tag_title(tag: str) -> str:
    """A panel title in words for a scalar tag (the tag's τ, layer or task as words too).

    Examples:
        >>> tag_title("plasticity/dormant_fraction/tau_0.025")
        'Dormant units, τ = 0.025'
        >>> tag_title("plasticity/dormant_fraction/tau_0/q.2")
        'Dormant units, τ = 0, layer q.2'
        >>> tag_title("plasticity/isometry_gap/actor.0"), tag_title("charts/episodic_return/task_3")
        ('Isometry gap, layer actor.0', 'Episodic return, task 3')
        >>> tag_title("plasticity/srank/critic"), tag_title("custom/my_metric")
        ('Feature rank (srank), head critic', 'My metric (custom)')
    """
    stem, rest = _stem_and_rest(tag)
    if not stem:
        return f"{_words(rest[-1])} ({'/'.join(rest[:-1])})" if len(rest) > 1 else _words(rest[0])
    title = _METRIC_WORDS[stem][0]
    for i, part in enumerate(rest):
        if part.startswith("tau_"):
            title += f", τ = {part[4:]}"
        elif part.startswith("task_"):
            title += f", task {part[5:]}"
        elif stem == "plasticity/srank" or stem == "plasticity/effective_rank":
            title += f", head {part}"
        else:
            title += f", layer {'/'.join(rest[i:])}"
            break
    return title


def axis_label(tag: str) -> str:
    """The y-axis label (quantity and unit) of a scalar tag.

    Examples:
        >>> axis_label("plasticity/dormant_fraction/tau_0.1/fc"), axis_label("charts/episodic_return")
        ('fraction of units dormant', 'return per episode (sum of rewards)')
        >>> axis_label("custom/my_metric")
        'my metric'
    """
    stem, rest = _stem_and_rest(tag)
    if stem:
        return _METRIC_WORDS[stem][1]
    return rest[-1].replace("_", " ")


def fit_legend(fig: Any, handles: Sequence[Any], labels: Sequence[str], *, ncols: int, **kwargs: Any) -> Any:
    """A figure legend below the panels that stays inside the figure.

    Labels longer than 48 characters are wrapped; if the legend is still wider than the figure,
    it is redrawn with fewer columns, down to one, and then the figure is widened to fit it. The
    result is checked on the drawn figure (the renderer's extents), so no label is ever cut off.

    Returns:
        The legend.
    """
    import textwrap

    wrapped = ["\n".join(textwrap.wrap(label, 48)) or label for label in labels]
    cols = max(1, min(ncols, len(wrapped)))
    while True:
        legend = fig.legend(handles, wrapped, loc="outside lower center", ncols=cols, frameon=False, **kwargs)
        fig.canvas.draw()
        box, frame = legend.get_window_extent(), fig.bbox
        if box.x0 >= frame.x0 - 0.5 and box.x1 <= frame.x1 + 0.5:
            return legend
        if cols > 1:
            legend.remove()
            cols = max(1, cols - 1) if cols <= 3 else max(1, cols // 2)
            continue
        width, height = fig.get_size_inches()
        fig.set_size_inches(width * box.width / frame.width + 0.3, height)
        fig.canvas.draw()
        return legend


def save_figure(fig: Any, png: Path, *, dpi: int = 100) -> list[Path]:
    """Write ``fig`` as ``png`` and as the PDF beside it (vector, for a paper); returns both paths."""
    png.parent.mkdir(parents=True, exist_ok=True)
    pdf = png.with_suffix(".pdf")
    fig.savefig(png, dpi=dpi)
    fig.savefig(pdf, metadata={"CreationDate": None})  # no timestamp: identical bytes on a rerun
    return [png, pdf]


def panel_figure(
    panels: int,
    *,
    ncols: int = 3,
    size: tuple[float, float] = (5.0, 3.4),
    extra_height: float = 0.8,
    strip_height: float = 0.0,
) -> tuple[Figure, list[Axes], Axes | None]:
    """A constrained-layout figure of ``panels`` panels of ``size`` inches, ``ncols`` to a row.

    ``extra_height`` inches are added for the title and the legend below. With ``strip_height``
    and a lone panel, a strip of that height sits under it on the same x axis (the task id as a
    step function) and is returned third; otherwise the third value is None. Unused cells of the
    grid are hidden. The figure draws on the Agg canvas, whatever matplotlib's default backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = max(1, min(panels, ncols))
    nrows = math.ceil(panels / ncols)
    strip = strip_height > 0 and panels == 1
    width, height = size
    fig = Figure(
        figsize=(width * ncols, height * nrows + extra_height + strip_height * strip), layout="constrained"
    )
    FigureCanvasAgg(fig)
    if strip:
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[height, strip_height])
        return fig, [top], bottom
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels], None


def mean_band(
    ax: Axes,
    x: np.ndarray,
    curves: np.ndarray,
    colour: Any,
    label: str | None,
    *,
    seed: int,
    markers: bool = False,
    geometric: bool = False,
) -> None:
    """The mean of ``curves`` (seeds x points) over seeds, shaded by its 95 % bootstrap CI.

    One seed draws the line alone (no interval from one sample). ``seed`` seeds the bootstrap.
    ``geometric``: the geometric mean and its interval (the bootstrap of the mean log; values
    that are not positive are left out), for a quantity drawn on a log scale.
    """
    import numpy as np
    from plasticrl.trainers.experiments.stats import bootstrap_mean_ci

    if geometric:
        logs = np.log(np.where(curves > 0, curves, np.nan))  # NaN: left out of every mean
        mean, low, high = (np.exp(a) for a in bootstrap_mean_ci(logs, seed=seed))
    else:
        mean, low, high = bootstrap_mean_ci(curves, seed=seed)
    ax.plot(x, mean, color=colour, label=label, linewidth=1.5, marker="o" if markers else None, markersize=3)
    if curves.shape[0] > 1:
        ax.fill_between(x, low, high, color=colour, alpha=0.2, linewidth=0)


def seed_label(name: str, seeds: int) -> str:
    """A legend label that says how many seeds a curve is over.

    Example:
        >>> seed_label("adamo", 2), seed_label("adam", 1)
        ('adamo (n = 2 seeds)', 'adam (n = 1 seed)')
    """
    return f"{name} (n = {seeds} seed{'s' if seeds != 1 else ''})"


def seeds_text(counts: Sequence[int], unit: str = "method") -> str:
    """How many seeds each curve has, in words.

    Example:
        >>> seeds_text([3, 3]), seeds_text([8, 4, 4], "arm")
        ('3 seeds per method', '4-8 seeds per arm')
    """
    low, high = min(counts), max(counts)
    span = str(low) if low == high else f"{low}-{high}"
    return f"{span} seed{'s' if high != 1 else ''} per {unit}"


def band_caption(counts: Sequence[int], *, unit: str = "method", what: str = "shaded") -> str:
    """What the bands (or error bars) of :func:`mean_band` are, with the seeds behind them.

    ``counts``: the number of seeds of each curve. Under 5 seeds the caption says that the
    interval only shows how far those seeds are apart.

    Example:
        >>> band_caption([2])  # doctest: +ELLIPSIS
        'line: mean over seeds; shaded: 95 % bootstrap CI of the mean, 2 seeds per method (fewer than 5: ...)'
    """
    if max(counts) <= 1:
        return f"one seed per {unit}: no {what} interval"
    text = f"line: mean over seeds; {what}: 95 % bootstrap CI of the mean, {seeds_text(counts, unit)}"
    if min(counts) < 5:
        text += " (fewer than 5: the interval only shows how far these seeds are apart)"
    return text


def _draw_series(ax: Axes, tag: str, series: Series, colour: Any, window: int) -> None:
    steps, values = _finite(series)
    if not steps:
        return
    if tag.startswith(_SMOOTHED_PREFIX):
        ax.plot(steps, values, color=colour, alpha=0.2, linewidth=0.6, marker=".", markersize=2)
        ax.plot(steps, moving_average(values, window), color=colour, linewidth=1.6)
    else:
        ax.plot(steps, values, color=colour, linewidth=1.4, marker="." if len(steps) <= 50 else None)


def _task_step(series: Series, last_step: int) -> tuple[list[int], list[float]]:
    """A task-id series as the corners of its step function, held until ``last_step``."""
    points = sorted(zip(*series, strict=True), key=lambda p: p[0])
    steps = [0] + [int(s) for s, _ in points] + [max(last_step, int(points[-1][0]))]
    ids = [float(points[0][1])] + [float(v) for _, v in points] + [float(points[-1][1])]
    return steps, ids


def draw_task_strip(ax: Axes, series: Sequence[tuple[Series, int, Any]]) -> None:
    """The task id against env steps as a step function, one line per (series, last step, colour)."""
    ids: set[int] = set()
    for task, last, colour in series:
        steps, values = _task_step(task, last)
        ax.step(steps, values, where="post", color=colour, linewidth=1.4, alpha=0.9)
        ids.update(int(v) for v in values if math.isfinite(v))
    ax.set_yticks(sorted(ids))
    ax.set_ylabel("task id")
    ax.set_xlabel(STEP_LABEL)
    ax.grid(alpha=0.3)


def _write_figure(
    path: Path,
    title: str,
    panels: Sequence[str],
    runs: Sequence[Mapping[str, Series]],
    labels: Sequence[str],
    colours: Sequence[Any],
    window: int,
) -> list[Path]:
    """One figure (PNG and PDF): a subplot per tag in ``panels``, every run that has the tag overlaid.

    A single-panel figure of runs that logged ``env/task_id`` gets the task id as a step
    function in a strip below it, on the same x axis.
    """
    from matplotlib.lines import Line2D

    present = [i for i, run in enumerate(runs) if any(tag in run for tag in panels)]
    boundaries = {i: task_boundaries(*runs[i][TASK_TAG]) if TASK_TAG in runs[i] else [] for i in present}
    strip = len(panels) == 1 and any(TASK_TAG in runs[i] and runs[i][TASK_TAG][0] for i in present)
    fig, axes, bottom = panel_figure(len(panels), strip_height=1.2 if strip else 0.0)
    smoothed = False
    for ax, tag in zip(axes, panels, strict=False):
        for i in present:
            if tag in runs[i]:
                _draw_series(ax, tag, runs[i][tag], colours[i], window)
                smoothed |= tag.startswith(_SMOOTHED_PREFIX)
            for step in boundaries[i]:
                ax.axvline(step, color=colours[i], linestyle="--", linewidth=0.8, alpha=0.4)
        if len(panels) > 1 or tag_title(tag) != title:  # a lone panel named like its figure: once
            ax.set_title(tag_title(tag), fontsize=10)
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel(axis_label(tag))
        ax.grid(alpha=0.3)
    if bottom is not None:
        axes[0].set_xlabel("")
        last = {i: max(max(s) for s, _ in runs[i].values() if s) for i in present}
        draw_task_strip(
            bottom, [(runs[i][TASK_TAG], last[i], colours[i]) for i in present if TASK_TAG in runs[i]]
        )
    handles: list[Any] = [Line2D([], [], color=colours[i], linewidth=1.6) for i in present]
    names = [labels[i] for i in present]
    if any(boundaries.values()):
        handles.append(Line2D([], [], color="grey", linestyle="--", linewidth=0.8))
        names.append("task switch")
    fit_legend(fig, handles, names, ncols=4)
    caption = f"faint: every episode; line: mean of the last {window} episodes" if smoothed else ""
    fig.suptitle(title + (f"\n{caption}" if caption else ""), fontsize=11)
    return save_figure(fig, path)


def plot_runs(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    tags: Mapping[str, str] = DEFAULT_TAGS,
    window: int = 20,
) -> list[Path]:
    """Write one PNG per figure of ``tags`` that at least one run has data for.

    With the default ``tags``: ``episodic_return.png`` (``charts/episodic_return`` against the
    env step, raw points faint and their ``window``-episode moving average, the task id as a
    step function below when the runs switch tasks), ``dormant_fraction.png``
    (the total of every τ, a subplot each), ``srank.png`` and ``isometry_gap.png`` (a subplot per
    layer). Runs are overlaid, one colour each, with a legend of shortened folder names
    (:func:`run_labels`); task boundaries (:func:`task_boundaries` of ``env/task_id``) are dashed
    vertical lines in the run's colour on every subplot.

    Args:
        run_dirs: run folders (each holding TensorBoard event files).
        out_dir: where the PNGs go (created if missing).
        tags: figure name → regular expression a scalar tag must match in full; each matching tag
            is a subplot. Per-episode tags (``charts/episodic_…``) are smoothed.
        window: episodes in the moving average.

    Returns:
        The written paths, in the order of ``tags``: each figure's PNG, then its PDF.

    Raises:
        ValueError: no run folders, a folder missing or without event files (named), a bad
            ``tags`` pattern or ``window < 1``.
    """
    dirs = [Path(p) for p in run_dirs]
    if not dirs:
        raise ValueError("plot needs at least one run folder")
    if window < 1:
        raise ValueError(f"moving-average window must be >= 1, got {window}")
    patterns: dict[str, re.Pattern[str]] = {}
    for name, text in tags.items():
        try:
            patterns[name] = re.compile(text)
        except re.error as exc:
            raise ValueError(f"figure {name!r}: bad tag pattern {text!r}: {exc}") from None
    for run_dir in dirs:
        _event_files(run_dir)  # fail on a bad folder before reading any
    runs = [read_scalars(d) for d in dirs]
    labels = run_labels(_run_names(dirs))
    colours = palette(len(dirs))
    all_tags = {tag for run in runs for tag in run}
    out = Path(out_dir)
    written = []
    for name, pattern in patterns.items():
        panels = sorted((t for t in all_tags if pattern.fullmatch(t)), key=natural_key)
        if panels:
            title = FIGURE_TITLES.get(name, _words(name))
            written.extend(_write_figure(out / f"{name}.png", title, panels, runs, labels, colours, window))
    return written


# ----------------------------------------------------------------------------- command line


def run_plot_command(args: argparse.Namespace) -> int:
    """Run ``plasticrl plot``: write the figures and print their paths; returns the exit code 0.

    Raises:
        ValueError: a bad run folder, or no run has any of the plotted tags (the CLI prints it and
            exits with its bad-input code).
    """
    run_dirs = [Path(p) for p in args.run_dirs]
    out = Path(args.out) if args.out else (run_dirs[0] if len(run_dirs) == 1 else Path("plots"))
    written = plot_runs(run_dirs, out, window=args.window)
    if not written:
        raise ValueError(
            "nothing to plot: no run has any of the tags "
            f"{', '.join(DEFAULT_TAGS.values())} in {', '.join(str(d) for d in run_dirs)}"
        )
    for path in written:
        print(path)
    return 0
