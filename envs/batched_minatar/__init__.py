"""A batched MinAtar: the five games stepped for every env of a vector at once, as torch operations.

The same games as the ``minatar`` package (the reference and plasticrl's default): given the same
seeds and actions, observations, rewards, terminations, sticky actions and difficulty ramping
equal the package's step for step when the draws come from :class:`NumpySource` (Note [Exact
draws] in :mod:`plasticrl.envs.batched_minatar.common`); normal use draws from a torch generator
on the env's device. :class:`BatchedMinAtar` is a ``gymnasium.vector.VectorEnv`` that plasticrl's
trainers can use in place of ``plasticrl.envs.vector.make_vector_env``'s sync vector env
(:func:`make_batched_vector_env`).

Contains:
    BatchedMinAtar, GAMES, game_name: :mod:`.vector`.
    make_batched_vector_env: :mod:`.make` (a run's config in, the vector env out).
    BatchedNonStationary: :mod:`.nonstationary` (every env changes task at once).
    Asterix, Breakout, Freeway, Seaquest, SpaceInvaders: the games, one module each.
    TorchSource, NumpySource, RandomSource, BatchedGame: :mod:`.common`.
"""

from plasticrl.envs.batched_minatar.asterix import Asterix
from plasticrl.envs.batched_minatar.breakout import Breakout
from plasticrl.envs.batched_minatar.common import BatchedGame, NumpySource, RandomSource, TorchSource
from plasticrl.envs.batched_minatar.freeway import Freeway
from plasticrl.envs.batched_minatar.make import make_batched_vector_env
from plasticrl.envs.batched_minatar.seaquest import Seaquest
from plasticrl.envs.batched_minatar.space_invaders import SpaceInvaders
from plasticrl.envs.batched_minatar.vector import GAMES, BatchedMinAtar, game_name

__all__ = [
    "Asterix",
    "Breakout",
    "Freeway",
    "Seaquest",
    "SpaceInvaders",
    "BatchedGame",
    "NumpySource",
    "RandomSource",
    "TorchSource",
    "GAMES",
    "BatchedMinAtar",
    "game_name",
    "make_batched_vector_env",
]
