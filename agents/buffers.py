"""A preallocated replay buffer with compact observation storage.

Contains:
    Batch: a typed sample of transitions (torch tensors).
    ReplayBuffer: ring buffer of (obs, action, reward, next_obs, terminated) with uint8 or bit-packed
        observation storage and a checkpointable state.
    choose_obs_storage: how observations of a space are stored (``auto`` resolution).

Note [Observation storage]
    MinAtar observations are bits: 10×10×C values in {0, 1}. Stored as float32 a 100k buffer of
    (obs, next_obs) for Breakout takes 320 MB; bit-packed it takes 10 MB and unpacking a batch of
    32 costs microseconds. ``auto`` picks ``bits`` for a ``Box(0, 1)`` space and ``float32``
    otherwise. Packing never silently loses information: ``add`` checks that every value of a
    ``bits``/``uint8`` observation is representable and raises otherwise (set
    ``agent.obs_storage=float32``).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

__all__ = ["Batch", "ReplayBuffer", "ObsStorage", "choose_obs_storage"]

ObsStorage = Literal["auto", "float32", "uint8", "bits"]


class Batch(NamedTuple):
    """Transitions sampled from the buffer; ``terminated`` is float (1.0 = no bootstrap)."""

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    next_obs: Tensor
    terminated: Tensor


def choose_obs_storage(space: gym.Space, storage: ObsStorage) -> Literal["float32", "uint8", "bits"]:
    """Resolve ``auto`` (Note [Observation storage]); validate an explicit choice."""
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(f"the replay buffer stores Box observations, got {space}")
    if storage != "auto":
        if storage not in ("float32", "uint8", "bits"):
            raise ValueError(f"invalid obs storage {storage!r}; valid: auto, float32, uint8, bits")
        return storage
    if np.all(space.low == 0) and np.all(space.high == 1):
        return "bits"
    return "float32"


class ReplayBuffer:
    """Ring buffer of transitions with preallocated numpy storage.

    Args:
        capacity: number of transitions kept (the oldest are overwritten).
        observation_space: the (single) env's observation space.
        storage: observation storage (Note [Observation storage]).
        seed: seed of the buffer's own sampling generator (checkpointed with the buffer).
        device: where sampled batches are put.
    """

    def __init__(
        self,
        capacity: int,
        observation_space: gym.Space,
        storage: ObsStorage = "auto",
        seed: int | np.random.SeedSequence = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if capacity < 1:
            raise ValueError(f"replay capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.storage = choose_obs_storage(observation_space, storage)
        self.obs_shape: tuple[int, ...] = tuple(observation_space.shape)
        self.obs_size = int(np.prod(self.obs_shape))
        self.device = torch.device(device)
        if self.storage == "bits":
            row: tuple[int, ...] = ((self.obs_size + 7) // 8,)
            dtype: Any = np.uint8
        else:
            row, dtype = self.obs_shape, np.dtype(self.storage)
        self.obs = np.zeros((capacity, *row), dtype=dtype)
        self.next_obs = np.zeros((capacity, *row), dtype=dtype)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self.pos = 0  # next slot to write
        self.size = 0  # filled slots
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.size

    def _encode(self, obs: np.ndarray) -> np.ndarray:
        n = obs.shape[0]
        if self.storage == "float32":
            return obs
        if self.storage == "uint8":
            if not np.array_equal(obs, obs.astype(np.uint8)):
                raise ValueError("observation values do not fit uint8 storage; set agent.obs_storage=float32")
            return obs
        flat = obs.reshape(n, self.obs_size)
        bits = flat != 0
        if not np.array_equal(flat, bits):
            raise ValueError(
                "observations are not all 0/1, cannot bit-pack them; set agent.obs_storage=float32"
            )
        return np.packbits(bits, axis=1)

    def _decode(self, stored: np.ndarray) -> np.ndarray:
        if self.storage == "bits":
            flat = np.unpackbits(stored, axis=1, count=self.obs_size)
            return flat.reshape(stored.shape[0], *self.obs_shape)
        return stored

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
    ) -> None:
        """Store a batch of transitions, one per sub-env (leading dimension n)."""
        n = len(actions)
        idx = (self.pos + np.arange(n)) % self.capacity
        self.obs[idx] = self._encode(obs)
        self.next_obs[idx] = self._encode(next_obs)
        self.actions[idx] = actions
        self.rewards[idx] = rewards
        self.terminated[idx] = terminated
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample_indices(self, batch_size: int) -> np.ndarray:
        """Uniform indices over the filled part (with replacement)."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return self.rng.integers(0, self.size, size=batch_size)

    def get(self, idx: np.ndarray) -> Batch:
        """The transitions at ``idx`` as float32 tensors on the buffer's device."""

        def obs_tensor(stored: np.ndarray) -> Tensor:
            t = torch.from_numpy(self._decode(stored[idx]))
            return t.to(self.device, torch.float32, non_blocking=True)

        return Batch(
            obs=obs_tensor(self.obs),
            actions=torch.from_numpy(self.actions[idx]).to(self.device),
            rewards=torch.from_numpy(self.rewards[idx]).to(self.device),
            next_obs=obs_tensor(self.next_obs),
            terminated=torch.from_numpy(self.terminated[idx]).to(self.device),
        )

    def sample(self, batch_size: int) -> Batch:
        """A uniform batch of ``batch_size`` transitions."""
        return self.get(self.sample_indices(batch_size))

    def state_dict(self) -> dict[str, Any]:
        """Filled storage, write position and sampling-generator state (for checkpoints)."""
        return {
            "capacity": self.capacity,
            "storage": self.storage,
            "obs_shape": self.obs_shape,
            "pos": self.pos,
            "size": self.size,
            "obs": self.obs[: self.size].copy(),
            "next_obs": self.next_obs[: self.size].copy(),
            "actions": self.actions[: self.size].copy(),
            "rewards": self.rewards[: self.size].copy(),
            "terminated": self.terminated[: self.size].copy(),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into a buffer of the same capacity, storage and shape."""
        for key in ("capacity", "storage", "obs_shape"):
            mine, theirs = getattr(self, key), state[key]
            if tuple(np.atleast_1d(mine)) != tuple(np.atleast_1d(theirs)):
                raise ValueError(f"replay buffer {key} mismatch: checkpoint {theirs!r}, buffer {mine!r}")
        size = int(state["size"])
        for key in ("obs", "next_obs", "actions", "rewards", "terminated"):
            getattr(self, key)[:size] = state[key]
        self.pos, self.size = int(state["pos"]), size
        self.rng.bit_generator.state = state["rng"]
