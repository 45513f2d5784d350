"""Step throughput of MinAtar Breakout, raw and under NonStationary, in one process.

Run:  python benchmarks/bench_nonstationary.py [--steps 20000] [--rounds 7]

Variants (all on channel-first float32 Breakout, the form plasticrl trains on):
    raw            gym.make("MinAtar/Breakout-v0") + a channel-last -> (C, 10, 10) float32 conversion
    bookkeeping    NonStationary with reward_scale at scale 1: the clock, info keys, no transform
    permute_obs    NonStationary with an active (non-identity) permutation of all 400 cells
    switch         NonStationary over TaskSet([Breakout, SpaceInvaders]) while on Breakout:
                   the TaskSet layer plus zero-padding 4 -> 6 channels
Variants are timed in interleaved rounds on the same seeded action sequence; the table shows the
median over rounds, and the overhead of each variant relative to raw.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import minatar.gym
import numpy as np

from envs.nonstationary import NonStationary, PermuteObs, RewardScale, Switch, TaskSet
from envs.schedules import At


class ChannelFirst(gym.Wrapper):
    """(10, 10, C) bool -> (C, 10, 10) float32, as lean as a wrapper gets."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        h, w, c = env.observation_space.shape
        self.observation_space = gym.spaces.Box(0.0, 1.0, (c, h, w), np.float32)

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        obs, info = self.env.reset(**kwargs)
        return obs.transpose(2, 0, 1).astype(np.float32, order="C"), info

    def step(self, action: int) -> tuple:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs.transpose(2, 0, 1).astype(np.float32, order="C"), reward, terminated, truncated, info


def minatar_cf(game: str) -> gym.Env:
    return ChannelFirst(gym.make(f"MinAtar/{game}-v0"))


def variants() -> dict[str, Callable[[], gym.Env]]:
    never = At([10**12])
    return {
        "raw": lambda: minatar_cf("Breakout"),
        "bookkeeping": lambda: NonStationary(minatar_cf("Breakout"), RewardScale(), never, seed=0),
        # At([1]) with on="step": the first step truncates, every later episode is permuted.
        "permute_obs": lambda: NonStationary(minatar_cf("Breakout"), PermuteObs(), At([1]), on="step", seed=0),
        "switch": lambda: NonStationary(
            TaskSet([lambda: minatar_cf("Breakout"), lambda: minatar_cf("SpaceInvaders")]), Switch(), never, seed=0
        ),
    }


def time_steps(env: gym.Env, actions: list[int]) -> float:
    """Seconds for ``len(actions)`` steps, resets included (the loop every trainer runs)."""
    env.reset(seed=0)
    env.step(0)  # past the permute_obs variant's truncation; a no-op change for the others
    env.reset(seed=0)
    step, reset = env.step, env.reset
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = step(action)
        if terminated or truncated:
            reset()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20_000, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    args = parser.parse_args()

    if "MinAtar/Breakout-v0" not in gym.registry:
        minatar.gym.register_envs()
    actions = np.random.default_rng(0).integers(0, 6, size=args.steps).tolist()
    envs = {name: make() for name, make in variants().items()}
    times: dict[str, list[float]] = {name: [] for name in envs}
    for _ in range(args.rounds):
        for name, env in envs.items():
            times[name].append(time_steps(env, actions))

    raw = statistics.median(times["raw"])
    print(f"MinAtar Breakout-v0, {args.steps} steps x {args.rounds} rounds (median)")
    print(f"{'variant':<12} {'steps/s':>10} {'us/step':>8} {'overhead':>9}")
    for name, samples in times.items():
        t = statistics.median(samples)
        overhead = "" if name == "raw" else f"{100 * (t / raw - 1):+8.1f}%"
        print(f"{name:<12} {args.steps / t:>10.0f} {1e6 * t / args.steps:>8.2f} {overhead:>9}")


if __name__ == "__main__":
    main()
