"""Seeding and RNG state capture, in one place (STYLE R15).

Contains:
    STREAMS: the run's random streams, one named table (name → child of the run seed).
    stream: the ``SeedSequence`` of one named stream.
    seed_everything: seed python, numpy and torch (and ask for deterministic kernels).
    rng_state / set_rng_state: capture and restore those global generators for checkpoints.

Note [Random streams]
    Every random draw of a run comes from a stream of its own, so that adding or removing one
    consumer (turning the metrics on, an intervention that stays idle) never shifts the draws of
    another. Each stream is one child of ``SeedSequence(cfg.seed)``, at a fixed index (checkpoints
    and published runs depend on the indices: append, never renumber):

    ======  ======================  ==================================================
    child   stream                  drawn by
    ======  ======================  ==================================================
    0       ``agent``               DQN's ε-greedy exploration; PPO's action sampling
                                    (its child 0) and minibatch shuffling (its child 1)
    1       ``replay``              the replay buffer's minibatch indices
    2       ``probe``               which observations the plasticity probe measures on
    3       ``intervention_batch``  which observations ReDo/CBP score units on
    4       ``interventions``       the interventions' own generators (entry i: its child i)
    5       ``eval``                evaluation episodes: reset seeds and policy draws (the
                                    evaluation at env step s: this stream's child s)
    ======  ======================  ==================================================

    The environments are seeded apart from this table, by ``reset(seed=cfg.seed)`` (sub-env i
    gets ``cfg.seed + i``) and their action spaces; a change kind's per-step observation hook
    draws from a generator the wrapper seeds from the same reset seed.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["STREAMS", "stream", "seed_everything", "rng_state", "set_rng_state"]

STREAMS: dict[str, int] = {
    "agent": 0,
    "replay": 1,
    "probe": 2,
    "intervention_batch": 3,
    "interventions": 4,
    "eval": 5,
}
"""Stream name → its child index of ``SeedSequence(run seed)`` (Note [Random streams])."""


def stream(seed: int, name: str) -> np.random.SeedSequence:
    """The ``SeedSequence`` of stream ``name`` of a run seeded ``seed`` (a fresh object each call).

    Equal to ``SeedSequence(seed).spawn(n)[STREAMS[name]]`` for any ``n`` past the index.

    Example:
        >>> import numpy as np
        >>> a = np.random.default_rng(stream(7, "replay")).random()
        >>> b = np.random.default_rng(np.random.SeedSequence(7).spawn(2)[1]).random()
        >>> a == b
        True
    """
    if name not in STREAMS:
        raise ValueError(f"unknown random stream {name!r}; valid: {sorted(STREAMS)}")
    return np.random.SeedSequence(seed, spawn_key=(STREAMS[name],))


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed ``random``, ``numpy`` and ``torch``; with ``deterministic`` ask torch for determinism.

    Envs are seeded separately, through ``reset(seed=...)`` and ``action_space.seed``; agents and
    buffers own generators seeded from the run seed.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """The global generators' states (python, numpy, torch CPU and CUDA)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
