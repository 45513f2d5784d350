"""Ctrl-C, SIGTERM and SIGHUP that stop a loop at a consistent point.

Contains:
    GracefulInterrupt: a context manager; the first SIGINT, SIGTERM or SIGHUP sets ``requested``
        (the loop finishes its iteration, checkpoints and exits), a second one raises
        KeyboardInterrupt at once.
    STOP_SIGNALS: the signals it handles.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType

__all__ = ["GracefulInterrupt", "STOP_SIGNALS"]

STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
"""Ctrl-C, and what SLURM (before its kill), Ray, ``kill`` and a closed terminal send."""


class GracefulInterrupt:
    """Defer the first Ctrl-C, SIGTERM or SIGHUP to the end of the current loop iteration.

    Without this, KeyboardInterrupt could land between ``envs.step`` and ``buffer.add`` and the
    checkpoint written on the way out would hold an env that has moved on without the agent; and
    SIGTERM/SIGHUP (default action: die at once) would end a run without any checkpoint, losing
    everything since the last periodic one. All three are handled alike: the loop finishes its
    step, writes a checkpoint and exits as an interrupted run (resumable with ``--resume``). A
    second signal of any of them aborts at once. Outside the main thread (where signal handlers
    cannot be installed) it does nothing.

    Attributes:
        requested: a stop was asked for.
        signal_name: the name of the first signal received (``"SIGTERM"``), or None.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self._installed = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        what = "Interrupt" if signum == signal.SIGINT else self.signal_name
        sys.stderr.write(f"\n{what}: finishing this step and writing a checkpoint (Ctrl-C again to abort)\n")

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
            self._installed = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._installed:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)  # type: ignore[arg-type]
            self._previous.clear()
            self._installed = False
