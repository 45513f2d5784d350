"""Atomic, self-describing checkpoints.

Contains:
    save_checkpoint: write ``state`` to ``path`` atomically (temp file, fsync, rename).
    load_checkpoint: read one back, with a clear error for a missing or foreign file.
    load_summary: a checkpoint's global step and config from its small JSON sidecar, without
        unpickling the checkpoint (replay buffers make those hundreds of MB); falls back to the
        checkpoint itself when the sidecar is missing or stale.
    CHECKPOINT_NAME / CHECKPOINT_VERSION / SUMMARY_KEYS.

A checkpoint holds everything to continue a run as if never stopped: the resolved config, the agent
(networks, optimizer, lr schedule, regularizer state, exploration generator), the replay buffer,
the pickled vector env (env internals, wrapper lifetime state, episode statistics), the current
observation, the global RNG states, the global step and the logger step. An interrupted write never
replaces a good checkpoint: the rename is the commit point.

Checkpoints are pickles (``torch.load(weights_only=False)``): load only files you trust.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINT_NAME",
    "CHECKPOINT_VERSION",
    "SUMMARY_KEYS",
    "save_checkpoint",
    "load_checkpoint",
    "load_summary",
]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 1
SUMMARY_KEYS = ("global_step", "config")
"""Keys of a checkpoint's state copied into its sidecar ``<name>.json`` (when present and JSON-able)."""


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _write_atomic(path: Path, write: Any) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, fsync it, and rename it onto ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` (plus a format version) to ``path`` atomically; returns the path.

    Then writes the sidecar ``<path stem>.json`` (also atomically) with the state's
    :data:`SUMMARY_KEYS` and the checkpoint's size, which :func:`load_summary` checks.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, lambda f: torch.save({"version": CHECKPOINT_VERSION, **state}, f))
    summary = {k: state[k] for k in SUMMARY_KEYS if k in state}
    try:
        text = json.dumps({**summary, "checkpoint_bytes": path.stat().st_size})
    except (TypeError, ValueError):  # a state that is not JSON-able has no sidecar
        _sidecar(path).unlink(missing_ok=True)
        return path
    _write_atomic(_sidecar(path), lambda f: f.write(text.encode()))
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a plasticrl checkpoint of a known version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file
        raise ValueError(f"{str(path)!r} is not a readable checkpoint: {exc}") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{str(path)!r} is not a plasticrl checkpoint (version {CHECKPOINT_VERSION})")
    return state


def load_summary(path: str | Path) -> dict[str, Any]:
    """The :data:`SUMMARY_KEYS` of the checkpoint at ``path``, cheaply.

    Reads the JSON sidecar when it describes this checkpoint (same size); otherwise (no sidecar,
    or a crash between writing the checkpoint and its sidecar) loads the checkpoint itself.

    Raises:
        FileNotFoundError / ValueError: as :func:`load_checkpoint`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    try:
        summary = json.loads(_sidecar(path).read_text())
        if summary.pop("checkpoint_bytes") == path.stat().st_size:
            return summary
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    state = load_checkpoint(path)
    return {k: state[k] for k in SUMMARY_KEYS if k in state}
