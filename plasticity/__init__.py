"""The science of plasticrl: optimizers, regularizers, isometric layers, interventions, metrics.

Nothing here imports from ``agents``, ``envs`` or ``trainers``.
"""

import plasticrl.plasticity.adamo  # noqa: F401  (registers the adamo optimizer)
import plasticrl.plasticity.cbp  # noqa: F401  (registers the cbp intervention)
import plasticrl.plasticity.isometry  # noqa: F401  (registers the isometry regularizer)
import plasticrl.plasticity.l2_init  # noqa: F401  (registers the l2_init regularizer)
import plasticrl.plasticity.parseval  # noqa: F401  (registers the parseval regularizer)
import plasticrl.plasticity.redo  # noqa: F401  (registers the redo intervention)
import plasticrl.plasticity.shrink_perturb  # noqa: F401  (registers the shrink_perturb intervention)
import plasticrl.plasticity.spectral  # noqa: F401  (registers the spectral regularizer)
from plasticrl.plasticity.adamo import AdamO
from plasticrl.plasticity.interventions import INTERVENTIONS, InterventionConfig, make_interventions
from plasticrl.plasticity.optimizers import OPTIMIZERS, OptimizerConfig, make_optimizer, param_groups
from plasticrl.plasticity.regularizers import REGULARIZERS, RegularizerConfig, make_regularizers

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
