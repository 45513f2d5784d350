"""Atari through the presets: preprocessing, frame-stacked uint8 replay, DQN and PPO runs, game switching.

Needs the ``atari`` extra (ale-py ships the ROMs); skipped without it.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("ale_py")
pytest.importorskip("cv2")

from plasticrl.envs.make import NonStationaryConfig, build_sub_env, make_env  # noqa: E402
from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, load_checkpoint  # noqa: E402
from plasticrl.trainers.config import load_config  # noqa: E402
from plasticrl.trainers.run import train  # noqa: E402

ATARI = Path(__file__).resolve().parents[2] / "configs" / "atari"
TINY = (
    "total_steps=240",
    "agent.learning_starts=120",
    "agent.buffer_size=400",
    "logging.every=120",
    "logging.progress=false",
    "checkpoint.every=0",
    "metrics.every=10",
    "metrics.ntk_every=0",
    "metrics.probe_size=16",
    "env.max_episode_steps=200",
)


@pytest.mark.parametrize("preset", sorted(p.name for p in ATARI.glob("*.yaml")))
def test_every_atari_preset_loads_with_the_standard_preprocessing(preset: str) -> None:
    cfg = load_config(ATARI / preset, [])
    assert cfg.env.id.startswith("ale_py:ALE/") and cfg.env.id.endswith("-v5")
    assert cfg.env.kwargs["frameskip"] == 1 and cfg.env.kwargs["repeat_action_probability"] == 0.25
    names = [w if isinstance(w, str) else w["name"] for w in cfg.env.wrappers]
    assert names == ["AtariPreprocessing", "FrameStackObservation", "ClipTrainingReward"]
    assert cfg.network.name == "nature_cnn"


def test_preprocessing_shapes_dtypes_and_frame_stack() -> None:
    cfg = load_config(ATARI / "dqn_breakout.yaml", [])
    env = make_env(cfg.env)
    assert env.observation_space == gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    assert env.action_space == gym.spaces.Discrete(4)  # Breakout's minimal set
    ale_env = env.unwrapped
    assert ale_env._frameskip == 1  # the v5 env at frameskip 1: AtariPreprocessing skips 4
    pre = env.env.env  # ClipTrainingReward -> FrameStackObservation -> AtariPreprocessing
    assert isinstance(pre, gym.wrappers.AtariPreprocessing) and pre.frame_skip == 4 and pre.noop_max == 30
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.uint8 and obs.shape == (4, 84, 84)
    prev = obs
    for _ in range(10):
        obs, reward, *_ = env.step(1)
        np.testing.assert_array_equal(obs[:3], prev[1:])  # a stack of the last 4 frames
        assert reward in (-1.0, 0.0, 1.0)
        prev = obs


def test_dqn_trains_on_atari_with_nature_cnn_and_frame_replay(runs_dir: Path) -> None:
    cfg = load_config(ATARI / "dqn_breakout.yaml", [*TINY, f"logging.dir={runs_dir}"])
    result = train(cfg, quiet=True)
    assert result.status == "finished" and result.updates > 0
    state = load_checkpoint(result.run_dir / CHECKPOINT_NAME)
    buffer = state["buffer"]
    assert buffer["storage"] == "frames" and buffer["frames"].dtype == np.uint8
    # one 84x84 frame per transition (plus up to 4 per episode start), not 2 x 4 x 84 x 84 floats
    assert buffer["frames"].shape[0] <= buffer["size"] + 4 * 8
    assert buffer["frames"].nbytes / buffer["size"] < 1.2 * 84 * 84


def test_ppo_trains_on_atari(runs_dir: Path) -> None:
    extra = (
        "env.num_envs=2",
        "agent.num_steps=32",
        "agent.num_minibatches=2",
        "agent.update_epochs=1",
        "total_steps=128",
        "metrics.every=1",
        "metrics.ntk_every=2",
        "metrics.ntk_probe_size=2",
        "metrics.probe_size=8",
        "logging.every=64",
        "logging.progress=false",
        "checkpoint.every=0",
        f"logging.dir={runs_dir}",
    )
    result = train(load_config(ATARI / "ppo_pong.yaml", list(extra)), quiet=True)
    assert result.status == "finished" and result.updates == 2


@pytest.mark.parametrize(("mode", "per_transition"), [("spatial", (1.0, 1.1)), ("all", (3.9, 4.1))])
def test_permuted_frames_replay_exactly_and_spatial_keeps_one_frame_per_transition(
    mode, per_transition
) -> None:
    from plasticrl.agents.buffers import ReplayBuffer

    cfg = load_config(ATARI / "dqn_breakout.yaml", [])
    ns = NonStationaryConfig(kind="permute_obs", at=(1,), on="step", options={"mode": mode})
    env = build_sub_env(cfg.env, 0, 0, ns)
    plain = make_env(cfg.env)
    obs, _ = env.reset(seed=0)
    plain_obs, _ = plain.reset(seed=0)
    assert sorted(obs.ravel().tolist()) == sorted(plain_obs.ravel().tolist())  # a permutation of the frames
    frames = ReplayBuffer(500, env.observation_space, "auto")
    copies = ReplayBuffer(500, env.observation_space, "uint8")
    for _ in range(150):
        nxt, r, term, trunc, _ = env.step(env.action_space.sample())
        row = (obs[None], nxt[None], np.array([0]), np.array([r], np.float32), np.array([term], np.float32))
        frames.add(*row)
        copies.add(*row)
        obs = env.reset()[0] if term or trunc else nxt
    assert frames.storage == "frames"
    low, high = per_transition
    assert low <= frames.frame_count / len(frames) <= high
    idx = np.arange(len(frames))
    for a, b in zip(frames.get(idx), copies.get(idx), strict=True):
        assert bool((a == b).all())
