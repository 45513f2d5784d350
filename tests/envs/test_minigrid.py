"""MiniGrid's Dict observations through env.wrappers, and the MiniGrid presets training with DQN and PPO."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("minigrid")

from plasticrl.envs.make import make_env  # noqa: E402
from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, load_checkpoint  # noqa: E402
from plasticrl.trainers.config import load_config  # noqa: E402
from plasticrl.trainers.run import train  # noqa: E402

MINIGRID = Path(__file__).resolve().parents[2] / "configs" / "minigrid"
COMMON = (
    "logging.progress=false",
    "checkpoint.every=0",
    "metrics.ntk_every=0",
    "metrics.probe_size=16",
    "metrics.ntk_probe_size=4",
)


def test_dict_observations_become_boxes_through_the_preset_wrappers() -> None:
    raw = gym.make("MiniGrid-Empty-6x6-v0")
    assert isinstance(raw.observation_space, gym.spaces.Dict)
    image = make_env(load_config(MINIGRID / "dqn_empty.yaml", []).env)
    assert image.observation_space == gym.spaces.Box(0, 255, (147,), np.uint8)
    both = make_env(load_config(MINIGRID / "ppo_doorkey.yaml", []).env)
    assert both.observation_space.shape == (147 + 96 * 28,)  # the image, then the mission's characters
    obs, _ = both.reset(seed=0)
    raw_obs, _ = gym.make("MiniGrid-DoorKey-5x5-v0").reset(seed=0)
    np.testing.assert_array_equal(obs[:147], raw_obs["image"].reshape(-1))


def test_dqn_trains_on_minigrid(runs_dir: Path) -> None:
    extra = (
        "total_steps=300",
        "agent.learning_starts=100",
        "agent.batch_size=16",
        "metrics.every=10",
        "logging.every=100",
        f"logging.dir={runs_dir}",
        *COMMON,
    )
    result = train(load_config(MINIGRID / "dqn_empty.yaml", list(extra)), quiet=True)
    assert result.status == "finished" and result.updates == 50
    assert load_checkpoint(result.run_dir / CHECKPOINT_NAME)["buffer"]["obs"].dtype == np.uint8


@pytest.mark.parametrize("preset", ["ppo_empty.yaml", "ppo_doorkey.yaml"])
def test_ppo_trains_on_minigrid(runs_dir: Path, preset: str) -> None:
    extra = (
        "total_steps=256",
        "env.num_envs=2",
        "agent.num_steps=64",
        "metrics.every=1",
        "logging.every=128",
        f"logging.dir={runs_dir}",
        *COMMON,
    )
    result = train(load_config(MINIGRID / preset, list(extra)), quiet=True)
    assert result.status == "finished" and result.updates == 2
