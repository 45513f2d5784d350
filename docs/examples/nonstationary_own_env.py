"""NonStationary around your own env: wrap any gymnasium env, then train plasticrl on it.

``Corridor`` is a ten-line gymnasium env (walk right to the goal). :class:`plasticrl.NonStationary`
permutes its actions every ``EVERY`` steps, at episode boundaries, and announces each new task in
the reset's ``info``. A policy that learned "right" before a change is wrong after it: this is the
plasticity test in miniature. The last part registers the env with gymnasium and trains DQN on
the same non-stationary version through :func:`plasticrl.train`, config keys and all.

Run: ``python docs/examples/nonstationary_own_env.py`` (about ten seconds on a CPU).
"""

from __future__ import annotations

import tempfile
from typing import Any

import gymnasium as gym
import numpy as np
import plasticrl
from plasticrl import NonStationary
from plasticrl.envs.changes import PermuteActions
from plasticrl.envs.schedules import Every

EVERY = 200  # lifetime env steps between changes


class Corridor(gym.Env[np.ndarray, int]):
    """A corridor of ``length`` cells; actions 0 left, 1 right, 2 and 3 stay; reward 1 at the end."""

    def __init__(self, length: int = 6) -> None:
        self.length = length
        self.observation_space = gym.spaces.Box(0.0, 1.0, (length,), np.float32)
        self.action_space = gym.spaces.Discrete(4)
        self.pos = 0

    def _obs(self) -> np.ndarray:
        return np.eye(self.length, dtype=np.float32)[self.pos]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        """Start at the left end."""
        super().reset(seed=seed)
        self.pos = 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Move; the episode ends with reward 1 at the right end."""
        self.pos = int(np.clip(self.pos + {0: -1, 1: 1}.get(int(action), 0), 0, self.length - 1))
        done = self.pos == self.length - 1
        return self._obs(), float(done), done, False, {}


def go_right_returns(episodes: int = 60) -> list[tuple[int, float]]:
    """(task id, return) of a fixed "always action 1" policy, episode after episode."""
    env = NonStationary(gym.wrappers.TimeLimit(Corridor(), 20), PermuteActions(), Every(EVERY), seed=0)
    out, task = [], 0
    for _ in range(episodes):
        obs, info = env.reset()
        task = info.get("task_id", task)  # announced only when it is new
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(1)
            total += float(reward)
            done = terminated or truncated
        out.append((task, total))
    return out


def main() -> None:
    """Show the change with a fixed policy, then train DQN through it."""
    history = go_right_returns()
    by_task: dict[int, list[float]] = {}
    for task, ret in history:
        by_task.setdefault(task, []).append(ret)
    for task, rets in by_task.items():
        print(f"task {task}: {len(rets)} episodes, mean return of 'always right' {np.mean(rets):.2f}")
    assert by_task[0] and np.mean(by_task[0]) == 1.0  # before any change, "right" reaches the goal
    assert len(by_task) > 1 and min(np.mean(r) for r in by_task.values()) < 1.0  # some change breaks it

    # Your env in a plasticrl run: register it, name it in env.id, pick the change in nonstationary.
    gym.register("Corridor-v0", entry_point=Corridor, max_episode_steps=20)
    with tempfile.TemporaryDirectory() as runs:
        result = plasticrl.train(
            {"agent": {"name": "dqn"}, "network": {"hidden_sizes": [64, 64]}},
            env={"id": "Corridor-v0"},
            nonstationary={"kind": "permute_actions", "every": 1500},
            total_steps=3000,
            agent={"learning_starts": 200, "buffer_size": 3000, "batch_size": 32, "eps_decay_steps": 1000},
            metrics={"every": 0, "ntk_every": 0},
            logging={"dir": runs},
            quiet=True,
        )
        print(f"{result.status}: {result.global_step} steps, recent return {result.recent_return}")
        assert result.status == "finished"

    print("ok")


if __name__ == "__main__":
    main()
