"""What every agent's model gets from the config, built one way for DQN and PPO.

Contains:
    Learning: a model's probe, optimizer, regularizers and lr schedule.
    build_learning: those four from ``cfg``, in the order that matters (the probe first).
    build_interventions: the configured interventions, bound to the model and its optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from plasticity.interventions import Intervention, make_interventions
from plasticity.metrics import PlasticityProbe
from plasticity.optimizers import make_optimizer, param_groups
from plasticity.regularizers import Regularizer, make_regularizers
from trainers.config import ExperimentConfig
from trainers.run import make_lr_scheduler

__all__ = ["Learning", "build_learning", "build_interventions", "INTERVENTION_SEED_INDEX"]

INTERVENTION_SEED_INDEX = 4
"""Interventions draw from child 4 of ``SeedSequence(cfg.seed).spawn(5)`` (fixed: checkpoints and
published runs depend on it)."""


@dataclass
class Learning:
    """How a model learns and is measured.

    Attributes:
        probe: plasticity metrics; None when ``metrics.every`` and ``metrics.ntk_every`` are 0.
        optimizer: over the model's tagged parameter groups.
        regularizers: the configured loss regularizers.
        scheduler: the lr schedule over the run's updates, or None for a constant lr.
    """

    probe: PlasticityProbe | None
    optimizer: torch.optim.Optimizer
    regularizers: list[Regularizer]
    scheduler: Any


def build_learning(model: nn.Module, cfg: ExperimentConfig, total_updates: int) -> Learning:
    """The probe, optimizer, regularizers and lr schedule of ``model`` from ``cfg``.

    The probe is built before any update, so it keeps the initial weights (distance-to-init).
    """
    measuring = cfg.metrics.every > 0 or cfg.metrics.ntk_every > 0
    probe = PlasticityProbe(model, cfg.metrics) if measuring else None
    groups = param_groups(model, iso_head=cfg.optimizer.iso_head)
    optimizer = make_optimizer(groups, cfg.optimizer)
    regularizers = make_regularizers(model, groups, cfg.regularizers)
    scheduler = make_lr_scheduler(optimizer, cfg.optimizer, total_updates)
    return Learning(probe, optimizer, regularizers, scheduler)


def build_interventions(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    cfg: ExperimentConfig,
    obs_space: gym.Space[Any],
    device: torch.device,
) -> list[Intervention]:
    """``cfg.interventions`` bound to ``model`` and ``optimizer``.

    Raises:
        ValueError: an impossible combination (e.g. ReDo on a constrained network), at start-up.
    """
    seed = np.random.SeedSequence(cfg.seed).spawn(INTERVENTION_SEED_INDEX + 1)[INTERVENTION_SEED_INDEX]
    return make_interventions(
        model,
        optimizer,
        cfg.interventions,
        example_obs=torch.zeros((1, *obs_space.shape), device=device),
        seed=seed,
        init=cfg.network.init,
    )
