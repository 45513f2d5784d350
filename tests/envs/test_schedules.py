"""Tests for plasticrl.envs.schedules: expectation tables, statistics of the random ones, errors, registry."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from plasticrl.envs.schedules import SCHEDULES, At, Every, GeometricIntervals, RandomIntervals, Schedule


def change_steps(schedule: Schedule, count: int, seed: int = 0) -> list[int | None]:
    """The first ``count`` change steps, as NonStationary asks for them (from the previous one)."""
    rng = np.random.default_rng(seed)
    steps: list[int | None] = []
    step: int | None = 0
    for _ in range(count):
        step = schedule(step, rng) if step is not None else None
        steps.append(step)
    return steps


# (schedule, expected first change steps)
EXPECTED = [
    (Every(1), [1, 2, 3, 4]),
    (Every(3), [3, 6, 9, 12]),
    (Every(100_000), [100_000, 200_000, 300_000]),
    (At([2, 5, 11]), [2, 5, 11, None, None]),
    (At((7,)), [7, None]),
    (RandomIntervals(4, 4), [4, 8, 12]),
    (GeometricIntervals(1), [1, 2, 3]),
]


@pytest.mark.parametrize("schedule, expected", EXPECTED, ids=repr)
def test_change_steps_table(schedule: Schedule, expected: list[int | None]) -> None:
    assert change_steps(schedule, len(expected)) == expected


@pytest.mark.parametrize(
    "schedule, step, expected",
    [
        (Every(10), 15, 20),  # from an arbitrary step: the next multiple
        (Every(10), 20, 30),
        (At([5, 10]), 7, 10),
        (At([5, 10]), 4, 5),
        (At([5]), 5, None),
    ],
    ids=repr,
)
def test_next_step_from_any_step(schedule: Schedule, step: int, expected: int | None) -> None:
    assert schedule(step, np.random.default_rng(0)) == expected


def test_random_intervals_cover_low_to_high_uniformly() -> None:
    rng = np.random.default_rng(1)
    intervals = np.array([RandomIntervals(3, 6)(100, rng) - 100 for _ in range(4000)])
    assert set(intervals.tolist()) == {3, 4, 5, 6}
    counts = np.bincount(intervals)[3:]
    assert np.all(np.abs(counts / len(intervals) - 0.25) < 0.03)


def test_geometric_intervals_have_the_mean() -> None:
    rng = np.random.default_rng(2)
    intervals = np.array([GeometricIntervals(20)(0, rng) for _ in range(20000)])
    assert intervals.min() >= 1
    assert abs(intervals.mean() - 20) < 0.6  # standard error ≈ 19.5 / sqrt(20000) ≈ 0.14


@pytest.mark.parametrize("schedule", [RandomIntervals(1, 50), GeometricIntervals(10.5)], ids=repr)
def test_random_schedules_are_determined_by_the_generator(schedule: Schedule) -> None:
    assert change_steps(schedule, 20, seed=3) == change_steps(schedule, 20, seed=3)
    assert change_steps(schedule, 20, seed=3) != change_steps(schedule, 20, seed=4)
    steps = change_steps(schedule, 20, seed=3)
    assert all(b > a for a, b in zip([0, *steps], steps, strict=False))  # type: ignore[operator]


ERRORS = [
    (lambda: Every(0), "Every.n must be an integer >= 1, got 0"),
    (lambda: Every(-3), "Every.n must be an integer >= 1, got -3"),
    (lambda: Every(2.5), "Every.n must be an integer >= 1, got 2.5"),
    (lambda: Every(True), "Every.n must be an integer >= 1, got True"),
    (lambda: At([]), r"At.steps must be a non-empty sequence of integers, got \[\]"),
    (lambda: At("12"), "At.steps must be a non-empty sequence of integers, got '12'"),
    (lambda: At([0, 4]), r"At.steps\[i\] must be an integer >= 1, got 0"),
    (lambda: At([3, 3]), r"At.steps must be strictly increasing, got \[3, 3\]"),
    (lambda: At([5, 2]), r"At.steps must be strictly increasing, got \[5, 2\]"),
    (lambda: RandomIntervals(0, 3), "RandomIntervals.low must be an integer >= 1, got 0"),
    (lambda: RandomIntervals(5, 2), "RandomIntervals needs low <= high, got low=5, high=2"),
    (lambda: GeometricIntervals(0.5), "GeometricIntervals.mean must be a finite number >= 1, got 0.5"),
    (lambda: GeometricIntervals(float("inf")), "GeometricIntervals.mean must be a finite number >= 1, got i"),
    (lambda: GeometricIntervals(True), "GeometricIntervals.mean must be a finite number >= 1, got True"),
]


@pytest.mark.parametrize("build, message", ERRORS, ids=[m[:40] for _, m in ERRORS])
def test_bad_arguments_raise(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_registry_names_and_construction() -> None:
    assert SCHEDULES.names() == ["at", "every", "geometric", "random"]
    assert SCHEDULES.get("every")(n=5) == Every(5)
    assert SCHEDULES.get("at")(steps=[1, 9]) == At((1, 9))
    assert SCHEDULES.get("random")(low=2, high=3) == RandomIntervals(2, 3)
    assert SCHEDULES.get("geometric")(mean=4) == GeometricIntervals(4)
    with pytest.raises(ValueError, match="unknown schedule 'evry'; did you mean 'every'"):
        SCHEDULES.get("evry")


@pytest.mark.parametrize(
    "schedule", [Every(3), At([1, 2]), RandomIntervals(1, 2), GeometricIntervals(3)], ids=repr
)
def test_schedules_are_immutable_values(schedule: Schedule) -> None:
    assert isinstance(schedule, Schedule)
    assert copy.deepcopy(schedule) == schedule
    assert pickle.loads(pickle.dumps(schedule)) == schedule
    assert hash(schedule) == hash(copy.deepcopy(schedule))
    with pytest.raises(AttributeError):
        schedule.n = 1  # type: ignore[union-attr]
