"""A one-line progress display for long runs (steps, SPS, ETA, recent return, current task).

Contains:
    Progress: redraws a single line on a terminal; on a pipe or file it prints a plain line every
        5 % of the run, so logs stay readable. Prints the run folder when it starts, so a user
        can open TensorBoard on it at once. Disabled entirely in quiet mode.
    format_duration: seconds as ``1h02m``, ``4m05s`` or ``12s`` (pure).
    eta_seconds: the time left at a steady rate (pure).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Protocol, TextIO

__all__ = ["Progress", "ProgressSource", "format_duration", "eta_seconds"]


def format_duration(seconds: float | None) -> str:
    """A short duration: ``2d03h``, ``1h02m``, ``4m05s``, ``12s``; ``?`` when unknown.

    Examples:
        >>> [format_duration(s) for s in (12.4, 245, 3725, 183600, None, float("inf"))]
        ['12s', '4m05s', '1h02m', '2d03h', '?', '?']
    """
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def eta_seconds(done: float, total: float, elapsed: float) -> float | None:
    """Seconds left to reach ``total`` at the rate ``done / elapsed``; None before any progress.

    Example:
        >>> eta_seconds(250, 1000, 10.0)
        30.0
    """
    if done <= 0 or elapsed <= 0:
        return None
    return max(total - done, 0) * elapsed / done


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
        run_dir: the run folder, printed at once on its own line (``run folder: …``, or
            ``resuming … at step N``), so it is known before the run ends.
    """

    def __init__(
        self,
        total: int,
        start: int = 0,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        run_dir: str | Path | None = None,
    ) -> None:
        self.total, self.start = total, start
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.perf_counter()
        self._last_draw = 0.0
        self._next_milestone = start + total // 20
        self._last_printed = -1
        if enabled and run_dir is not None:
            what = f"resuming {run_dir} at step {start:,}" if start else f"run folder: {run_dir}"
            self.stream.write(what + "\n")
            self.stream.flush()

    def sps(self, step: int) -> float:
        """Env steps per second since this process started training."""
        elapsed = time.perf_counter() - self.t0
        return (step - self.start) / elapsed if elapsed > 0 else 0.0

    def eta(self, step: int) -> float | None:
        """Seconds left at this process's mean SPS; None before the first step (0 when done)."""
        return eta_seconds(step - self.start, self.total - self.start, time.perf_counter() - self.t0)

    def line(self, step: int, recent_return: float | None, extra: str = "") -> str:
        """The text of the progress line at ``step``: steps, percent, SPS, ETA, return, extra."""
        pct = 100.0 * step / self.total if self.total else 100.0
        ret = "-" if recent_return is None else f"{recent_return:.2f}"
        tail = f" | {extra}" if extra else ""
        eta = "done" if step >= self.total else f"ETA {format_duration(self.eta(step))}"
        return (
            f"{step:>10,}/{self.total:,} ({pct:5.1f}%) | {self.sps(step):7.0f} SPS | {eta} "
            f"| return {ret}{tail}"
        )

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
