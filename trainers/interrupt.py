"""Ctrl-C that stops a loop at a consistent point.

Contains:
    GracefulInterrupt: a context manager; the first SIGINT sets ``requested`` (the loop finishes
        its iteration, checkpoints and exits), a second one raises KeyboardInterrupt at once.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType

__all__ = ["GracefulInterrupt"]


class GracefulInterrupt:
    """Defer the first Ctrl-C to the end of the current loop iteration.

    Without this, KeyboardInterrupt could land between ``envs.step`` and ``buffer.add`` and the
    checkpoint written on the way out would hold an env that has moved on without the agent.
    Outside the main thread (where signal handlers cannot be installed) it does nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: object = None
        self._installed = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        sys.stderr.write(
            "\nInterrupt: finishing this step and writing a checkpoint (Ctrl-C again to abort)\n"
        )

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]
