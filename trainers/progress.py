"""A one-line progress display for long runs (steps, SPS, recent return, current task).

Contains:
    Progress: redraws a single line on a terminal; on a pipe or file it prints a plain line every
        5 % of the run, so logs stay readable. Disabled entirely in quiet mode.
"""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO

__all__ = ["Progress", "ProgressSource"]


class ProgressSource(Protocol):
    """What the progress line shows besides steps and SPS (``plasticrl.trainers.session.EpisodeStats``)."""

    def mean_return(self) -> float | None:
        """Recent mean episode return, None before the first episode ends."""
        ...

    def progress_text(self) -> str:
        """Extra text, e.g. the current task ("" for none)."""
        ...


class Progress:
    """Progress line for ``total`` steps starting at ``start``.

    Args:
        total: the run's total steps.
        start: the first step of this process (non-zero on resume).
        enabled: False prints nothing (``--quiet``).
        stream: where to write (stderr by default, so stdout stays clean for scripts).
    """

    def __init__(
        self, total: int, start: int = 0, *, enabled: bool = True, stream: TextIO | None = None
    ) -> None:
        self.total, self.start = total, start
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.perf_counter()
        self._last_draw = 0.0
        self._next_milestone = start + total // 20
        self._last_printed = -1

    def sps(self, step: int) -> float:
        """Env steps per second since this process started training."""
        elapsed = time.perf_counter() - self.t0
        return (step - self.start) / elapsed if elapsed > 0 else 0.0

    def line(self, step: int, recent_return: float | None, extra: str = "") -> str:
        """The text of the progress line at ``step``."""
        pct = 100.0 * step / self.total if self.total else 100.0
        ret = "-" if recent_return is None else f"{recent_return:.2f}"
        tail = f" | {extra}" if extra else ""
        return f"{step:>10,}/{self.total:,} ({pct:5.1f}%) | {self.sps(step):7.0f} SPS | return {ret}{tail}"

    def update(self, step: int, source: ProgressSource) -> None:
        """Redraw (terminal, at most 4×/s) or print at each 5 % milestone (pipe).

        Called on every env step, so ``source`` is only read when a line is actually drawn.
        """
        if not self.enabled:
            return
        if self.tty:
            now = time.perf_counter()
            if now - self._last_draw >= 0.25:
                self._last_draw = now
                self.stream.write("\r" + self._line_of(step, source) + "\x1b[K")
                self.stream.flush()
        elif step >= self._next_milestone:
            self._next_milestone = step + max(self.total // 20, 1)
            self._last_printed = step
            self.stream.write(self._line_of(step, source) + "\n")
            self.stream.flush()

    def close(self, step: int, source: ProgressSource) -> None:
        """Print the final line."""
        if self.enabled and (self.tty or step != self._last_printed):
            prefix = "\r" if self.tty else ""
            self.stream.write(prefix + self._line_of(step, source) + ("\x1b[K\n" if self.tty else "\n"))
            self.stream.flush()

    def _line_of(self, step: int, source: ProgressSource) -> str:
        return self.line(step, source.mean_return(), source.progress_text())
