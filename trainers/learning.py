"""What every agent's model gets from the config, built one way for DQN and PPO.

Contains:
    Learning: a model's probe, optimizer, regularizers and lr schedule.
    build_learning: those four from ``cfg``, in the order that matters (the probe first).
    build_interventions: the configured interventions, bound to the model and its optimizer.
    make_lr_scheduler: the configured schedule as a LambdaLR that scales every group's own lr.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from plasticrl.plasticity.interventions import Intervention, make_interventions
from plasticrl.plasticity.optimizers import OptimizerConfig, make_optimizer, param_groups
from plasticrl.plasticity.probe import PlasticityProbe
from plasticrl.plasticity.regularizers import Regularizer, make_regularizers
from plasticrl.trainers.config import ExperimentConfig
from torch import nn

__all__ = [
    "Learning",
    "build_learning",
    "build_interventions",
    "make_lr_scheduler",
    "INTERVENTION_SEED_INDEX",
]

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


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, total_updates: int
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """None for a constant lr; a linear decay to ``lr_end_factor`` over ``total_updates`` otherwise.

    LambdaLR multiplies each param group's own base lr, keeping per-group ratios.
    """
    if cfg.lr_schedule == "constant":
        return None
    horizon = max(total_updates, 1)
    end = cfg.lr_end_factor

    def factor(update: int) -> float:
        return 1.0 - (1.0 - end) * min(update / horizon, 1.0)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
