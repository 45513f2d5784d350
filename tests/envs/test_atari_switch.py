"""Game switching across ALE games with different minimal action sets: the full 18-action set.

Needs the ``atari`` extra (ale-py ships the ROMs); skipped without it.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("ale_py")
pytest.importorskip("cv2")

from plasticrl.envs.make import NonStationaryConfig, build_sub_env  # noqa: E402
from plasticrl.trainers.cli import main  # noqa: E402
from plasticrl.trainers.config import load_config  # noqa: E402
from plasticrl.trainers.run import train  # noqa: E402

ATARI = Path(__file__).resolve().parents[2] / "configs" / "atari"
GAMES = ("ale_py:ALE/Breakout-v5", "ale_py:ALE/Pong-v5")
FULL = (  # the ALE's full action set, in its order
    "NOOP FIRE UP RIGHT LEFT DOWN UPRIGHT UPLEFT DOWNRIGHT DOWNLEFT UPFIRE RIGHTFIRE LEFTFIRE "
    "DOWNFIRE UPRIGHTFIRE UPLEFTFIRE DOWNRIGHTFIRE DOWNLEFTFIRE"
).split()


def test_games_with_different_minimal_sets_switch_in_the_full_18_action_space() -> None:
    cfg = load_config(ATARI / "dqn_switch_breakout_pong.yaml", [])
    assert cfg.env.kwargs["full_action_space"] is True
    ns = NonStationaryConfig(kind="switch", at=(40,), on="step", tasks=GAMES)
    env = build_sub_env(cfg.env, 0, 0, ns)
    assert env.action_space == gym.spaces.Discrete(18)
    tasks = env.unwrapped.tasks
    # Both games' minimal sets differ (4 and 6 actions), but action i means the same input in both.
    for task in tasks:
        assert task.unwrapped.get_action_meanings() == FULL
    assert len(tasks[0].unwrapped.ale.getMinimalActionSet()) == 4
    assert len(tasks[1].unwrapped.ale.getMinimalActionSet()) == 6
    _, info = env.reset(seed=0)
    assert info["task_id"] == 0
    seen = []
    for t in range(60):
        # LEFTFIRE (12) is outside both minimal sets' index ranges: the full set runs it in both.
        obs, _, terminated, truncated, info = env.step(12 if t % 2 else 4)
        assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
        if terminated or truncated:
            obs, info = env.reset()
            seen.append(info["task_id"])
    assert seen[0] == 1 and env.unwrapped.index == 1  # the switch at step 40 started Pong


def test_games_with_different_minimal_sets_are_refused_naming_the_fix() -> None:
    cfg = load_config(ATARI / "dqn_breakout.yaml", [])  # full_action_space: false
    ns = NonStationaryConfig(kind="switch", every=100, tasks=GAMES)
    with pytest.raises(ValueError) as info:
        build_sub_env(cfg.env, 0, 0, ns)
    text = str(info.value)
    assert "\n" not in text and "env.kwargs.full_action_space=true" in text
    assert "ale_py:ALE/Breakout-v5: 4 (NOOP, FIRE, RIGHT, LEFT)" in text
    assert "ale_py:ALE/Pong-v5: 6 (NOOP, FIRE, RIGHT, LEFT, RIGHTFIRE, LEFTFIRE)" in text


def test_games_with_the_same_minimal_set_switch_as_they_are() -> None:
    cfg = load_config(ATARI / "dqn_pong.yaml", [])
    ns = NonStationaryConfig(
        kind="switch", every=100, tasks=("ale_py:ALE/Pong-v5", "ale_py:ALE/SpaceInvaders-v5")
    )
    env = build_sub_env(cfg.env, 0, 0, ns)
    assert env.action_space == gym.spaces.Discrete(6)


def test_cli_refuses_the_minimal_sets_with_exit_2_and_writes_nothing(tmp_path: Path, capsys) -> None:
    code = main(
        [
            "train",
            str(ATARI / "dqn_switch_breakout_pong.yaml"),
            "env.kwargs.full_action_space=false",
            f"logging.dir={tmp_path / 'runs'}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "full_action_space=true" in err
    assert not (tmp_path / "runs").exists()


def test_dqn_trains_through_a_game_switch_in_the_full_action_space(runs_dir: Path) -> None:
    overrides = [
        "total_steps=200",
        "nonstationary.every=100",
        "nonstationary.on=step",
        "agent.learning_starts=150",
        "agent.buffer_size=400",
        "env.max_episode_steps=200",
        "metrics.every=5",
        "metrics.ntk_every=10",
        "metrics.probe_size=8",
        "metrics.ntk_probe_size=2",
        "logging.every=100",
        "logging.progress=false",
        "checkpoint.every=0",
        f"logging.dir={runs_dir}",
    ]
    result = train(load_config(ATARI / "dqn_switch_breakout_pong.yaml", overrides), quiet=True)
    assert result.status == "finished" and result.updates >= 10  # the NTK measured once at least
