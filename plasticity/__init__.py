"""The science of plasticrl: optimizers, regularizers, isometric layers, interventions, metrics.

Nothing here imports from ``agents``, ``envs`` or ``trainers``.
"""

import plasticity.adamo  # noqa: F401  (registers the adamo optimizer)
import plasticity.cbp  # noqa: F401  (registers the cbp intervention)
import plasticity.isometry  # noqa: F401  (registers the isometry regularizer)
import plasticity.l2_init  # noqa: F401  (registers the l2_init regularizer)
import plasticity.parseval  # noqa: F401  (registers the parseval regularizer)
import plasticity.redo  # noqa: F401  (registers the redo intervention)
import plasticity.shrink_perturb  # noqa: F401  (registers the shrink_perturb intervention)
import plasticity.spectral  # noqa: F401  (registers the spectral regularizer)
from plasticity.adamo import AdamO
from plasticity.interventions import INTERVENTIONS, InterventionConfig, make_interventions
from plasticity.optimizers import OPTIMIZERS, OptimizerConfig, make_optimizer, param_groups
from plasticity.regularizers import REGULARIZERS, RegularizerConfig, make_regularizers

__all__ = [
    "AdamO",
    "OPTIMIZERS",
    "OptimizerConfig",
    "make_optimizer",
    "param_groups",
    "REGULARIZERS",
    "RegularizerConfig",
    "make_regularizers",
    "INTERVENTIONS",
    "InterventionConfig",
    "make_interventions",
]
