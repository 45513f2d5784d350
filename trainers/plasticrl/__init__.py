"""plasticrl: continual reinforcement learning for studying and fighting loss of plasticity.

The repository's folders are this package's subpackages (``pyproject.toml`` maps them):

    plasticrl.plasticity   the science: AdamO, isometry, regularizers, interventions, metrics
    plasticrl.agents       DQN, PPO, replay and rollout storage, network factories
    plasticrl.envs         env construction (MinAtar first) and the non-stationarity wrapper
    plasticrl.trainers     the training core: CLI, config, loops, checkpoints, logging
    plasticrl.trainers.experiments   sweeps, reports, figures, statistics over runs

The names most scripts need come from here, imported lazily (``import plasticrl`` loads nothing
heavy until a name is used):

Example:
    >>> from plasticrl import AdamO, NonStationary, PlasticityProbe, load, train
    >>> AdamO.__module__
    'plasticrl.plasticity.adamo'

This file is ``trainers/plasticrl/__init__.py`` in the repository: the top level holds only the
folders the product brief lists, so the package root lives inside ``trainers/``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # the science
    "AdamO": "plasticrl.plasticity.adamo",
    "PlasticityProbe": "plasticrl.plasticity.probe",
    "OPTIMIZERS": "plasticrl.plasticity.optimizers",
    "REGULARIZERS": "plasticrl.plasticity.regularizers",
    "INTERVENTIONS": "plasticrl.plasticity.interventions",
    "param_groups": "plasticrl.plasticity.optimizers",
    # environments and networks
    "NonStationary": "plasticrl.envs.nonstationary",
    "NETWORKS": "plasticrl.agents.networks",
    "make_network": "plasticrl.agents.networks",
    # running experiments
    "ExperimentConfig": "plasticrl.trainers.config",
    "load_config": "plasticrl.trainers.config",
    "train": "plasticrl.trainers.run",
    "resume": "plasticrl.trainers.run",
    "load": "plasticrl.trainers.evaluation",
    "TrainedAgent": "plasticrl.trainers.evaluation",
    "TrainResult": "plasticrl.trainers.session",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover (for type checkers and IDEs)
    from plasticrl.agents.networks import NETWORKS, make_network
    from plasticrl.envs.nonstationary import NonStationary
    from plasticrl.plasticity.adamo import AdamO
    from plasticrl.plasticity.interventions import INTERVENTIONS
    from plasticrl.plasticity.optimizers import OPTIMIZERS, param_groups
    from plasticrl.plasticity.probe import PlasticityProbe
    from plasticrl.plasticity.regularizers import REGULARIZERS
    from plasticrl.trainers.config import ExperimentConfig, load_config
    from plasticrl.trainers.evaluation import TrainedAgent, load
    from plasticrl.trainers.run import resume, train
    from plasticrl.trainers.session import TrainResult


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'plasticrl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
