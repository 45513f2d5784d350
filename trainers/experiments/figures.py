"""The figures of ``plasticrl report`` (matplotlib's Agg canvas; no display needed).

Contains:
    write_figures: every figure (PNG and PDF) of a report from its
        :class:`plasticrl.trainers.experiments.report.Scores`.
    sampled_curve: a metric series → its last value in each bin of a step grid (pure).
    band_caption / seeds_text: what a band or error bar is, with the number of seeds (pure).

Figures (methods overlaid, one Okabe–Ito colour each, legend labels with each method's number
of seeds; shaded: 95 % bootstrap CI of the mean over seeds, the caption saying over how many and
warning under 5; grey dashed lines: the task switches, median over runs, with a legend entry;
axes labelled with quantity and unit; titles in words):
    returns.png: learning curves, the task id of each segment as a step function below.
    final_return_per_segment.png / plasticity_gap.png: final return on each task segment, and its
        difference to segment 0.
    dormant_fraction.png, isometry_gap.png, srank.png: the plasticity metrics (a panel per tag),
        when the runs logged them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from plasticrl.trainers.experiments import plot
from plasticrl.trainers.experiments.plot import (
    FIGURE_TITLES,
    STEP_LABEL,
    Series,
    axis_label,
    draw_task_strip,
    fit_legend,
    mean_band,
    natural_key,
    palette,
    panel_figure,
    save_figure,
    seed_label,
    tag_title,
)
from plasticrl.trainers.experiments.report import CURVE_TAGS, Scores
from plasticrl.trainers.experiments.stats import bootstrap_mean_ci

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["write_figures", "sampled_curve", "band_caption", "seeds_text"]


def sampled_curve(series: Series, bin_steps: int, n_bins: int, last_step: int | None = None) -> np.ndarray:
    """The last value logged at or before the end of each bin of ``bin_steps``.

    NaN before the first point and in bins starting at or after ``last_step``.

    Example:
        >>> sampled_curve(([5, 12, 31], [1.0, 2.0, 3.0]), 10, 5, last_step=40).tolist()
        [1.0, 2.0, 2.0, 3.0, nan]
    """
    steps = np.asarray(series[0], dtype=np.int64)
    values = np.asarray(series[1], dtype=np.float64)
    ends = (np.arange(n_bins) + 1) * bin_steps
    idx = np.searchsorted(steps, ends, side="right") - 1
    out = np.where(idx >= 0, values[np.clip(idx, 0, None)] if values.size else np.nan, np.nan)
    if last_step is not None:
        out[np.arange(n_bins) * bin_steps >= last_step] = np.nan
    return out.astype(np.float64)


def _figure(panels: int, *, strip: float = 0.0) -> tuple[Figure, list[Axes], Axes | None]:
    """A report figure's panels (5.6 x 3.6 in), with a task strip ``strip`` inches high under a lone one."""
    return panel_figure(panels, size=(5.6, 3.6), extra_height=1.3, strip_height=strip)


def _switches(scores: Scores) -> list[int]:
    """Median start step of every task segment after the first, over all runs."""
    starts: dict[int, list[int]] = {}
    for runs in scores.runs.values():
        for run in runs:
            for k, seg in enumerate(run.segments[1:], start=1):
                starts.setdefault(k, []).append(seg.start)
    return [int(np.median(v)) for _, v in sorted(starts.items())]


def seeds_text(scores: Scores) -> str:
    """How many seeds each method has, in words: ``3 seeds per method`` or ``2-5 seeds per method``."""
    return plot.seeds_text([len(r) for r in scores.runs.values()])


def band_caption(scores: Scores, what: str = "shaded") -> str:
    """What the bands (or error bars) are, with the number of seeds behind them.

    Example:
        >>> from plasticrl.trainers.experiments.report import Scores
        >>> two = Scores(("a",), {"a": (None, None)}, {}, {}, {}, {}, 1)
        >>> band_caption(two)  # doctest: +ELLIPSIS
        'line: mean over seeds; shaded: 95 % bootstrap CI of the mean, 2 seeds per method (fewer than 5: ...)'
    """
    return plot.band_caption([len(r) for r in scores.runs.values()], what=what)


def _label(scores: Scores, method: str) -> str:
    return seed_label(method, len(scores.runs[method]))


def _finish(
    fig: Figure, axes: Sequence[Axes], title: str, caption: str, path: Path, switches: Sequence[int]
) -> list[Path]:
    from matplotlib.lines import Line2D

    for ax in axes:
        for step in switches:
            ax.axvline(step, color="grey", linestyle="--", linewidth=0.7, alpha=0.6)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if switches:
        handles.append(Line2D([], [], color="grey", linestyle="--", linewidth=0.7))
        labels.append("task switch")
    if handles:
        fit_legend(fig, handles, labels, ncols=3 if len(axes) == 1 else 5)
    import textwrap

    width = int(fig.get_size_inches()[0] * 12)  # characters of a 10-pt caption per line
    fig.suptitle("\n".join([title, *textwrap.wrap(caption, width)]), fontsize=10)
    return save_figure(fig, path)


