"""The folded observation gather: an env rearranges or zero-pads its observation in a copy it makes anyway.

Contains:
    ObservationGather: the protocol (``plasticrl.envs.make.MinAtarObservation`` implements it).
    supports_gather: whether an env itself implements it.
    gather: the reference meaning of a gather index.
    gathered_space: the observation space after a gather.
    check_gather_index: validation of a gather index.

See Note [Folded observation gather] in :mod:`plasticrl.envs.nonstationary`.
"""

from __future__ import annotations

from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium.spaces import Box

__all__ = ["ObservationGather", "supports_gather", "gather", "gathered_space", "check_gather_index"]


class ObservationGather(Protocol):
    """An env that can rearrange and zero-pad its observation within a copy it makes anyway.

    See Note [Folded observation gather]; implemented by ``plasticrl.envs.make.MinAtarObservation``.
    """

    def set_observation_gather(self, index: np.ndarray | None) -> None:
        """From the next observation on, return ``gather(native, index)``; None returns ``native``.

        The env's ``observation_space`` becomes ``gathered_space(native_space, index)``.

        Args:
            index: integers in ``[0, native.size]`` with the gathered observation's shape (checked
                with :func:`check_gather_index`), or None.

        Raises:
            ValueError: ``index`` is not such an array.
        """
        ...


def supports_gather(env: gym.Env[Any, Any]) -> bool:
    """Whether ``env`` itself (not an env it wraps) implements :class:`ObservationGather`."""
    return callable(getattr(type(env), "set_observation_gather", None))


def gather(observation: np.ndarray, index: np.ndarray) -> np.ndarray:
    """The reference meaning of a gather: the flat cells of ``observation`` that ``index`` picks.

    ``index`` has the result's shape; the value ``observation.size`` picks a cell that is 0.

    Example:
        >>> gather(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([3, 0, 4])).tolist()
        [4.0, 1.0, 0.0]
    """
    flat = observation.reshape(-1)
    return np.concatenate((flat, np.zeros(1, flat.dtype))).take(index)


def gathered_space(space: Box, index: np.ndarray) -> Box:
    """The space of ``gather(obs, index)`` for ``obs`` in ``space``: its bounds gathered likewise."""
    low, high = gather(space.low, index), gather(space.high, index)
    return Box(low, high, low.shape, space.dtype)  # type: ignore[arg-type]


def check_gather_index(index: Any, size: int) -> np.ndarray:
    """Return ``index`` as an ``intp`` array after checking it gathers from ``size`` cells (and 0).

    Raises:
        ValueError: ``index`` is not an integer array with entries in ``[0, size]``.
    """
    array = np.asarray(index)
    if array.dtype.kind not in "iu" or array.size == 0 or array.min() < 0 or array.max() > size:
        raise ValueError(
            f"an observation gather index must be a non-empty integer array with entries in "
            f"[0, {size}] ({size} picks a zero cell), got {index!r:.80}"
        )
    return array.astype(np.intp)
