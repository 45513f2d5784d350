"""IQM and bootstrap intervals against hand-computed values (plasticrl.trainers.experiments.stats)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from plasticrl.trainers.experiments.stats import (
    bootstrap_mean_ci,
    iqm,
    probability_of_improvement,
    stratified_bootstrap_ci,
    trimmed_mean,
)


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ([1.0, 2, 3, 4], 2.5),  # n=4: cut 1 each end -> mean(2, 3)
        ([5.0], 5.0),  # n=1: nothing cut
        ([1.0, 2, 3], 2.0),  # n=3: int(0.75) = 0 cut -> plain mean
        ([1.0, 2, 3, 4, 100], 3.0),  # n=5: cut 1 each end -> mean(2, 3, 4); the outlier is gone
        ([[8.0, 1, 7], [2, 6, 3], [5, 4, 100]], 5.0),  # pooled n=9: cut 2 each end -> mean(3..7)
    ],
)
def test_iqm_is_the_pooled_quarter_trimmed_mean(scores: list, expected: float) -> None:
    assert iqm(np.array(scores)) == pytest.approx(expected)


def test_trimmed_mean_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="proportion"):
        trimmed_mean(np.ones(4), 0.5)
    with pytest.raises(ValueError, match="no scores"):
        trimmed_mean(np.array([]), 0.25)


def test_bootstrap_of_one_run_per_task_has_no_spread() -> None:
    scores = np.array([[1.0, 5.0, 9.0]])  # one run, three tasks: every replicate is the same
    assert stratified_bootstrap_ci(scores, reps=200) == (5.0, 5.0, 5.0)


def test_stratified_bootstrap_matches_the_exact_resampling_distribution() -> None:
    # Two runs x two tasks: each replicate picks 2 rows per column independently, 16 equally likely
    # replicates in all. Enumerate them by hand and compare the percentiles with a large bootstrap.
    scores = np.array([[0.0, 10.0], [1.0, 30.0]])
    exact = []
    for a, b in itertools.product(itertools.product([0, 1], repeat=2), repeat=2):
        matrix = np.stack([scores[list(a), 0], scores[list(b), 1]], axis=1)
        exact.append(matrix.mean())
    exact = np.array(exact)  # (column-0 mean + column-1 mean) / 2, from 5 to 15.5
    point, low, high = stratified_bootstrap_ci(scores, np.mean, reps=40_000, seed=1)
    assert point == pytest.approx(10.25)
    assert low == pytest.approx(np.percentile(exact, 2.5), abs=0.3)
    assert high == pytest.approx(np.percentile(exact, 97.5), abs=0.3)
    # By hand: P(lowest value 5) = P(rows 0,0 in both columns) = 1/16 > 2.5 %, so the 2.5th
    # percentile is 5; symmetrically the 97.5th is the highest value, (1 + 30) / 2 = 15.5.
    assert low == 5.0 and high == 15.5


def test_stratification_never_moves_a_score_to_another_task() -> None:
    # Task 0 scores are all 0, task 1 all 100: any replicate's mean is exactly 50.
    scores = np.array([[0.0, 100.0], [0.0, 100.0], [0.0, 100.0]])
    assert stratified_bootstrap_ci(scores, np.mean, reps=500) == (50.0, 50.0, 50.0)


def test_the_vectorised_iqm_equals_the_generic_path() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 4))
    fast = stratified_bootstrap_ci(scores, iqm, reps=3000, seed=7)
    slow = stratified_bootstrap_ci(scores, lambda m: iqm(m), reps=3000, seed=7)  # noqa: PLW0108
    assert fast == pytest.approx(slow)
    assert fast.low < fast.point < fast.high


def test_bootstrap_interval_is_deterministic_and_narrows_with_more_runs() -> None:
    rng = np.random.default_rng(3)
    few, many = rng.normal(size=(4, 1)), rng.normal(size=(64, 1))
    assert stratified_bootstrap_ci(few, reps=2000, seed=5) == stratified_bootstrap_ci(few, reps=2000, seed=5)
    width = [(ci.high - ci.low) for ci in (stratified_bootstrap_ci(x, reps=4000) for x in (few, many))]
    assert width[1] < width[0]


def test_bootstrap_mean_ci_of_curves() -> None:
    curves = np.array([[0.0, 2.0, np.nan], [2.0, 2.0, 4.0]])
    mean, low, high = bootstrap_mean_ci(curves, reps=4000, seed=0)
    assert mean.tolist() == [1.0, 2.0, 4.0]  # the NaN is skipped
    # Point 0: replicates of 2 seeds have means {0, 1, 2} w.p. 1/4, 1/2, 1/4.
    assert (low[0], high[0]) == (0.0, 2.0)
    assert (low[1], high[1]) == (2.0, 2.0)  # no spread
    assert (low[2], high[2]) == (4.0, 4.0)  # only one seed has data
    with pytest.raises(ValueError, match="seeds, points"):
        bootstrap_mean_ci(np.ones(3))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean_ci(np.ones((2, 2)), confidence=1.0)


def test_probability_of_improvement_by_hand_per_task_then_averaged() -> None:
    x = np.array([[2.0, 0.0], [3.0, 1.0]])
    y = np.array([[1.0, 5.0], [2.0, 5.0], [2.5, 5.0]])
    # task 0: x {2, 3} vs y {1, 2, 2.5}: 2 beats 1, ties 2, loses to 2.5; 3 beats all -> 4.5 / 6
    # task 1: x {0, 1} never beats 5 -> 0
    result = probability_of_improvement(x, y, reps=2_000, seed=3)
    assert result.point == pytest.approx((4.5 / 6 + 0.0) / 2)
    assert result.low <= result.point <= result.high and result.high <= 0.5
    same = probability_of_improvement(y, y, reps=500)
    assert same.point == pytest.approx(0.5)
    assert probability_of_improvement(x + 10, x, reps=200)[1:] == (1.0, 1.0)  # every resample wins
    with pytest.raises(ValueError, match="same tasks"):
        probability_of_improvement(x, y[:, :1])
