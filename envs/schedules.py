"""When a non-stationary environment changes task: schedules over the lifetime step.

Contains:
    Schedule: the protocol — ``schedule(step, rng)`` returns the lifetime step of the next change.
    Every: a change every ``n`` steps (``every``).
    At: changes at an explicit list of steps (``at``).
    RandomIntervals: seeded intervals drawn uniformly from ``[low, high]`` (``random``).
    GeometricIntervals: seeded memoryless intervals with a given mean (``geometric``).
    SCHEDULES: the registry of the above, ``SCHEDULES.get(name)(**options)``.

A schedule says *when* a task changes; the change kind of :class:`plasticrl.envs.nonstationary.NonStationary`
says *what* changes. Schedules are immutable and keep no state of their own: the wrapper stores the
step of the next change and the generator the schedule draws from, and checkpoints both (see
``NonStationary.get_state``). Given the same previous step and the same generator state a schedule
returns the same answer, so a seed reproduces the whole change sequence.

Note [Lifetime steps]
    Steps are counted from 0 at the start of the run and never reset with an episode. A change
    "at step k" means the first ``k`` environment steps run under the old task and the ``k``-th
    step is the one at which the change becomes due (``NonStationary`` then either truncates that
    step or lets the episode finish first). Only steps ``k >= 1`` are meaningful: the task at step
    0 is the initial task.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from plasticrl.plasticity.registry import Registry

__all__ = ["Schedule", "Every", "At", "RandomIntervals", "GeometricIntervals", "SCHEDULES"]


@runtime_checkable
class Schedule(Protocol):
    """The protocol of task-change schedules."""

    def __call__(self, step: int, rng: np.random.Generator) -> int | None:
        """Return the lifetime step of the first change after ``step``, or None for no more changes.

        Args:
            step: 0 at the start of the run, afterwards the scheduled step of the previous change
                (not the step at which it was noticed, so a coarse clock does not make a schedule
                drift).
            rng: the wrapper's task generator; deterministic schedules ignore it.

        Returns:
            An integer strictly greater than ``step``, or None.
        """
        ...


SCHEDULES: Registry[type[Schedule]] = Registry("schedule")


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@SCHEDULES.register("every")
@dataclass(frozen=True)
class Every:
    """A change every ``n`` lifetime steps: at ``n, 2n, 3n, ...``.

    Args:
        n: the period in lifetime steps, ``n >= 1``.

    Example:
        >>> schedule = Every(100)
        >>> schedule(0, None), schedule(100, None), schedule(150, None)
        (100, 200, 200)
    """

    n: int

    def __post_init__(self) -> None:
        _check_int("Every.n", self.n, 1)

    def __call__(self, step: int, rng: np.random.Generator | None = None) -> int:
        """Return the first multiple of ``n`` greater than ``step``."""
        return (step // self.n + 1) * self.n


@SCHEDULES.register("at")
@dataclass(frozen=True)
class At:
    """Changes at an explicit, strictly increasing list of lifetime steps; none after the last.

    Args:
        steps: the change steps, each ``>= 1`` (a tuple; lists are converted).

    Example:
        >>> schedule = At([10, 25])
        >>> schedule(0, None), schedule(10, None), schedule(25, None)
        (10, 25, None)
    """

    steps: tuple[int, ...]

    def __init__(self, steps: Sequence[int]) -> None:
        if isinstance(steps, str) or not isinstance(steps, Sequence) or len(steps) == 0:
            raise ValueError(f"At.steps must be a non-empty sequence of integers, got {steps!r}")
        checked = tuple(_check_int("At.steps[i]", s, 1) for s in steps)
        if any(b <= a for a, b in zip(checked, checked[1:], strict=False)):
            raise ValueError(f"At.steps must be strictly increasing, got {list(steps)!r}")
        object.__setattr__(self, "steps", checked)

    def __call__(self, step: int, rng: np.random.Generator | None = None) -> int | None:
        """Return the first listed step greater than ``step``, or None after the last."""
        i = bisect.bisect_right(self.steps, step)
        return self.steps[i] if i < len(self.steps) else None


@SCHEDULES.register("random")
@dataclass(frozen=True)
class RandomIntervals:
    """Seeded random intervals, uniform over the integers ``low..high`` (both included).

    Each interval is one ``rng.integers(low, high, endpoint=True)`` draw from the wrapper's task
    generator, taken when the previous change happens.

    Args:
        low: the shortest interval, ``>= 1``.
        high: the longest interval, ``>= low``.

    Example:
        >>> import numpy as np
        >>> schedule = RandomIntervals(low=10, high=20)
        >>> rng = np.random.default_rng(0)
        >>> first = schedule(0, rng)
        >>> 10 <= first <= 20 and first + 10 <= schedule(first, rng) <= first + 20
        True
    """

    low: int
    high: int

    def __post_init__(self) -> None:
        _check_int("RandomIntervals.low", self.low, 1)
        _check_int("RandomIntervals.high", self.high, 1)
        if self.high < self.low:
            raise ValueError(f"RandomIntervals needs low <= high, got low={self.low}, high={self.high}")

    def __call__(self, step: int, rng: np.random.Generator) -> int:
        """Return ``step`` plus one uniform interval."""
        return step + int(rng.integers(self.low, self.high, endpoint=True))


@SCHEDULES.register("geometric")
@dataclass(frozen=True)
class GeometricIntervals:
    """Seeded memoryless intervals: geometric with success probability ``1 / mean`` (so >= 1).

    With a geometric interval the probability of a change is the same at every step, so the
    agent cannot learn when the next change is due from the time since the last one.

    Args:
        mean: the mean interval in lifetime steps, ``>= 1`` (a float is allowed).

    Example:
        >>> import numpy as np
        >>> schedule = GeometricIntervals(mean=1)
        >>> schedule(7, np.random.default_rng(0))
        8
    """

    mean: float

    def __post_init__(self) -> None:
        ok = isinstance(self.mean, int | float) and not isinstance(self.mean, bool)
        if not ok or not math.isfinite(self.mean) or self.mean < 1:
            raise ValueError(f"GeometricIntervals.mean must be a finite number >= 1, got {self.mean!r}")

    def __call__(self, step: int, rng: np.random.Generator) -> int:
        """Return ``step`` plus one geometric interval."""
        return step + int(rng.geometric(1.0 / self.mean))
