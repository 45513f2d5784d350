"""One training process per run folder: an advisory lock held while a run trains.

Two processes training into one folder (a sweep launched twice, ``--resume`` typed in two
terminals, two sweep drivers on one cluster) would interleave event files, overwrite each other's
checkpoints, and a sweep that finds a folder without a checkpoint removes it as stale. So a run
holds ``<run folder>/.lock`` from the moment its folder is made (or resumed) until its last
checkpoint is written, and everything that would touch a run's folder asks first.

Note [Run folder lock]
    The lock is ``flock(LOCK_EX | LOCK_NB)`` on ``.lock``: the kernel releases it when the holder
    exits, however it exits (``kill -9`` and crashes included), so there is no stale lock to clean
    up, and no pid guessing. Taking the lock also removes the temporary files of a checkpoint
    write that a kill interrupted (:func:`remove_orphan_temp_files`). The lock file is never
    removed (removing it would let a second process lock a fresh file while a first still holds
    the old one); it holds the last holder's
    ``pid host``, which is what the error message quotes. Locks are per process and re-entrant
    within it: :func:`lock_run_dir` on a folder this process holds does nothing; a forked child
    (an ``AsyncVectorEnv`` worker) closes its inherited copies, so it never keeps a finished run
    locked. On Linux,
    ``flock`` on NFS is carried to the server as a POSIX lock, so nodes of a cluster sharing the
    runs folder see each other's locks; on a platform without ``fcntl`` (Windows) locking is off.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import IO

from plasticrl.trainers.config import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOCK_NAME",
    "RunFolderInUse",
    "lock_run_dir",
    "unlock_run_dir",
    "run_dir_holder",
    "remove_orphan_temp_files",
]

LOCK_NAME = ".lock"
"""The lock file's name inside a run folder."""

_HELD: dict[Path, IO[str]] = {}
"""Run folders this process holds, by resolved path, with the open lock file."""


def _forget_in_child() -> None:
    """In a forked child (an ``AsyncVectorEnv`` worker, say): drop the inherited lock files.

    A forked child shares the parent's open lock files, and a flock lasts until *every*
    descriptor of it is closed, so a child outliving the run would keep its folder locked.
    Closing the child's copies leaves the parent's lock as it is.
    """
    for handle in _HELD.values():
        handle.close()
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


class RunFolderInUse(ConfigError):
    """Another process trains in this run folder now."""


def _try_lock(path: Path) -> IO[str] | None:
    """The lock file opened and locked, or None when another process holds it."""
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def _holder_text(path: Path) -> str:
    try:
        pid, _, host = path.read_text().strip().partition(" ")
    except OSError:
        return "another process"
    return f"pid {pid} on {host}" if pid else "another process"


def lock_run_dir(run_dir: Path) -> None:
    """Hold ``run_dir``'s lock in this process (a no-op when it already does).

    Raises:
        RunFolderInUse: another process holds it; the message names its pid and host.
    """
    key = Path(run_dir).resolve()
    if fcntl is None or key in _HELD:
        return
    path = key / LOCK_NAME
    handle = _try_lock(path)
    if handle is None:
        raise RunFolderInUse(
            f"run folder {str(run_dir)!r} is in use by {_holder_text(path)}; wait for it to finish, "
            "stop it, or use another logging.name"
        )
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()} {socket.gethostname()}\n")
    handle.flush()
    _HELD[key] = handle
    remove_orphan_temp_files(key)


_ORPHAN = re.compile(r"^\.[^/]+\.(pt|json)\.[A-Za-z0-9_]+\.tmp$")
"""An atomic write's temporary file (``tempfile.mkstemp(prefix=".<name>.", suffix=".tmp")`` of
:mod:`plasticrl.trainers.checkpoint`: ``.checkpoint.pt.k2j4_x9a.tmp``, its JSON sidecar's)."""


def remove_orphan_temp_files(run_dir: Path) -> list[Path]:
    """Remove the temporary files a kill during a checkpoint write left in ``run_dir``.

    Called by :func:`lock_run_dir` each time a process takes a run folder: only the holder of
    the lock writes checkpoints there, so any such file left is an orphan of a killed writer
    (Note [Run folder lock]). Only the top level and only atomic-write temporaries (``_ORPHAN``)
    are touched.

    Returns:
        The files removed.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(run_dir).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if _ORPHAN.match(entry.name) and entry.is_file():
            try:
                entry.unlink()
            except OSError:
                continue
            removed.append(entry)
    return removed


def unlock_run_dir(run_dir: Path) -> None:
    """Release ``run_dir``'s lock if this process holds it (the file stays: Note [Run folder lock])."""
    handle = _HELD.pop(Path(run_dir).resolve(), None)
    if handle is not None:
        handle.close()  # closing the last descriptor releases the flock


def run_dir_holder(run_dir: Path) -> str | None:
    """Who trains in ``run_dir`` now (``"pid N on host"``, ``"this process"``), or None: nobody."""
    key = Path(run_dir).resolve()
    if key in _HELD:
        return "this process"
    path = key / LOCK_NAME
    if fcntl is None or not path.is_file():
        return None
    handle = _try_lock(path)
    if handle is None:
        return _holder_text(path)
    handle.close()
    return None
