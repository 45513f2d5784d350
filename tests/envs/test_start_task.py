"""``nonstationary.start_task``: a run that starts at task k of the sequence a run from task 0 sees."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from plasticrl.envs.make import EnvConfig, NonStationaryConfig, build_sub_env
from plasticrl.envs.vector import make_vector_env, task_state
from plasticrl.trainers.config import ConfigError, load_config

PRESET = "configs/minatar/ppo_continual.yaml"


@pytest.mark.parametrize("vector", ["sync", "batched"])
def test_start_task_is_the_continual_runs_task(vector: str) -> None:
    """Task k's game, permutation and next change equal the continual run's when it reaches task k."""
    overrides = ["env.num_envs=4", "nonstationary.every=40", f"env.vector={vector}"]
    cfg = load_config(PRESET, overrides)
    continual = make_vector_env(cfg.env, 26, cfg.nonstationary)
    continual.reset(seed=26)
    for _ in range(30):  # 120 env steps: changes at 40, 80, 120 -> task 3
        continual.step(np.zeros(4, dtype=np.int64))
    reached = task_state(continual)
    fresh_cfg = load_config(PRESET, [*overrides, "nonstationary.start_task=3"])
    fresh = make_vector_env(fresh_cfg.env, 26, fresh_cfg.nonstationary)
    _, info = fresh.reset(seed=26)
    state = task_state(fresh)
    assert info["task_id"][0] == 3 and state["task_id"] == reached["task_id"] == 3
    assert state["params"] == reached["params"] and state["rng"] == reached["rng"]
    assert state["next_change"] == reached["next_change"] == 160
    obs = [fresh.step(np.zeros(4, dtype=np.int64)) for _ in range(10)]
    assert (obs[-1][2] | obs[-1][3]).all()  # the task's 40th env step is lifetime 160: the change
    assert all(not (o[2] | o[3]).all() for o in obs[:-1])


def test_skip_changes_refuses_late_calls_and_short_schedules() -> None:
    env_cfg = EnvConfig(id="CartPole-v1")
    ns = NonStationaryConfig(kind="permute_obs", at=(10, 20))
    env = build_sub_env(env_cfg, 0, 0, ns)
    env.reset(seed=0)
    with pytest.raises(RuntimeError, match="before its first reset"):
        env.skip_changes(1)
    with pytest.raises(ValueError, match="only 2 changes"):
        build_sub_env(env_cfg, 0, 0, dataclasses.replace(ns, start_task=3))


def test_bad_start_task_is_a_config_error() -> None:
    with pytest.raises((ConfigError, ValueError), match="start_task"):
        load_config(PRESET, ["nonstationary.start_task=-1"])
