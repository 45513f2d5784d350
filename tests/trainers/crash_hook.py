"""Kill a process at the k-th checkpoint-write boundary: the crash-injection harness's hook.

A checkpoint write (:func:`plasticrl.trainers.checkpoint.save_checkpoint`) has four boundaries,
the moments just before and just after each of its two renames::

    1 before checkpoint.pt   (the new checkpoint's temp file is complete; nothing renamed yet)
    2 after  checkpoint.pt   (new checkpoint, old sidecar: between the two renames)
    3 before checkpoint.json (the sidecar's temp file is complete)
    4 after  checkpoint.json (the pair agrees again)

:func:`install` wraps ``os.replace`` so that the ``k``-th boundary of the process ends it with
``os._exit(137)``, as ``kill -9`` would: no ``finally``, no atexit, no flush. It imports nothing
but ``os``, so the same file also works as a ``sitecustomize.py`` copied onto a child process's
``PYTHONPATH``: it then reads ``PLASTICRL_CRASH_AT`` (and optionally ``PLASTICRL_CRASH_LOG``, a file
that gets one line per boundary) from the environment, which is how a sweep's children are killed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

ENV_AT = "PLASTICRL_CRASH_AT"
ENV_LOG = "PLASTICRL_CRASH_LOG"
WATCHED = ("checkpoint.pt", "checkpoint.json")
KILLED = 137
"""The exit code of a killed process (128 + SIGKILL)."""


def install(
    crash_at: int, log: str | None = None, exit_fn: Callable[[int], Any] = os._exit
) -> Callable[[], None]:
    """Count checkpoint-write boundaries from now on; end the process at boundary ``crash_at`` (0: never).

    Returns a function that restores ``os.replace``.
    """
    real = os.replace
    count = 0

    def boundary(what: str) -> None:
        nonlocal count
        count += 1
        if log:
            with open(log, "a") as f:
                f.write(f"{count} {what}\n")
        if count == crash_at:
            exit_fn(KILLED)

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        name = os.path.basename(os.fspath(dst))
        if name not in WATCHED:
            return real(src, dst, *args, **kwargs)
        boundary(f"before {name}")
        real(src, dst, *args, **kwargs)
        boundary(f"after {name}")
        return None

    os.replace = replace  # type: ignore[assignment]

    def restore() -> None:
        os.replace = real

    return restore


def install_from_env() -> None:
    """:func:`install` with ``PLASTICRL_CRASH_AT`` / ``PLASTICRL_CRASH_LOG`` when the first is set."""
    at = os.environ.get(ENV_AT)
    if at:
        install(int(at), os.environ.get(ENV_LOG))


if __name__ == "sitecustomize":  # copied onto a child's PYTHONPATH as sitecustomize.py
    install_from_env()
