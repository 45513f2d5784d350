"""Aggregate statistics for many runs: IQM, bootstrap confidence intervals (pure numpy).

Contains:
    trimmed_mean: the mean after cutting ``int(proportion * n)`` values from each end.
    iqm: the interquartile mean, ``trimmed_mean(scores, 0.25)`` of all scores pooled.
    stratified_bootstrap_ci: a statistic of a (runs x tasks) score matrix with a percentile
        confidence interval from resampling runs with replacement within each task.
    bootstrap_mean_ci: the mean over seeds of curves with a percentile CI from resampling seeds.
    probability_of_improvement: P(X > Y) of two methods' (runs x tasks) scores, averaged over
        tasks, with a stratified-bootstrap interval (rliable's "probability of improvement").
    Interval: (point estimate, low, high).
    format_number / format_interval: a score or interval as a table cell (``0.917 [0.862, 0.987]``).

These follow rliable (Agarwal et al., "Deep RL at the Edge of the Statistical Precipice", NeurIPS
2021; docs/methods.md): IQM is scipy's ``trim_mean(x, 0.25)`` of the flattened (runs x tasks) matrix,
and its interval is the percentile interval of a stratified bootstrap with tasks as strata. We
implement them here instead of depending on ``rliable``, which pulls in ``arch``, ``scipy``,
``pandas`` and ``statsmodels`` for what is ~40 lines of numpy; the tests check both against
hand-computed values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

__all__ = [
    "Interval",
    "trimmed_mean",
    "iqm",
    "stratified_bootstrap_ci",
    "bootstrap_mean_ci",
    "probability_of_improvement",
    "format_number",
    "format_interval",
]


class Interval(NamedTuple):
    """A point estimate with a confidence interval."""

    point: float
    low: float
    high: float


def format_number(x: float) -> str:
    """A table cell: three significant figures (four-digit numbers whole), ``—`` for no value.

    Examples:
        >>> [format_number(v) for v in (0.91749, 12.345, 999.6, 4321.6, 66_529.0, -2.5e-4, 3.63e-7)]
        ['0.917', '12.3', '1000', '4322', '6.65e4', '-0.00025', '3.63e-7']
        >>> format_number(float("nan"))
        '—'
    """
    if not math.isfinite(x):
        return "—"
    if abs(float(f"{x:.3g}")) < 1000:  # the rounded value: 999.6 is "1000", never "1e+03"
        text = f"{x:.3g}"  # in exponent form below 1e-4: 3.6e-07
    elif abs(round(x)) < 10_000:
        return f"{x:.0f}"
    else:
        text = f"{x:.2e}"
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent)}"  # 3.6e-7, 4.54e5: no padded or signed exponent


def format_interval(interval: Interval | None) -> str:
    """``point [low, high]`` in :func:`format_number`'s figures; ``—`` for no interval.

    Example:
        >>> format_interval(Interval(0.9174, 0.8619, 0.98712))
        '0.917 [0.862, 0.987]'
    """
    if interval is None:
        return "—"
    return f"{format_number(interval.point)} [{format_number(interval.low)}, {format_number(interval.high)}]"


def trimmed_mean(scores: np.ndarray, proportion: float) -> float:
    """The mean of all scores (pooled) after removing ``int(proportion * n)`` from each end.

    The same cut as ``scipy.stats.trim_mean(scores, proportion, axis=None)``.

    Examples:
        >>> trimmed_mean(np.array([1.0, 2, 3, 4, 100]), 0.25)  # cuts 1 from each end
        3.0
    """
    if not 0.0 <= proportion < 0.5:
        raise ValueError(f"proportion must be in [0, 0.5), got {proportion}")
    flat = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if flat.size == 0:
        raise ValueError("trimmed_mean of no scores")
    cut = int(proportion * flat.size)
    return float(flat[cut : flat.size - cut].mean())


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of all scores pooled (rliable's IQM).

    Examples:
        >>> iqm(np.array([[1.0, 2, 3, 4], [5, 6, 7, 8]]))  # keeps 3, 4, 5, 6
        4.5
    """
    return trimmed_mean(scores, 0.25)


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """The two-sided percentile interval of ``samples`` along axis 0 (NaN samples ignored)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.nanpercentile(samples, [tail, 100.0 - tail], axis=0)
    return low, high


def stratified_bootstrap_ci(
    scores: np.ndarray,
    statistic: Callable[[np.ndarray], float] = iqm,
    *,
    reps: int = 50_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """``statistic(scores)`` with a stratified-bootstrap percentile interval.

    Each bootstrap replicate resamples, for every task (column) separately, as many runs (rows)
    as there are, with replacement, and evaluates ``statistic`` on the resampled matrix.

    Args:
        scores: (runs, tasks) matrix of one method's scores; a 1-d array is one task.
        statistic: maps a (runs, tasks) matrix to a number (default :func:`iqm`).
        reps: bootstrap replicates (rliable's default, 50,000).
        confidence: the interval's coverage.
        seed: seeds the resampling, so a report is reproducible.

    Returns:
        (statistic of ``scores``, low, high).
    """
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"scores must be a non-empty (runs, tasks) matrix, got shape {matrix.shape}")
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    runs, tasks = matrix.shape
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, runs, size=(reps, runs, tasks))
    resampled = matrix[rows, np.arange(tasks)]  # (reps, runs, tasks): column j keeps task j
    if statistic is iqm:  # vectorised: the same cut on every replicate's pooled, sorted scores
        pooled = np.sort(resampled.reshape(reps, -1), axis=1)
        cut = int(0.25 * pooled.shape[1])
        samples = pooled[:, cut : pooled.shape[1] - cut].mean(axis=1)
    else:
        samples = np.array([statistic(r) for r in resampled])
    low, high = _percentiles(samples, confidence)
    return Interval(float(statistic(matrix)), float(low), float(high))


def bootstrap_mean_ci(
    curves: np.ndarray, *, reps: int = 2_000, confidence: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean over seeds of aligned curves, with a percentile bootstrap CI at every point.

    Args:
        curves: (seeds, points); NaN marks a point a seed lacks (ignored in means).
        reps: bootstrap replicates (resampling seeds with replacement).
        confidence: the interval's coverage.
        seed: seeds the resampling.

    Returns:
        (mean, low, high), each of shape (points,). A point where a replicate drew only seeds
        without data contributes no value to that point's percentiles.
    """
    data = np.asarray(curves, dtype=np.float64)
    if data.ndim != 2 or data.shape[0] == 0:
        raise ValueError(f"curves must be a (seeds, points) matrix, got shape {data.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, data.shape[0], size=(reps, data.shape[0]))
    with warnings.catch_warnings():  # "Mean of empty slice": NaN is the right answer there
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(data, axis=0)
        samples = np.nanmean(data[idx], axis=1)  # (reps, points)
        low, high = _percentiles(samples, confidence)
    return mean, low, high


def _improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(x > y) + P(x = y) / 2 per task of (..., n, tasks) and (..., m, tasks), averaged over tasks."""
    diff = x[..., :, None, :] - y[..., None, :, :]  # (..., n, m, tasks)
    wins = (diff > 0).mean(axis=(-3, -2)) + 0.5 * (diff == 0).mean(axis=(-3, -2))
    return wins.mean(axis=-1)


def probability_of_improvement(
    x: np.ndarray, y: np.ndarray, *, reps: int = 50_000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """The probability that a run of X scores higher than a run of Y on a task, averaged over tasks.

    Per task j, the Mann-Whitney statistic ``P(X_j > Y_j) = mean over (i, k) of
    [x_ij > y_kj] + [x_ij = y_kj] / 2``; the point estimate averages it over tasks (rliable's
    probability of improvement; 0.5: neither is better). The interval resamples the runs of X and
    of Y, each with replacement and independently, within every task (stratified bootstrap).

    Args:
        x: (runs of X, tasks) scores; a 1-d array is one task.
        y: (runs of Y, tasks) scores, the same tasks in the same order.
        reps: bootstrap replicates.
        confidence: the interval's coverage.
        seed: seeds the resampling.

    Examples:
        >>> probability_of_improvement(np.array([2.0, 3.0]), np.array([1.0, 2.0]), reps=10).point
        0.875
    """
    a, b = (np.asarray(v, dtype=np.float64) for v in (x, y))
    a, b = (v[:, None] if v.ndim == 1 else v for v in (a, b))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or 0 in a.shape or 0 in b.shape:
        raise ValueError(
            f"x and y must be non-empty (runs, tasks) matrices of the same tasks, got {a.shape} and {b.shape}"
        )
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    rng = np.random.default_rng(seed)
    tasks = np.arange(a.shape[1])
    samples = np.empty(reps)
    for start in range(0, reps, 1_000):  # in chunks: (chunk, n, m, tasks) stays small
        n = min(1_000, reps - start)
        ra = a[rng.integers(0, a.shape[0], size=(n, a.shape[0], a.shape[1])), tasks]
        rb = b[rng.integers(0, b.shape[0], size=(n, b.shape[0], b.shape[1])), tasks]
        samples[start : start + n] = _improvement(ra, rb)
    low, high = _percentiles(samples, confidence)
    return Interval(float(_improvement(a, b)), float(low), float(high))
