"""The science of plasticrl: optimizers, regularizers, isometric layers, interventions, metrics.

Nothing here imports from ``agents``, ``envs`` or ``trainers``.
"""

from plasticity.optimizers import OPTIMIZERS, OptimizerConfig, make_optimizer, param_groups
from plasticity.regularizers import REGULARIZERS, RegularizerConfig, make_regularizers

__all__ = [
    "OPTIMIZERS",
    "OptimizerConfig",
    "make_optimizer",
    "param_groups",
    "REGULARIZERS",
    "RegularizerConfig",
    "make_regularizers",
]
