"""What every agent's model gets from the config, built one way for DQN and PPO.

Contains:
    Learning: a model's probe, optimizer, regularizers and lr schedule.
    build_learning: those four from ``cfg``, in the order that matters (the probe first).
    build_interventions: the configured interventions, bound to the model and its optimizer.
    make_lr_scheduler: the configured schedule as a LambdaLR that scales every group's own lr.
    LinearDecay: the linear schedule's factor, whose horizon is checkpointed (extension keeps it).
    reset_optimizer_state: forget an optimizer's state, as at a task boundary
        (``optimizer.reset_on_task_switch``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import torch
from plasticrl.plasticity.interventions import Intervention, make_interventions
from plasticrl.plasticity.optimizers import OptimizerConfig, make_optimizer, param_groups
from plasticrl.plasticity.probe import PlasticityProbe
from plasticrl.plasticity.regularizers import Regularizer, make_regularizers
from plasticrl.trainers.config import ExperimentConfig
from plasticrl.trainers.seeding import stream
from torch import nn

__all__ = [
    "Learning",
    "build_learning",
    "build_interventions",
    "make_lr_scheduler",
    "LinearDecay",
    "reset_optimizer_state",
]


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
    A model with NaP-marked layers (``network.nap``) gets NaP's projection as a step post-hook of
    the optimizer, so it runs after every ``optimizer.step()`` of either loop (Note [NaP and the
    optimizer] in :mod:`plasticrl.plasticity.nap`); other models get no hook.
    """
    from plasticrl.plasticity.nap import attach_nap

    measuring = cfg.metrics.every > 0 or cfg.metrics.ntk_every > 0
    probe = PlasticityProbe(model, cfg.metrics) if measuring else None
    groups = param_groups(model, iso_head=cfg.optimizer.iso_head)
    optimizer = make_optimizer(groups, cfg.optimizer)
    attach_nap(model, optimizer)
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
    seed = stream(cfg.seed, "interventions")  # Note [Random streams] in plasticrl.trainers.seeding
    return make_interventions(
        model,
        optimizer,
        cfg.interventions,
        example_obs=torch.zeros((1, *(obs_space.shape or ())), device=device),
        seed=seed,
        init=cfg.network.init,
    )


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, total_updates: int
) -> torch.optim.lr_scheduler.LambdaLR | None:
    """None for a constant lr; a linear decay to ``lr_end_factor`` over ``total_updates`` otherwise.

    LambdaLR multiplies each param group's own base lr, keeping per-group ratios. The decay is a
    :class:`LinearDecay` object, not a closure, so LambdaLR's ``state_dict`` keeps its horizon: a
    resumed run decays over the horizon it started with, even when ``total_steps`` was raised to
    extend it (the lr stays at ``lr_end_factor`` past the horizon instead of jumping back up).
    """
    if cfg.lr_schedule == "constant":
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LinearDecay(total_updates, cfg.lr_end_factor))


class LinearDecay:
    """The lr factor ``1 - (1 - end) * min(update / horizon, 1)``: from 1 down to ``end``, then flat.

    A callable object (LambdaLR saves a callable object's ``__dict__`` in its ``state_dict`` and
    restores it on load, but not a function's), so the horizon is checkpointed with the schedule.

    Example:
        >>> decay = LinearDecay(horizon=100, end=0.5)
        >>> decay(0), decay(50), decay(100), decay(400)
        (1.0, 0.75, 0.5, 0.5)
    """

    def __init__(self, horizon: int, end: float) -> None:
        self.horizon = max(int(horizon), 1)
        self.end = float(end)

    def __call__(self, update: int) -> float:
        """The factor after ``update`` updates."""
        return 1.0 - (1.0 - self.end) * min(update / self.horizon, 1.0)


def reset_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Forget ``optimizer``'s per-parameter state (moments, step counts), keeping its param groups.

    torch's optimizers create their state lazily at a parameter's first step, so an empty state is
    exactly a fresh optimizer's: the next step is its first step (Adam's bias correction starts
    over), for every optimizer built on ``torch.optim.Optimizer`` (AdamO's included). The param
    groups, and with them the lr and the lr schedule, are untouched. An optimizer with state
    outside ``state`` may define ``reset_state()``, which is called instead.

    Example:
        >>> p = torch.nn.Parameter(torch.ones(2))
        >>> opt = torch.optim.Adam([p], lr=0.1)
        >>> p.grad = torch.ones(2); opt.step()
        >>> reset_optimizer_state(opt); len(opt.state)
        0
    """
    reset = getattr(optimizer, "reset_state", None)
    if callable(reset):
        reset()
    else:
        optimizer.state.clear()
