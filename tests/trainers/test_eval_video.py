"""``evaluate`` / ``plasticrl eval`` (trainers/run.py): a trained run's policy played back, and videos.

A 300-step MinAtar Breakout DQN run is the subject (MinAtar renders its own frames); the video
test needs moviepy (gymnasium's ``RecordVideo`` encoder) and is skipped without it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import plasticrl
import pytest
from plasticrl.trainers.cli import build_parser
from plasticrl.trainers.evaluation import evaluate, run_eval_command


@pytest.fixture(scope="module")
def breakout_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    result = plasticrl.train(
        {"env": {"id": "breakout"}, "agent": {"name": "dqn"}, "network": {"name": "minatar_cnn"}},
        total_steps=300,
        agent={"learning_starts": 50, "buffer_size": 500, "batch_size": 16},
        metrics={"every": 0, "ntk_every": 0},
        logging={"dir": str(runs)},
        quiet=True,
    )
    return result.run_dir


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["eval", *argv])


def test_evaluate_plays_the_greedy_policy(breakout_run: Path) -> None:
    returns, videos = evaluate(breakout_run, episodes=2, seed=5)
    assert len(returns) == 2 and videos == [] and all(r >= 0 for r in returns)
    # The same seeds give the same episodes: the greedy policy and the env are deterministic given them.
    assert evaluate(breakout_run, episodes=2, seed=5)[0] == returns
    with pytest.raises(ValueError, match="--episodes must be >= 1"):
        evaluate(breakout_run, episodes=0)


def test_eval_command_records_one_video_per_episode(
    breakout_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("moviepy")
    iio = pytest.importorskip("imageio.v3")
    out = tmp_path / "videos"
    assert run_eval_command(parse([str(breakout_run), "--episodes", "2", "--video", "--out", str(out)])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("greedy return over 2 episodes: mean ")
    videos = sorted(out.glob("*.mp4"))
    assert [str(p) for p in videos] == lines[1:] and len(videos) == 2
    frame = iio.imread(videos[0], index=0)
    assert frame.shape == (160, 160, 3) and np.asarray(frame).std() > 0  # 10 × 10 frames enlarged 16×


def test_eval_refuses_an_env_that_cannot_render(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("moviepy")

    class Broken:
        render_mode = None

        def close(self) -> None:
            pass

    result = plasticrl.train(
        "configs/cartpole/dqn.yaml",
        total_steps=100,
        agent={"learning_starts": 50, "buffer_size": 200, "batch_size": 16},
        metrics={"every": 0, "ntk_every": 0},
        logging={"dir": str(tmp_path)},
        quiet=True,
    )
    monkeypatch.setattr(plasticrl.TrainedAgent, "make_env", lambda self, **kw: Broken())
    with pytest.raises(ValueError, match="'CartPole-v1' cannot render rgb_array frames"):
        evaluate(result.run_dir, episodes=1, video_dir=tmp_path / "v")
    with pytest.raises(ValueError, match="--out is the video folder"):
        run_eval_command(parse([str(result.run_dir), "--out", str(tmp_path)]))
