"""Cadence: "every N steps" bookkeeping that survives resume (logging, checkpoints, evaluation)."""

from __future__ import annotations

__all__ = ["Cadence"]


class Cadence:
    """Fires once each time the step crosses a multiple of ``every``; ``every=0`` never fires.

    Example:
        >>> c = Cadence(100, step=0)
        >>> [s for s in (50, 100, 150, 260, 300) if c.due(s)]
        [100, 260, 300]
    """

    def __init__(self, every: int, step: int = 0) -> None:
        self.every = every
        self.next = (step // every + 1) * every if every else 0

    def due(self, step: int) -> bool:
        """Whether ``step`` reached the next multiple; if so, schedule the one after ``step``."""
        if not self.every or step < self.next:
            return False
        self.next = (step // self.every + 1) * self.every
        return True
