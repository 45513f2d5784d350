"""Loss-term regularizers: the registry, its config and the protocol every regularizer follows.

Contains:
    RegularizerConfig: one entry of the ``regularizers`` config list (``{name, coef, ...}``).
    Regularizer: the protocol — a callable returning the scaled penalty, with a ``state_dict``.
    REGULARIZERS: the registry (``isometry`` from :mod:`plasticrl.plasticity.isometry`, ``spectral`` from
        :mod:`plasticrl.plasticity.spectral`; later ``l2_init``, ``parseval``).
    make_regularizers: build the configured list for a model and its tagged parameter groups.

A regularizer is bound to its model at construction (it keeps references to the parameters it
penalises and any state such as power-iteration vectors) and is called with no arguments once per
update; the agent adds the returned scalar to its task loss. Which tensors it penalises comes from
the ``kind``/``isometry`` tags of :func:`plasticrl.plasticity.optimizers.param_groups`, so regularizers and
optimizers agree on what a "hidden weight matrix" is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from plasticrl.plasticity.options import ConfigError, parse_entry
from plasticrl.plasticity.registry import Registry
from torch import Tensor, nn

__all__ = ["RegularizerConfig", "Regularizer", "RegularizerFactory", "REGULARIZERS", "make_regularizers"]


@dataclass(frozen=True)
class RegularizerConfig:
    """One ``regularizers`` entry: ``{name: spectral, coef: 0.001, <options>}``."""

    name: str
    """Key in REGULARIZERS or ``package.module:factory``."""
    coef: float
    """λ, the multiplier of the penalty in the loss."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Regularizer-specific keyword options (every other key of the entry)."""

    def __post_init__(self) -> None:
        if isinstance(self.coef, bool) or not (
            isinstance(self.coef, int | float) and math.isfinite(self.coef) and self.coef >= 0
        ):
            raise ValueError(
                f"regularizers[{self.name}].coef must be a finite number >= 0, got {self.coef!r}"
            )

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any], prefix: str = "regularizers[]") -> RegularizerConfig:
        """Build from a YAML mapping; every key besides ``name`` and ``coef`` is an option.

        The options are checked against the options dataclass the name is registered with
        (:func:`plasticrl.plasticity.options.parse_entry`, the one strict converter).

        Raises:
            ConfigError: no name or coef, an unknown name, an unknown option or a bad value.
        """
        name, fixed, options = parse_entry(entry, prefix, REGULARIZERS, {"coef": float})
        try:
            return cls(name=name, coef=fixed["coef"], options=options)
        except ValueError as exc:
            raise ConfigError(f"{prefix}: {exc}", key=prefix) from None

    def to_dict(self) -> dict[str, Any]:
        """Inverse of :meth:`from_dict`."""
        return {"name": self.name, "coef": self.coef, **self.options}


@runtime_checkable
class Regularizer(Protocol):
    """A penalty bound to a model; ``reg()`` returns ``coef * penalty`` as a scalar tensor."""

    name: str

    def __call__(self) -> Tensor:
        """The scaled penalty, differentiable w.r.t. the model's parameters."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint (e.g. power-iteration vectors)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> Any:
        """Restore :meth:`state_dict`."""
        ...


RegularizerFactory = Callable[[nn.Module, list[dict[str, Any]], RegularizerConfig], Regularizer]
REGULARIZERS: Registry[RegularizerFactory] = Registry("regularizer")


def make_regularizers(
    model: nn.Module, groups: list[dict[str, Any]], cfgs: Sequence[RegularizerConfig]
) -> list[Regularizer]:
    """Build every configured regularizer for ``model`` (``groups`` from ``param_groups``).

    Raises:
        ValueError: an unknown name, or options the factory does not accept.
    """
    out = []
    for cfg in cfgs:
        factory = REGULARIZERS.get(cfg.name)
        try:
            out.append(factory(model, groups, cfg))
        except TypeError as exc:
            raise ValueError(f"regularizer {cfg.name!r}: bad options {dict(cfg.options)}: {exc}") from None
    return out
