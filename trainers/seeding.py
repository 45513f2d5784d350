"""Seeding and RNG state capture, in one place (STYLE R15).

Contains:
    seed_everything: seed python, numpy and torch (and ask for deterministic kernels).
    rng_state / set_rng_state: capture and restore those global generators for checkpoints.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["seed_everything", "rng_state", "set_rng_state"]


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
