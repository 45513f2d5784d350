"""The figures of ``plasticrl report`` (matplotlib's Agg canvas; no display needed).

Contains:
    write_figures: every PNG of a report from its :class:`plasticrl.trainers.experiments.report.Scores`.
    sampled_curve: a metric series → its last value in each bin of a step grid (pure).

Figures (methods overlaid, one colour each; shaded: 95 % bootstrap CI over seeds; grey dashed
lines: the task switches, median over runs):
    returns.png: learning curves.
    final_return_per_segment.png / plasticity_gap.png: final return on each task segment, and its
        difference to segment 0.
    dormant_fraction.png, isometry_gap.png, srank.png: the plasticity metrics (a panel per tag),
        when the runs logged them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from plasticrl.trainers.experiments.plot import Series, natural_key, palette
from plasticrl.trainers.experiments.report import CURVE_TAGS, Scores
from plasticrl.trainers.experiments.stats import bootstrap_mean_ci

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["write_figures", "sampled_curve"]


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


def _figure(panels: int) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(panels, 3)
    nrows = math.ceil(panels / ncols)
    fig = Figure(figsize=(5.2 * ncols, 3.6 * nrows + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def _band(ax: Axes, x: np.ndarray, curves: np.ndarray, colour: Any, label: str | None, seed: int) -> None:
    mean, low, high = bootstrap_mean_ci(curves, seed=seed)
    ax.plot(x, mean, color=colour, linewidth=1.5, label=label)
    if curves.shape[0] > 1:
        ax.fill_between(x, low, high, color=colour, alpha=0.2, linewidth=0)


def _switches(scores: Scores) -> list[int]:
    """Median start step of every task segment after the first, over all runs."""
    starts: dict[int, list[int]] = {}
    for runs in scores.runs.values():
        for run in runs:
            for k, seg in enumerate(run.segments[1:], start=1):
                starts.setdefault(k, []).append(seg.start)
    return [int(np.median(v)) for _, v in sorted(starts.items())]


def _finish(fig: Figure, axes: Sequence[Axes], title: str, path: Path, switches: Sequence[int]) -> Path:
    for ax in axes:
        for step in switches:
            ax.axvline(step, color="grey", linestyle="--", linewidth=0.7, alpha=0.6)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(
            handles, labels, loc="outside lower center", ncols=min(len(labels), 3 if len(axes) == 1 else 5)
        )
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return path


def _returns(scores: Scores, out: Path, colours: Sequence[Any]) -> Path:
    fig, (ax,) = _figure(1)
    for m, colour in zip(scores.methods, colours, strict=True):
        curves = scores.curves[m]
        x = (np.arange(curves.shape[1]) + 1) * scores.bin_steps
        _band(ax, x, curves, colour, m, seed=0)
    ax.set_xlabel("env step")
    ax.set_ylabel(f"episodic return (mean per {scores.bin_steps}-step bin)")
    return _finish(
        fig,
        [ax],
        "Learning curves (mean over seeds, 95% bootstrap CI)",
        out / "returns.png",
        _switches(scores),
    )


def _per_segment(scores: Scores, out: Path, colours: Sequence[Any], gap: bool) -> Path:
    fig, (ax,) = _figure(1)
    for m, colour in zip(scores.methods, colours, strict=True):
        final = scores.final[m]
        data = final[:, 1:] - final[:, :1] if gap else final
        if data.shape[1] == 0:
            continue
        first = 1 if gap else 0
        x = np.arange(first, first + data.shape[1])
        mean, low, high = bootstrap_mean_ci(data, seed=1)
        ax.errorbar(x, mean, yerr=[mean - low, high - mean], color=colour, marker="o", capsize=3, label=m)
    ax.set_xlabel("task segment")
    if gap:
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_ylabel("final return on segment k - on segment 0")
        title, name = "Plasticity gap (mean over seeds, 95% bootstrap CI)", "plasticity_gap.png"
    else:
        ax.set_ylabel("final return")
        title, name = (
            "Final return per task segment (mean over seeds, 95% CI)",
            "final_return_per_segment.png",
        )
    ax.xaxis.get_major_locator().set_params(integer=True)
    return _finish(fig, [ax], title, out / name, [])


def _metric(scores: Scores, out: Path, colours: Sequence[Any], name: str, pattern: str) -> Path | None:
    regex = re.compile(pattern)
    tags = sorted(
        {t for runs in scores.runs.values() for r in runs for t in r.curves if regex.fullmatch(t)},
        key=natural_key,
    )
    if not tags:
        return None
    n_bins = max(c.shape[1] for c in scores.curves.values())
    x = (np.arange(n_bins) + 1) * scores.bin_steps
    fig, axes = _figure(len(tags))
    for ax, tag in zip(axes, tags, strict=True):
        for m, colour in zip(scores.methods, colours, strict=True):
            runs = [r for r in scores.runs[m] if tag in r.curves]
            if runs:
                curves = np.stack(
                    [sampled_curve(r.curves[tag], scores.bin_steps, n_bins, r.last_step) for r in runs]
                )
                _band(ax, x, curves, colour, m, seed=2)
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("env step")
    return _finish(
        fig, axes, f"{name} (mean over seeds, 95% bootstrap CI)", out / f"{name}.png", _switches(scores)
    )


def write_figures(scores: Scores, out: Path) -> list[Path]:
    """Write the report's PNGs into ``out``; returns their paths (metric figures only with data)."""
    colours = palette(len(scores.methods))
    paths = [_returns(scores, out, colours), _per_segment(scores, out, colours, gap=False)]
    if max(v.shape[1] for v in scores.final.values()) > 1:
        paths.append(_per_segment(scores, out, colours, gap=True))
    for name, pattern in CURVE_TAGS.items():
        path = _metric(scores, out, colours, name, pattern)
        if path is not None:
            paths.append(path)
    return paths
