"""Pieces shared by the agents.

Contains:
    NonFiniteLossError: raised by an agent's ``update`` before it steps on a NaN/inf loss.
    linear_schedule: linear interpolation clamped at the end value (ε schedules).
"""

from __future__ import annotations

__all__ = ["NonFiniteLossError", "linear_schedule"]


class NonFiniteLossError(RuntimeError):
    """The loss was NaN or infinite; the parameters were left at their last good values."""


def linear_schedule(start: float, end: float, duration: int, step: int) -> float:
    """Value at ``step`` of a linear ramp from ``start`` to ``end`` over ``duration`` steps.

    Example:
        >>> [linear_schedule(1.0, 0.1, 100, s) for s in (0, 50, 100, 1000)]
        [1.0, 0.55, 0.1, 0.1]
    """
    if duration <= 0:
        return end
    if step >= duration:
        return end
    frac = max(step, 0) / duration
    return start + frac * (end - start)
