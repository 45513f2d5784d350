"""The replay buffer: storages, ring order, sampling and checkpoint state (agents/buffers.py)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from plasticrl.agents.buffers import Batch, ReplayBuffer, choose_obs_storage

BITS_SPACE = gym.spaces.Box(0.0, 1.0, (4, 10, 10), np.float32)
FLOAT_SPACE = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
PIXEL_SPACE = gym.spaces.Box(0, 255, (2, 5, 5), np.uint8)


def add_one(
    buf: ReplayBuffer, obs: np.ndarray, next_obs: np.ndarray, action: int, reward: float, term: float
) -> None:
    buf.add(obs[None], next_obs[None], np.array([action]), np.array([reward], np.float32), np.array([term]))


def all_transitions(buf: ReplayBuffer) -> Batch:
    return buf.get(np.arange(len(buf)))


# ---------------------------------------------------------------------------------------------
# Storage choice


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        (BITS_SPACE, "bits"),
        (gym.spaces.Box(0, 1, (7,), np.int64), "bits"),
        (FLOAT_SPACE, "float32"),
        (gym.spaces.Box(0.0, 2.0, (3,), np.float32), "float32"),
        (gym.spaces.Box(-1.0, 1.0, (3,), np.float32), "float32"),
        (PIXEL_SPACE, "frames"),
    ],
)
def test_auto_storage(space: gym.spaces.Box, expected: str) -> None:
    assert choose_obs_storage(space, "auto") == expected
    assert ReplayBuffer(4, space).storage == expected


def test_explicit_storage_is_kept_and_bad_ones_raise() -> None:
    assert choose_obs_storage(BITS_SPACE, "float32") == "float32"
    assert choose_obs_storage(FLOAT_SPACE, "uint8") == "uint8"
    with pytest.raises(ValueError, match="invalid obs storage 'int4'"):
        choose_obs_storage(FLOAT_SPACE, "int4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Box observations"):
        choose_obs_storage(gym.spaces.Discrete(3), "auto")
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        ReplayBuffer(0, FLOAT_SPACE)


def test_bits_storage_is_compact() -> None:
    buf = ReplayBuffer(10, BITS_SPACE, "bits")
    assert buf.obs.shape == (10, 50) and buf.obs.dtype == np.uint8  # 400 bits → 50 bytes
    buf = ReplayBuffer(10, gym.spaces.Box(0.0, 1.0, (3, 3), np.float32), "bits")
    assert buf.obs.shape == (10, 2)  # 9 bits → 2 bytes


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize(
    ("space", "storage", "make_obs"),
    [
        (FLOAT_SPACE, "float32", lambda rng, n: rng.normal(size=(n, 3)).astype(np.float32)),
        (PIXEL_SPACE, "uint8", lambda rng, n: rng.integers(0, 256, (n, 2, 5, 5)).astype(np.float32)),
        (BITS_SPACE, "bits", lambda rng, n: rng.integers(0, 2, (n, 4, 10, 10)).astype(np.float32)),
    ],
)
def test_add_get_round_trip(space: gym.spaces.Box, storage: str, make_obs) -> None:
    rng = np.random.default_rng(0)
    n = 6
    obs, next_obs = make_obs(rng, n), make_obs(rng, n)
    actions = rng.integers(0, 4, n)
    rewards = rng.normal(size=n).astype(np.float32)
    terminated = np.array([0, 1, 0, 0, 1, 0], dtype=np.float32)
    buf = ReplayBuffer(8, space, storage)  # type: ignore[arg-type]
    buf.add(obs, next_obs, actions, rewards, terminated)
    assert len(buf) == n and buf.pos == n
    batch = all_transitions(buf)
    assert batch.obs.dtype == torch.float32 and batch.next_obs.dtype == torch.float32
    assert batch.actions.dtype == torch.int64 and batch.terminated.dtype == torch.float32
    assert batch.obs.shape == (n, *space.shape)
    np.testing.assert_array_equal(batch.obs.numpy(), obs)
    np.testing.assert_array_equal(batch.next_obs.numpy(), next_obs)
    np.testing.assert_array_equal(batch.actions.numpy(), actions)
    np.testing.assert_array_equal(batch.rewards.numpy(), rewards)
    np.testing.assert_array_equal(batch.terminated.numpy(), terminated)


def test_bits_round_trip_random_minatar_frames() -> None:
    rng = np.random.default_rng(1)
    buf = ReplayBuffer(64, BITS_SPACE)
    assert buf.storage == "bits"
    frames = rng.integers(0, 2, (64, 4, 10, 10)).astype(np.float32)
    for i in range(0, 64, 8):
        buf.add(frames[i : i + 8], 1.0 - frames[i : i + 8], np.zeros(8, np.int64), np.zeros(8), np.zeros(8))
    idx = rng.permutation(64)
    batch = buf.get(idx)
    assert torch.equal(batch.obs, torch.from_numpy(frames[idx]))
    assert torch.equal(batch.next_obs, torch.from_numpy(1.0 - frames[idx]))


def test_sample_returns_stored_transitions() -> None:
    buf = ReplayBuffer(100, FLOAT_SPACE, seed=3)
    for i in range(10):
        add_one(buf, np.full(3, i, np.float32), np.full(3, i + 0.5, np.float32), i % 2, float(i), 0.0)
    batch = buf.sample(32)
    assert batch.obs.shape == (32, 3)
    ids = batch.obs[:, 0]
    assert torch.equal(batch.rewards, ids)  # each sample is one whole transition
    assert torch.equal(batch.next_obs[:, 0], ids + 0.5)
    assert torch.equal(batch.actions, ids.long() % 2)
    assert set(ids.long().tolist()) <= set(range(10))


def test_sample_empty_buffer_raises() -> None:
    with pytest.raises(ValueError, match="empty replay buffer"):
        ReplayBuffer(4, FLOAT_SPACE).sample(1)


def test_sampling_is_uniform_over_filled_part() -> None:
    buf = ReplayBuffer(1000, FLOAT_SPACE, seed=0)
    for i in range(5):
        add_one(buf, np.full(3, i, np.float32), np.zeros(3, np.float32), 0, 0.0, 0.0)
    idx = np.concatenate([buf.sample_indices(1000) for _ in range(10)])
    counts = np.bincount(idx, minlength=5)
    assert counts.shape == (5,)  # never beyond size
    assert np.all(np.abs(counts / idx.size - 0.2) < 0.02)


# ---------------------------------------------------------------------------------------------
# Ring behaviour and multi-env adds


def test_ring_overwrites_the_oldest() -> None:
    buf = ReplayBuffer(4, FLOAT_SPACE)
    for i in range(6):
        add_one(buf, np.full(3, i, np.float32), np.zeros(3, np.float32), 0, float(i), 0.0)
    assert len(buf) == 4 and buf.pos == 2
    # slots 0, 1 were overwritten by transitions 4, 5
    assert all_transitions(buf).rewards.tolist() == [4.0, 5.0, 2.0, 3.0]
    assert all_transitions(buf).obs[:, 0].tolist() == [4.0, 5.0, 2.0, 3.0]


def test_multi_env_add_wraps_around() -> None:
    buf = ReplayBuffer(5, FLOAT_SPACE)
    for step in range(3):  # 3 vector steps of 2 sub-envs = 6 transitions into 5 slots
        obs = np.stack([np.full(3, 10 * step + env, np.float32) for env in range(2)])
        rewards = np.array([10 * step, 10 * step + 1], np.float32)
        buf.add(obs, obs + 1, np.array([0, 1]), rewards, np.array([0, 1]))
    assert len(buf) == 5 and buf.pos == 1
    batch = all_transitions(buf)
    assert batch.rewards.tolist() == [21.0, 1.0, 10.0, 11.0, 20.0]
    assert batch.actions.tolist() == [1, 1, 0, 1, 0]
    assert batch.terminated.tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert torch.equal(batch.next_obs, batch.obs + 1)


# ---------------------------------------------------------------------------------------------
# Lossless packing is checked


@pytest.mark.parametrize("bad", [0.5, 2.0, -1.0, float("nan")])
def test_non_binary_obs_in_bits_storage_raise(bad: float) -> None:
    buf = ReplayBuffer(4, BITS_SPACE, "bits")
    obs = np.zeros((1, 4, 10, 10), np.float32)
    bad_obs = obs.copy()
    bad_obs[0, 2, 3, 4] = bad
    with pytest.raises(ValueError, match="not all 0/1"):
        buf.add(bad_obs, obs, np.array([0]), np.array([0.0]), np.array([0.0]))
    with pytest.raises(ValueError, match="not all 0/1"):
        buf.add(obs, bad_obs, np.array([0]), np.array([0.0]), np.array([0.0]))


@pytest.mark.parametrize("bad", [0.5, 256.0, -1.0])
def test_values_outside_uint8_raise(bad: float) -> None:
    buf = ReplayBuffer(4, PIXEL_SPACE, "uint8")
    obs = np.zeros((1, 2, 5, 5), np.float32)
    obs[0, 1, 1, 1] = bad
    with pytest.raises(ValueError, match="uint8"):
        buf.add(obs, obs, np.array([0]), np.array([0.0]), np.array([0.0]))


# ---------------------------------------------------------------------------------------------
# Checkpoint state


def filled_buffer(capacity: int, n: int, seed: int = 7) -> ReplayBuffer:
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(capacity, BITS_SPACE, seed=seed)
    for _ in range(n):
        o = rng.integers(0, 2, (2, 4, 10, 10)).astype(np.float32)
        buf.add(o, 1 - o, rng.integers(0, 6, 2), rng.normal(size=2), rng.integers(0, 2, 2))
    return buf


@pytest.mark.parametrize("n", [3, 20])  # partly filled / wrapped around
def test_state_dict_restores_identical_samples(n: int) -> None:
    buf = filled_buffer(16, n)
    buf.sample(8)  # advance the generator
    fresh = ReplayBuffer(16, BITS_SPACE, seed=123)
    fresh.load_state_dict(buf.state_dict())
    assert (fresh.pos, fresh.size) == (buf.pos, buf.size)
    for _ in range(3):
        a, b = buf.sample(8), fresh.sample(8)
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
    # and subsequent adds go to the same slot
    o = np.ones((1, 4, 10, 10), np.float32)
    for target in (buf, fresh):
        target.add(o, o, np.array([5]), np.array([9.0]), np.array([1.0]))
    assert buf.pos == fresh.pos
    assert torch.equal(all_transitions(buf).rewards, all_transitions(fresh).rewards)


def test_state_dict_is_a_copy() -> None:
    buf = filled_buffer(16, 3)
    state = buf.state_dict()
    before = state["rewards"].copy()
    zeros = np.zeros((1, 4, 10, 10))
    buf.add(zeros, zeros, np.array([0]), np.array([42.0]), np.array([0]))
    buf.rewards[0] = -5
    np.testing.assert_array_equal(state["rewards"], before)


@pytest.mark.parametrize(
    ("other", "key"),
    [
        (lambda: ReplayBuffer(32, BITS_SPACE), "capacity"),
        (lambda: ReplayBuffer(16, BITS_SPACE, "float32"), "storage"),
        (lambda: ReplayBuffer(16, gym.spaces.Box(0.0, 1.0, (7, 10, 10), np.float32)), "obs_shape"),
    ],
)
def test_load_into_mismatched_buffer_raises(other, key: str) -> None:
    state = filled_buffer(16, 3).state_dict()
    target = other()
    with pytest.raises(ValueError, match=f"replay buffer {key} mismatch"):
        target.load_state_dict(state)
    assert len(target) == 0