def _segment_strip(ax: Axes, scores: Scores, colours: Sequence[Any]) -> None:
    """Each method's task id per segment (of its longest run) as a step function."""
    series = []
    for m, colour in zip(scores.methods, colours, strict=True):
        run = max(scores.runs[m], key=lambda r: len(r.segments))
        segs = run.segments
        series.append((([s.start for s in segs], [float(s.task_id) for s in segs]), segs[-1].end, colour))
    draw_task_strip(ax, series)


def _returns(scores: Scores, out: Path, colours: Sequence[Any]) -> list[Path]:
    switches = _switches(scores)
    fig, (ax,), strip = _figure(1, strip=1.1 if switches else 0.0)
    for m, colour in zip(scores.methods, colours, strict=True):
        curves = scores.curves[m]
        x = (np.arange(curves.shape[1]) + 1) * scores.bin_steps
        mean_band(ax, x, curves, colour, _label(scores, m), seed=0)
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(f"return per episode\n(mean per {scores.bin_steps:,}-step bin)")
    if strip is not None:
        ax.set_xlabel("")
        _segment_strip(strip, scores, colours)
        for step in switches:
            strip.axvline(step, color="grey", linestyle="--", linewidth=0.7, alpha=0.6)
    return _finish(fig, [ax], "Learning curves", band_caption(scores), out / "returns.png", switches)


def _per_segment(scores: Scores, out: Path, colours: Sequence[Any], gap: bool) -> list[Path]:
    fig, (ax,), _ = _figure(1)
    for m, colour in zip(scores.methods, colours, strict=True):
        final = scores.final[m]
        data = final[:, 1:] - final[:, :1] if gap else final
        if data.shape[1] == 0:
            continue
        first = 1 if gap else 0
        x = np.arange(first, first + data.shape[1])
        mean, low, high = bootstrap_mean_ci(data, seed=1)
        label = _label(scores, m)
        if data.shape[0] > 1:
            ax.errorbar(
                x, mean, yerr=[mean - low, high - mean], color=colour, marker="o", capsize=3, label=label
            )
        else:
            ax.plot(x, mean, color=colour, marker="o", label=label)
    ax.set_xlabel("task segment (k-th task visited)")
    caption = band_caption(scores, "error bars")
    if gap:
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_ylabel("plasticity gap: final return on\nsegment k minus on segment 0")
        title, name = "Plasticity gap per task segment", "plasticity_gap.png"
    else:
        ax.set_ylabel("final return (mean over episodes in\nthe last part of the segment)")
        title, name = "Final return per task segment", "final_return_per_segment.png"
    ax.xaxis.get_major_locator().set_params(integer=True)  # type: ignore[call-arg]  # an AutoLocator
    return _finish(fig, [ax], title, caption, out / name, [])


def _metric(scores: Scores, out: Path, colours: Sequence[Any], name: str, pattern: str) -> list[Path]:
    regex = re.compile(pattern)
    tags = sorted(
        {t for runs in scores.runs.values() for r in runs for t in r.curves if regex.fullmatch(t)},
        key=natural_key,
    )
    if not tags:
        return []
    n_bins = max(c.shape[1] for c in scores.curves.values())
    x = (np.arange(n_bins) + 1) * scores.bin_steps
    fig, axes, _ = _figure(len(tags))
    for ax, tag in zip(axes, tags, strict=True):
        for m, colour in zip(scores.methods, colours, strict=True):
            runs = [r for r in scores.runs[m] if tag in r.curves]
            if runs:
                curves = np.stack(
                    [sampled_curve(r.curves[tag], scores.bin_steps, n_bins, r.last_step) for r in runs]
                )
                mean_band(ax, x, curves, colour, _label(scores, m), seed=2)
        ax.set_title(tag_title(tag), fontsize=10)
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel(axis_label(tag))
    title = FIGURE_TITLES.get(name, name.replace("_", " ").capitalize())
    return _finish(fig, axes, title, band_caption(scores), out / f"{name}.png", _switches(scores))


def write_figures(scores: Scores, out: Path) -> list[Path]:
    """Write the report's figures into ``out``, each as PNG and PDF; returns their paths.

    The metric figures are written only when the runs logged their tags.
    """
    colours = palette(len(scores.methods))
    paths = [*_returns(scores, out, colours), *_per_segment(scores, out, colours, gap=False)]
    if max(v.shape[1] for v in scores.final.values()) > 1:
        paths.extend(_per_segment(scores, out, colours, gap=True))
    for name, pattern in CURVE_TAGS.items():
        paths.extend(_metric(scores, out, colours, name, pattern))
    return paths
