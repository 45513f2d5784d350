"""Replay storage of uint8 frame stacks (Note [Frame storage] in plasticrl.agents.buffers)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from plasticrl.agents.buffers import ReplayBuffer, choose_obs_storage


class FrameEnv(gym.Env):
    """Random uint8 frames, episodes of random length: a cheap stand-in for an Atari game."""

    def __init__(self, size: int = 6, max_len: int = 9) -> None:
        self.observation_space = gym.spaces.Box(0, 255, (size, size), np.uint8)
        self.action_space = gym.spaces.Discrete(3)
        self.max_len = max_len

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.len = 0, int(self.np_random.integers(2, self.max_len))
        return self.np_random.integers(0, 256, self.observation_space.shape, dtype=np.uint8), {}

    def step(self, action):
        self.t += 1
        frame = self.np_random.integers(0, 256, self.observation_space.shape, dtype=np.uint8)
        return frame, float(action), self.t >= self.len, False, {}


def stacked_vector_env(n: int, k: int = 4) -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv(
        [lambda: gym.wrappers.FrameStackObservation(FrameEnv(), k) for _ in range(n)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


def collect(n_envs: int, steps: int, capacity: int, seed: int = 0):
    """Fill a frames buffer and a uint8 buffer from the same FrameStack rollout; keep the transitions."""
    envs = stacked_vector_env(n_envs)
    space = envs.single_observation_space
    frames = ReplayBuffer(capacity, space, "frames", seed=1)
    plain = ReplayBuffer(capacity, space, "uint8", seed=1)
    rng = np.random.default_rng(seed)
    obs, _ = envs.reset(seed=seed)
    for _ in range(steps):
        actions = rng.integers(0, 3, n_envs)
        next_obs, rewards, term, trunc, infos = envs.step(actions)
        real_next = next_obs.copy()
        if "final_obs" in infos:
            for i in np.flatnonzero(infos["_final_obs"]):
                real_next[i] = infos["final_obs"][i]
        frames.add(obs, real_next, actions, rewards, term)
        plain.add(obs, real_next, actions, rewards, term)
        obs = next_obs
    return frames, plain


def test_auto_picks_frames_for_stacks_and_uint8_for_other_uint8_spaces() -> None:
    assert choose_obs_storage(gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), "auto") == "frames"
    assert choose_obs_storage(gym.spaces.Box(0, 255, (7, 7, 3), np.uint8), "auto") == "uint8"
    assert choose_obs_storage(gym.spaces.Box(0, 255, (147,), np.uint8), "auto") == "uint8"
    with pytest.raises(ValueError, match="frames needs observations of at least 2"):
        choose_obs_storage(gym.spaces.Box(0, 255, (5,), np.uint8), "frames")


@pytest.mark.parametrize(("n_envs", "steps", "capacity"), [(1, 60, 100), (3, 80, 50), (2, 200, 16)])
def test_rebuilt_stacks_equal_what_frame_stack_gave(n_envs: int, steps: int, capacity: int) -> None:
    frames, plain = collect(n_envs, steps, capacity)
    assert len(frames) == len(plain) == min(n_envs * steps, capacity)
    idx = np.arange(len(plain))
    a, b = frames.get(idx), plain.get(idx)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    # same sampling stream: same indices, same batches
    for x, y in zip(frames.sample(32), plain.sample(32), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_one_frame_per_transition_plus_episode_starts() -> None:
    frames, _ = collect(1, 300, 1000)
    # one new frame per step; a new episode's reset stack (4 equal frames under padding "reset") is one
    episodes = int(frames.terminated[: len(frames)].sum())
    assert frames.frame_count <= 300 + episodes + 1
    assert frames.frame_count >= 300


def test_ring_never_overwrites_a_live_frame_even_when_every_step_starts_a_stack() -> None:
    # observations that never share frames: every transition stores 2k fresh frames, the ring must grow
    space = gym.spaces.Box(0, 255, (4, 3, 3), np.uint8)
    buf = ReplayBuffer(10, space, "frames", seed=0)
    plain = ReplayBuffer(10, space, "uint8", seed=0)
    rng = np.random.default_rng(0)
    ring = len(buf.frames)
    for _ in range(40):
        obs = rng.integers(0, 256, (2, 4, 3, 3), dtype=np.uint8)
        nxt = rng.integers(0, 256, (2, 4, 3, 3), dtype=np.uint8)
        for b in (buf, plain):
            b.add(obs, nxt, np.zeros(2, np.int64), np.zeros(2, np.float32), np.zeros(2, np.float32))
    assert len(buf.frames) > ring
    idx = np.arange(10)
    for x, y in zip(buf.get(idx), plain.get(idx), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_atari_shaped_bytes_per_transition() -> None:
    space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    cap = 10_000
    frames = ReplayBuffer(cap, space, "auto")
    uint8 = ReplayBuffer(cap, space, "uint8")
    per_frames = frames.obs_bytes / cap
    per_uint8 = uint8.obs_bytes / cap
    assert per_uint8 == 2 * 4 * 84 * 84
    # one 84x84 frame, 2k int64 ids and the ring's margin (1/64) per transition: ~7.2 kB, < 1/7 of uint8
    assert 84 * 84 < per_frames < 84 * 84 * 1.03 + 80
    assert 1e6 * per_frames / 2**30 < 7.0  # a 1M-transition Atari buffer: under 7 GiB of observations


def test_frames_checkpoint_holds_live_frames_only_and_resumes_identically() -> None:
    frames, plain = collect(2, 120, 64)
    state = frames.state_dict()
    assert state["frames"].dtype == np.uint8 and "obs" not in state
    assert state["frames"].shape[0] <= frames.frame_count
    stored = sum(v.nbytes for v in state.values() if isinstance(v, np.ndarray))
    plain_state = plain.state_dict()
    assert stored < 0.5 * (plain_state["obs"].nbytes + plain_state["next_obs"].nbytes)
    space = gym.spaces.Box(0, 255, (4, 6, 6), np.uint8)
    restored = ReplayBuffer(64, space, "frames", seed=99)
    restored.load_state_dict(state)
    for x, y in zip(restored.sample(16), frames.sample(16), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    # adding after the restore continues as the original (same frame ids, same sharing)
    obs = frames._frames_of(frames.last_ids)  # each sub-env continues its episode
    nxt = np.concatenate([obs[:, 1:], np.full((2, 1, 6, 6), 7, np.uint8)], axis=1)
    for b in (frames, restored):
        b.add(obs, nxt, np.zeros(2, np.int64), np.zeros(2, np.float32), np.zeros(2, np.float32))
    assert restored.frame_count == frames.frame_count
    np.testing.assert_array_equal(restored.frame_ids, frames.frame_ids)


def test_auto_bits_space_with_fractional_values_switches_to_float32_exactly() -> None:
    space = gym.spaces.Box(0.0, 1.0, (3,), np.float32)
    buf = ReplayBuffer(8, space, "auto")
    assert buf.storage == "bits"
    binary = np.array([[0, 1, 1], [1, 0, 0]], np.float32)
    buf.add(binary, binary[::-1], np.zeros(2, np.int64), np.zeros(2, np.float32), np.zeros(2, np.float32))
    frac = np.array([[0.25, 0.5, 1.0]], np.float32)
    buf.add(frac, frac, np.zeros(1, np.int64), np.zeros(1, np.float32), np.zeros(1, np.float32))
    assert buf.storage == "float32"
    got = buf.get(np.arange(3)).obs.numpy()
    np.testing.assert_array_equal(got, np.concatenate([binary, frac]))
    # an explicit bits buffer still refuses
    strict = ReplayBuffer(8, space, "bits")
    with pytest.raises(ValueError, match="cannot bit-pack"):
        strict.add(frac, frac, np.zeros(1, np.int64), np.zeros(1, np.float32), np.zeros(1, np.float32))
    # and a resumed auto buffer takes the checkpoint's storage
    fresh = ReplayBuffer(8, space, "auto")
    fresh.load_state_dict(buf.state_dict())
    assert fresh.storage == "float32"
    np.testing.assert_array_equal(fresh.get(np.arange(3)).obs.numpy(), got)
