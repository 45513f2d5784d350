"""Replay-buffer bytes per transition for Atari-shaped observations, storage modes side by side.

    python benchmarks/replay_bytes.py [--capacity 10000] [--steps 5000] [--real]

Each mode's buffer is filled from the same frame-stacked rollout (``FrameStackObservation(4)``
over 84x84 uint8 frames: random frames and episodes of 100-2,000 steps, or with ``--real`` the
ALE's Breakout through ``AtariPreprocessing``, which needs ``pip install 'plasticrl[atari]'``).
Printed per mode: preallocated observation bytes per slot (``ReplayBuffer.obs_bytes / capacity``),
the checkpoint's observation bytes per stored transition, and what a 1M-transition buffer takes.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
from plasticrl.agents.buffers import ReplayBuffer


class _Frames(gym.Env):
    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(0, 255, (84, 84), np.uint8)
        self.action_space = gym.spaces.Discrete(4)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.len = 0, int(self.np_random.integers(100, 2000))
        return self._frame(), {}

    def _frame(self) -> np.ndarray:
        return self.np_random.integers(0, 256, (84, 84), dtype=np.uint8)

    def step(self, action):
        self.t += 1
        return self._frame(), 0.0, self.t >= self.len, False, {}


def _env(real: bool) -> gym.Env:
    if real:
        from plasticrl.envs.make import EnvConfig, make_env

        return make_env(
            EnvConfig(
                id="ALE/Breakout-v5",
                imports=("ale_py",),
                kwargs={"frameskip": 1},
                wrappers=("AtariPreprocessing", {"name": "FrameStackObservation", "stack_size": 4}),
            )
        )
    return gym.wrappers.FrameStackObservation(_Frames(), 4)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--capacity", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=5_000)
    parser.add_argument("--real", action="store_true", help="ALE Breakout instead of random frames")
    args = parser.parse_args()
    env = _env(args.real)
    space = env.observation_space
    modes = ["float32", "uint8", "frames"]
    buffers = {m: ReplayBuffer(args.capacity, space, m) for m in modes}
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    add_time = dict.fromkeys(modes, 0.0)
    for _ in range(args.steps):
        action = int(rng.integers(env.action_space.n))
        nxt, reward, term, trunc, _ = env.step(action)
        row = (
            obs[None],
            nxt[None],
            np.array([action]),
            np.array([reward], np.float32),
            np.array([term], np.float32),
        )
        for m, buf in buffers.items():
            t0 = time.perf_counter()
            buf.add(*row)
            add_time[m] += time.perf_counter() - t0
        obs = env.reset()[0] if term or trunc else nxt
    print(f"obs {space.shape} {space.dtype}, capacity {args.capacity}, {args.steps} transitions added")
    print(f"{'storage':>8} {'bytes/slot':>11} {'ckpt bytes/transition':>22} {'1M buffer':>10} {'add us':>7}")
    for m, buf in buffers.items():
        state = buf.state_dict()
        obs_keys = ("obs", "next_obs", "frames", "frame_ids", "written_at")
        ckpt = sum(state[k].nbytes for k in obs_keys if k in state) / len(buf)
        per_slot = buf.obs_bytes / args.capacity
        print(
            f"{m:>8} {per_slot:>11,.0f} {ckpt:>22,.0f} {per_slot * 1e6 / 1e9:>8.1f}GB "
            f"{1e6 * add_time[m] / args.steps:>7.1f}"
        )


if __name__ == "__main__":
    main()
