"""Atomic, self-describing checkpoints.

Contains:
    save_checkpoint: write ``state`` to ``path`` atomically (temp file, fsync, rename).
    load_checkpoint: read one back, with a clear error for a missing or foreign file.
    load_summary: a checkpoint's global step and config from its small JSON sidecar, without
        unpickling the checkpoint (replay buffers make those hundreds of MB); falls back to the
        checkpoint itself (and rewrites the sidecar) when the sidecar is missing or stale.
    checkpoint_identity: the identity (generation, nonce) written inside a checkpoint state.
    CHECKPOINT_NAME / CHECKPOINT_VERSION / SUMMARY_KEYS.

A checkpoint holds everything to continue a run as if never stopped: the resolved config, the agent
(networks, optimizer, lr schedule, regularizer state, exploration generator), the replay buffer,
the pickled vector env (env internals, wrapper lifetime state, episode statistics), the current
observation, the global RNG states, the global step and the logger step. An interrupted write never
replaces a good checkpoint: the rename is the commit point.

Note [Checkpoint and sidecar]
    A checkpoint ``X.pt`` has a sidecar ``X.json`` that says, without unpickling ``X.pt``, which
    step it holds. The pair is two files, so a crash can fall between their renames; the sidecar
    therefore names exactly the file it describes:

    - inside the checkpoint, ``checkpoint_id = {generation, nonce}``: the writer's count of
      checkpoints in this run and a random token, unique to this one write;
    - in the sidecar, the same ``checkpoint_id``, the summary keys, and the file's fingerprint
      (``size``, ``mtime_ns``, ``inode``) as it stood after its rename.

    The checkpoint is renamed first, then the sidecar. Each crash point leaves a state that is
    read correctly: before the first rename, the old pair (agreeing; the orphan temp file is
    removed when the run folder is next opened); between the two renames, a new checkpoint under
    the old sidecar, whose fingerprint no longer matches (the new file has a later mtime, and an
    inode other than the file it replaces, as it is created while that one still exists); after
    the second, the new pair.
    :func:`load_summary` trusts a sidecar only when the fingerprint matches; otherwise it reads
    the checkpoint itself and rewrites the sidecar, so a stale sidecar is never taken as current
    and a complete run is never taken for an incomplete one. Two checkpoints of the same size (the
    usual case for PPO, whose checkpoint has no growing buffer) are told apart by inode and mtime.
    A copied run folder (new inodes) only costs one full read.

Checkpoints are pickles (``torch.load(weights_only=False)``): load only files you trust.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
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
    "recorded_summary",
    "checkpoint_identity",
]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 1
SUMMARY_KEYS = ("global_step", "config")
"""Keys of a checkpoint's state copied into its sidecar ``<name>.json`` (when present and JSON-able)."""


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _fingerprint(path: Path) -> dict[str, int]:
    """What tells this file apart from any earlier file at ``path`` (Note [Checkpoint and sidecar])."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def recorded_summary(path: str | Path) -> dict[str, Any] | None:
    """The :data:`SUMMARY_KEYS` of the checkpoint at ``path``, or of the one that was there.

    With the checkpoint present this is :func:`load_summary`. Without it, the sidecar alone
    answers: a study commits its finished runs' folders without their checkpoints but with the
    sidecars (Note [Committed results] in ``trainers/experiments/sweep.py``), and readers that only
    need a run's step and config (the sweep's planner, the report) must work on such a folder.
    Returns None when neither file is there or the sidecar cannot be read.

    Raises:
        FileNotFoundError / ValueError: as :func:`load_checkpoint`, for a checkpoint that is there.
    """
    path = Path(path)
    if path.is_file():
        return load_summary(path)
    try:
        recorded = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict):
        return None
    return {k: recorded[k] for k in SUMMARY_KEYS if k in recorded}


def checkpoint_identity(state: dict[str, Any]) -> dict[str, Any] | None:
    """The ``{generation, nonce}`` a checkpoint written by :func:`save_checkpoint` carries, or None.

    Checkpoints written before identities existed carry none.
    """
    identity = state.get("checkpoint_id")
    return dict(identity) if isinstance(identity, dict) else None


def _write_sidecar(path: Path, summary: dict[str, Any], identity: Any, fingerprint: dict[str, int]) -> bool:
    """Write ``path``'s sidecar atomically; False (and no sidecar) when ``summary`` is not JSON-able."""
    try:
        text = json.dumps({**summary, "checkpoint_id": identity, "file": fingerprint})
    except (TypeError, ValueError):  # a state that is not JSON-able has no sidecar
        _sidecar(path).unlink(missing_ok=True)
        return False
    _write_atomic(_sidecar(path), lambda f: f.write(text.encode()))
    return True


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


def save_checkpoint(state: dict[str, Any], path: str | Path, generation: int = 0) -> Path:
    """Write ``state`` (plus a format version and an identity) to ``path`` atomically; returns the path.

    The identity ``checkpoint_id = {generation, nonce}`` (``generation``: the caller's count of
    checkpoints in this run; the nonce is random) goes inside the checkpoint. Then the sidecar
    ``<path stem>.json`` is written (also atomically) with the state's :data:`SUMMARY_KEYS`, the
    same identity and the checkpoint file's fingerprint, which :func:`load_summary` checks (Note
    [Checkpoint and sidecar]).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    identity = {"generation": int(generation), "nonce": uuid.uuid4().hex}
    payload = {"version": CHECKPOINT_VERSION, **state, "checkpoint_id": identity}
    _write_atomic(path, lambda f: torch.save(payload, f))
    summary = {k: state[k] for k in SUMMARY_KEYS if k in state}
    _write_sidecar(path, summary, identity, _fingerprint(path))
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
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"{str(path)!r} is not a readable checkpoint (truncated, corrupted or not a torch file: {why})"
        ) from None
    if not isinstance(state, dict) or "version" not in state:
        what = "a dict without a 'version' key" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise ValueError(
            f"{str(path)!r} is not a plasticrl checkpoint: it holds {what}, not the state plasticrl "
            "train writes"
        )
    if state["version"] != CHECKPOINT_VERSION:
        raise ValueError(
            f"{str(path)!r} is a plasticrl checkpoint of format version {state['version']!r}; this "
            f"plasticrl reads version {CHECKPOINT_VERSION}"
        )
    return state


def load_summary(path: str | Path) -> dict[str, Any]:
    """The :data:`SUMMARY_KEYS` of the checkpoint at ``path``, cheaply.

    Reads the JSON sidecar when it describes exactly this checkpoint file (same size, mtime and
    inode as recorded after the checkpoint's rename); otherwise (no sidecar, a sidecar of an
    earlier checkpoint after a crash between the two renames, a copied folder) loads the
    checkpoint itself and rewrites a stale sidecar from it, when the file did not change while it
    was read (Note [Checkpoint and sidecar]). A folder that cannot be written is only read.

    Raises:
        FileNotFoundError / ValueError: as :func:`load_checkpoint`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {str(path)!r}")
    sidecar = _sidecar(path)
    before = _fingerprint(path)
    try:
        recorded = json.loads(sidecar.read_text())
        if isinstance(recorded, dict) and recorded.get("file") == before:
            return {k: recorded[k] for k in SUMMARY_KEYS if k in recorded}
    except (OSError, ValueError):
        pass
    state = load_checkpoint(path)
    summary = {k: state[k] for k in SUMMARY_KEYS if k in state}
    if sidecar.exists() and _fingerprint(path) == before:  # a stale sidecar: recompute it
        try:
            _write_sidecar(path, summary, checkpoint_identity(state), before)
        except OSError:
            pass
    return summary
