"""Atomic, self-describing checkpoints.

Contains:
    save_checkpoint: write ``state`` to ``path`` atomically (temp file, fsync, rename).
    load_checkpoint: read one back, with a clear error for a missing or foreign file.
    CHECKPOINT_NAME / CHECKPOINT_VERSION.

A checkpoint holds everything to continue a run as if never stopped: the resolved config, the agent
(networks, optimizer, lr schedule, regularizer state, exploration generator), the replay buffer,
the pickled vector env (env internals, wrapper lifetime state, episode statistics), the current
observation, the global RNG states, the global step and the logger step. An interrupted write never
replaces a good checkpoint: the rename is the commit point.

Checkpoints are pickles (``torch.load(weights_only=False)``): load only files you trust.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHECKPOINT_NAME", "CHECKPOINT_VERSION", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` (plus a format version) to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"version": CHECKPOINT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
