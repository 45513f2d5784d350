"""A preallocated replay buffer with compact observation storage.

Contains:
    Batch: a typed sample of transitions (torch tensors).
    ReplayBuffer: ring buffer of (obs, action, reward, next_obs, terminated) with uint8, bit-packed or
        frame-deduplicated observation storage and a checkpointable state.
    choose_obs_storage: how observations of a space are stored (``auto`` resolution).

Note [Observation storage]
    MinAtar observations are bits: 10×10×C values in {0, 1}. Stored as float32 a 100k buffer of
    (obs, next_obs) for Breakout takes 320 MB; bit-packed it takes 10 MB and unpacking a batch of
    32 costs microseconds. ``auto`` picks ``bits`` for a ``Box(0, 1)`` space, ``frames`` for a
    uint8 image space ``(C, H, W)`` with C < H, W (a frame stack, Atari's ``(4, 84, 84)``),
    ``uint8`` for other uint8 spaces and ``float32`` otherwise. Packing never silently loses
    information: ``add`` checks that every value of a ``bits``/``uint8`` observation is
    representable and raises otherwise (set ``agent.obs_storage=float32``); under ``auto`` a
    ``Box(0, 1)`` float space whose values are not all 0/1 switches the buffer to ``float32``
    instead (the bits stored so far are exact, so nothing is lost).

Note [Frame storage]
    A frame-stacked observation ``(k, H, W)`` shares k - 1 frames with the next one, and an
    observation shares all k with the previous transition's next observation. ``frames`` keeps
    each distinct frame once, in a ring ``frames`` of frame ids (global counters, frame ``f`` at
    ``f % len(frames)``), and each transition as 2k frame ids (obs, then next_obs). Sharing is
    found by comparison, never assumed: an observation reuses the previous next observation's
    ids of its sub-env only when equal to it, a next observation reuses ``obs[1:]`` only when
    its first k - 1 frames equal those, and a new stack's equal consecutive frames (the reset
    padding of ``FrameStackObservation``) are stored once. So any uint8 ``(C, H, W)`` space is
    stored exactly; a frame stack costs one frame per transition, plus up to k per episode start.
    Atari: 84·84 = 7,056 bytes of frames and 64 of ids per transition (7.1 GB per 1M), against
    56,448 for uint8 obs + next_obs and 225,792 for float32. The ring is sized for one frame per
    transition plus a margin and grows (rarely: many episode starts) before it would overwrite a
    frame a live transition uses (``_check_room``).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

__all__ = ["Batch", "ReplayBuffer", "ObsStorage", "choose_obs_storage"]

ObsStorage = Literal["auto", "float32", "uint8", "bits", "frames"]


class Batch(NamedTuple):
    """Transitions sampled from the buffer; ``terminated`` is float (1.0 = no bootstrap)."""

    obs: Tensor
    actions: Tensor
    rewards: Tensor
    next_obs: Tensor
    terminated: Tensor


def choose_obs_storage(
    space: gym.Space, storage: ObsStorage
) -> Literal["float32", "uint8", "bits", "frames"]:
    """Resolve ``auto`` (Note [Observation storage]); validate an explicit choice."""
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(
            f"the replay buffer stores Box observations, got {space}; flatten a Dict or Tuple space "
            f"with env.wrappers: [FlattenObservation] (MiniGrid: [minigrid.wrappers:ImgObsWrapper])"
        )
    if storage != "auto":
        if storage not in ("float32", "uint8", "bits", "frames"):
            raise ValueError(
                f"agent.obs_storage: invalid obs storage {storage!r}; valid: auto, float32, uint8, bits, "
                "frames"
            )
        if storage == "frames" and len(space.shape) < 2:
            raise ValueError(
                f"agent.obs_storage=frames needs observations of at least 2 dimensions (frames on the "
                f"first), got shape {space.shape}"
            )
        return storage
    if space.dtype == np.uint8:
        shape = space.shape
        return "frames" if len(shape) == 3 and shape[0] < min(shape[1], shape[2]) else "uint8"
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
        self.auto = storage == "auto"
        self.storage = choose_obs_storage(observation_space, storage)
        self.obs_shape: tuple[int, ...] = tuple(observation_space.shape)
        self.obs_size = int(np.prod(self.obs_shape))
        self.device = torch.device(device)
        self._allocate_obs()
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self.pos = 0  # next slot to write
        self.size = 0  # filled slots
        self.rng = np.random.default_rng(seed)

    def _allocate_obs(self, frame_capacity: int | None = None) -> None:
        """Preallocate the observation storage of ``self.storage``."""
        capacity = self.capacity
        if self.storage == "frames":
            k = self.obs_shape[0]
            self.obs = self.next_obs = np.zeros((0, *self.obs_shape), np.uint8)  # unused
            self.frame_ids = np.zeros((capacity, 2 * k), np.int64)
            self.written_at = np.zeros(capacity, np.int64)
            if frame_capacity is None:
                frame_capacity = capacity + capacity // 64 + 8 * k + 1
            self.frames = np.zeros((frame_capacity, *self.obs_shape[1:]), np.uint8)
            self.frame_count = 0  # frames ever stored: the next frame id
            self.last_ids: np.ndarray | None = None  # (n, k) ids of each sub-env's last next_obs
            return
        if self.storage == "bits":
            row: tuple[int, ...] = ((self.obs_size + 7) // 8,)
            dtype: Any = np.uint8
        else:
            row, dtype = self.obs_shape, np.dtype(self.storage)
        self.obs = np.zeros((capacity, *row), dtype=dtype)
        self.next_obs = np.zeros((capacity, *row), dtype=dtype)

    def __len__(self) -> int:
        return self.size

    @property
    def obs_bytes(self) -> int:
        """Bytes of observation storage held (preallocated), for every transition slot."""
        if self.storage == "frames":
            return self.frames.nbytes + self.frame_ids.nbytes + self.written_at.nbytes
        return self.obs.nbytes + self.next_obs.nbytes

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

    def _to_float32(self) -> None:
        """Switch an ``auto`` bit-packed buffer to float32 storage, keeping what it holds (exactly)."""
        obs, next_obs = self._decode(self.obs), self._decode(self.next_obs)
        self.storage = "float32"
        self.obs, self.next_obs = obs.astype(np.float32), next_obs.astype(np.float32)

    # ---- frame storage (Note [Frame storage])

    def _reuse_window(self, n: int) -> int:
        """How old (in frame ids) a frame may be and still be shared by a new transition."""
        k = self.obs_shape[0]
        return 4 * k * k * n + 64

    def _frames_of(self, ids: np.ndarray) -> np.ndarray:
        return self.frames[ids % len(self.frames)]

    def _add_frames(self, obs: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
        """The (n, 2k) frame ids of a batch of transitions, storing the frames not yet stored."""
        if obs.dtype != np.uint8 and not np.array_equal(obs, obs.astype(np.uint8)):
            raise ValueError("observation values do not fit uint8 frames; set agent.obs_storage=float32")
        if next_obs.dtype != np.uint8 and not np.array_equal(next_obs, next_obs.astype(np.uint8)):
            raise ValueError("observation values do not fit uint8 frames; set agent.obs_storage=float32")
        n, k = obs.shape[0], self.obs_shape[0]
        if self.last_ids is None or len(self.last_ids) != n:
            self.last_ids = None
        window = self._reuse_window(n)
        ids = np.empty((n, 2 * k), np.int64)
        new: list[np.ndarray] = []  # frames to store, in id order from self.frame_count
        next_id = self.frame_count

        def stack_ids(stack: np.ndarray, out: np.ndarray) -> None:
            nonlocal next_id
            for i in range(k):
                if i > 0 and np.array_equal(stack[i], stack[i - 1]):
                    out[i] = out[i - 1]
                else:
                    new.append(stack[i])
                    out[i] = next_id
                    next_id += 1

        for j in range(n):
            prev = self.last_ids[j] if self.last_ids is not None else None
            if (
                prev is not None
                and prev.min() >= self.frame_count - window
                and np.array_equal(self._frames_of(prev), obs[j])
            ):
                ids[j, :k] = prev
            else:
                stack_ids(obs[j], ids[j, :k])
            if np.array_equal(next_obs[j, :-1], obs[j, 1:]):
                ids[j, k : 2 * k - 1] = ids[j, 1:k]
                new.append(next_obs[j, -1])
                ids[j, 2 * k - 1] = next_id
                next_id += 1
            else:
                stack_ids(next_obs[j], ids[j, k:])
        self._check_room(next_id, n)
        if new:
            slots = np.arange(self.frame_count, next_id) % len(self.frames)
            self.frames[slots] = np.stack(new)
        self.frame_count = next_id
        self.last_ids = ids[:, k:].copy()
        return ids

    def _check_room(self, next_count: int, n: int) -> None:
        """Grow the frame ring if storing frames up to ``next_count`` would overwrite a live one.

        A transition written when ``frame_count`` was c uses no frame older than c - window
        (:meth:`_reuse_window`), and ``written_at`` grows along the ring: so after this batch the
        oldest frame in use is at least the oldest live transition's ``written_at`` - window.
        """
        if self.size + n > self.capacity:  # the batch overwrites the oldest transitions
            oldest_slot = (self.pos + n) % self.capacity
            oldest = int(self.written_at[oldest_slot])
        else:
            oldest = int(self.written_at[0]) if self.size else self.frame_count
        lowest_used = max(oldest - self._reuse_window(n), 0)
        ring = len(self.frames)
        if next_count - ring <= lowest_used:
            return
        live = np.arange(max(self.frame_count - ring, 0), self.frame_count)
        bigger = max(ring + ring // 4, next_count - lowest_used + ring // 16)
        frames = np.zeros((bigger, *self.frames.shape[1:]), np.uint8)
        frames[live % bigger] = self.frames[live % ring]
        self.frames = frames

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
        if self.storage == "frames":
            self.written_at[idx] = self.frame_count
            self.frame_ids[idx] = self._add_frames(obs, next_obs)
        else:
            try:
                encoded = self._encode(obs), self._encode(next_obs)
            except ValueError:
                if not (self.auto and self.storage == "bits"):
                    raise
                self._to_float32()  # a Box(0, 1) space of non-binary values (Note [Observation storage])
                encoded = obs, next_obs
            self.obs[idx], self.next_obs[idx] = encoded
        self.actions[idx] = actions
        self.rewards[idx] = rewards
        self.terminated[idx] = terminated
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def latest_indices(self, n: int) -> np.ndarray:
        """The indices of the ``n`` most recently added transitions (fewer while the buffer holds fewer)."""
        n = min(n, self.size)
        return (self.pos - n + np.arange(n)) % self.capacity

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

        if self.storage == "frames":
            k = self.obs_shape[0]
            stacks = self._frames_of(self.frame_ids[idx])  # (B, 2k, H, W)
            obs = torch.from_numpy(stacks[:, :k]).to(self.device, torch.float32, non_blocking=True)
            next_obs = torch.from_numpy(stacks[:, k:]).to(self.device, torch.float32, non_blocking=True)
        else:
            obs, next_obs = obs_tensor(self.obs), obs_tensor(self.next_obs)
        return Batch(
            obs=obs,
            actions=torch.from_numpy(self.actions[idx]).to(self.device),
            rewards=torch.from_numpy(self.rewards[idx]).to(self.device),
            next_obs=next_obs,
            terminated=torch.from_numpy(self.terminated[idx]).to(self.device),
        )

    def sample(self, batch_size: int) -> Batch:
        """A uniform batch of ``batch_size`` transitions."""
        return self.get(self.sample_indices(batch_size))

    def state_dict(self) -> dict[str, Any]:
        """Filled storage, write position and sampling-generator state (for checkpoints).

        Observations are kept in their stored form (bits, uint8 or frames: no float copies);
        frame storage saves only the frames that live transitions use.
        """
        state: dict[str, Any] = {
            "capacity": self.capacity,
            "storage": self.storage,
            "obs_shape": self.obs_shape,
            "pos": self.pos,
            "size": self.size,
        }
        if self.storage == "frames":
            ids = self.frame_ids[: self.size]
            lowest = int(ids.min()) if self.size else self.frame_count
            live = np.arange(lowest, self.frame_count)
            state.update(
                frame_ids=ids.copy(),
                written_at=self.written_at[: self.size].copy(),
                frames=self._frames_of(live),
                frames_from=lowest,
                frame_count=self.frame_count,
                frame_capacity=len(self.frames),
                last_ids=None if self.last_ids is None else self.last_ids.copy(),
            )
        else:
            state.update(obs=self.obs[: self.size].copy(), next_obs=self.next_obs[: self.size].copy())
        state.update(
            actions=self.actions[: self.size].copy(),
            rewards=self.rewards[: self.size].copy(),
            terminated=self.terminated[: self.size].copy(),
            rng=self.rng.bit_generator.state,
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into a buffer of the same capacity, storage and shape.

        An ``auto`` buffer takes the checkpoint's storage (an ``auto`` bits buffer may have switched
        to float32, Note [Observation storage]).
        """
        if self.auto and state["storage"] != self.storage:
            self.storage = state["storage"]
            self._allocate_obs()
        for key in ("capacity", "storage", "obs_shape"):
            mine, theirs = getattr(self, key), state[key]
            if tuple(np.atleast_1d(mine)) != tuple(np.atleast_1d(theirs)):
                raise ValueError(f"replay buffer {key} mismatch: checkpoint {theirs!r}, buffer {mine!r}")
        size = int(state["size"])
        if self.storage == "frames":
            self._allocate_obs(int(state["frame_capacity"]))
            self.frame_ids[:size] = state["frame_ids"]
            self.written_at[:size] = state["written_at"]
            live = np.arange(int(state["frames_from"]), int(state["frame_count"]))
            self.frames[live % len(self.frames)] = state["frames"]
            self.frame_count = int(state["frame_count"])
            self.last_ids = None if state["last_ids"] is None else np.array(state["last_ids"])
            keys: tuple[str, ...] = ("actions", "rewards", "terminated")
        else:
            keys = ("obs", "next_obs", "actions", "rewards", "terminated")
        for key in keys:
            getattr(self, key)[:size] = state[key]
        self.pos, self.size = int(state["pos"]), size
        self.rng.bit_generator.state = state["rng"]
