"""A composed change kind with an observation hook through the trainer: resume is exact."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, load_checkpoint
from plasticrl.trainers.config import ExperimentConfig
from plasticrl.trainers.run import resume, train

from tests.conftest import TINY_MINATAR_OVERRIDES
from tests.trainers.test_training import assert_agents_equal, assert_tree_equal, episodic_returns

GAMES_PERMUTED_NOISY = (
    *TINY_MINATAR_OVERRIDES,
    "total_steps=400",
    "env.num_envs=2",
    "nonstationary.kind=[switch, permute_obs, obs_noise]",
    "nonstationary.every=60",
    "nonstationary.on=step",
    "nonstationary.tasks=[breakout, asterix, freeway]",
    "nonstationary.options.switch.order=shuffle",
    "nonstationary.options.permute_obs.mode=channels",
    "nonstationary.options.obs_noise.scales=[0.1]",
)


@pytest.mark.filterwarnings("ignore:.*is out of date")
def test_games_permuted_and_noisy_resume_equals_the_uninterrupted_run(
    make_tiny_config: Callable[..., ExperimentConfig],
) -> None:
    full = make_tiny_config(*GAMES_PERMUTED_NOISY, "logging.name=full")
    a = train(full, quiet=True)
    b1 = train(make_tiny_config(*GAMES_PERMUTED_NOISY, "logging.name=half", "total_steps=200"), quiet=True)
    b = resume(b1.run_dir, ["total_steps=400"])
    assert b.status == "finished" and b.global_step == 400
    assert_agents_equal(a.agent, b.agent)
    state_a = load_checkpoint(a.run_dir / CHECKPOINT_NAME)
    state_b = load_checkpoint(b.run_dir / CHECKPOINT_NAME)
    assert_tree_equal(state_a["buffer"], state_b["buffer"], "buffer")
    np.testing.assert_array_equal(state_a["obs"], state_b["obs"])
    assert episodic_returns(a.run_dir) == episodic_returns(b.run_dir)
    # The observations are noisy (not MinAtar's bits) and the replay stores them as float32.
    assert not np.isin(state_a["obs"], (0.0, 1.0)).all()
