"""PPO on the batched MinAtar under the protocol's non-stationarity: numpy and tensor env paths agree."""

from __future__ import annotations

from pathlib import Path

import plasticrl
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

PRESET = Path(__file__).parents[2] / "configs" / "minatar" / "ppo_protocol.yaml"
SMALL = {
    "total_steps": 3 * 16 * 32,
    "env__num_envs": 16,
    "agent__num_steps": 32,
    "agent__num_minibatches": 4,
    "agent__compile": False,
    "nonstationary__every": 600,  # changes at 600 and 1200: inside the second and third rollouts
    "metrics__every": 1,
    "metrics__ntk_every": 0,
    "checkpoint__every": 0,
    "quiet": True,
}


@pytest.mark.parametrize("tensors", [False, True])
def test_tensor_and_numpy_paths_train_identically(tensors: bool, tmp_path: Path) -> None:
    """The tensor path (what a GPU runs) gives the numpy path's parameters bit for bit, on the CPU."""
    kwargs = {"sticky_action_prob": 0.1, "difficulty_ramping": True, "tensors": tensors}
    common = {**SMALL, "logging__dir": str(tmp_path), "eval__every": 0}
    reference = plasticrl.train(
        str(PRESET), logging__name="numpy", env__kwargs={**kwargs, "tensors": False}, **common
    )
    mine = plasticrl.train(str(PRESET), logging__name="mine", env__kwargs=kwargs, **common)
    assert mine.status == reference.status == "finished" and mine.global_step == 1536
    assert mine.recent_return == reference.recent_return
    ref, got = reference.agent.model.state_dict(), mine.agent.model.state_dict()
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_protocol_preset_logs_tasks_games_and_evaluation(tmp_path: Path) -> None:
    """Task changes reset the optimizer, and evaluation plays the current game (in a batched env)."""
    result = plasticrl.train(
        str(PRESET),
        logging__dir=str(tmp_path),
        eval__every=512,
        eval__episodes=2,
        eval__max_episode_steps=50,
        **SMALL,
    )
    assert result.status == "finished"
    events = EventAccumulator(str(result.run_dir)).Reload()
    tags = set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("env/task_id")] == [0.0, 1.0, 2.0]
    assert [e.step for e in events.Scalars("optimizer/resets")] == [1024, 1536]  # the rollouts with a change
    games = {t for t in tags if t.startswith("eval/episodic_return/game_")}
    assert len(games) >= 2 and games <= {
        f"eval/episodic_return/game_{g}" for g in ("breakout", "asterix", "space_invaders", "freeway")
    }
