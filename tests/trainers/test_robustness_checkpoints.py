"""Checkpoints that lose nothing and are never misread (issue 17).

The sidecar names its checkpoint exactly; a linear lr schedule is not re-stretched when a run is
extended; an env that cannot be pickled still gets checkpoints of everything else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch
from plasticrl.trainers import checkpoint as checkpoint_module
from plasticrl.trainers.checkpoint import (
    CHECKPOINT_NAME,
    checkpoint_identity,
    load_checkpoint,
    load_summary,
    save_checkpoint,
)
from plasticrl.trainers.experiments.plot import read_scalars

# ---------------------------------------------------------------------------------------------
# The sidecar identifies its checkpoint exactly


def _crash_before_sidecar(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next save stop right after the checkpoint's rename, before its sidecar's."""
    real = checkpoint_module._write_atomic

    def write(path: Path, fn: Any) -> None:
        if path.suffix == ".json":
            raise SystemExit("killed between the renames")
        real(path, fn)

    monkeypatch.setattr(checkpoint_module, "_write_atomic", write)


def test_a_same_size_checkpoint_under_a_stale_sidecar_is_read_as_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint({"global_step": 100, "config": {}, "w": torch.zeros(8)}, path, generation=1)
    size = path.stat().st_size
    _crash_before_sidecar(monkeypatch)
    with pytest.raises(SystemExit):  # same size, same keys: only the step differs
        save_checkpoint({"global_step": 200, "config": {}, "w": torch.ones(8)}, path, generation=2)
    monkeypatch.undo()
    assert path.stat().st_size == size
    assert json.loads((tmp_path / "checkpoint.json").read_text())["global_step"] == 100  # stale
    calls: list[Path] = []
    real_load = checkpoint_module.load_checkpoint
    monkeypatch.setattr(checkpoint_module, "load_checkpoint", lambda p: calls.append(p) or real_load(p))
    assert load_summary(path)["global_step"] == 200  # the checkpoint's own step, not the sidecar's
    assert len(calls) == 1
    # ... and the stale sidecar was recomputed: the next read is cheap again, and exact.
    sidecar = json.loads((tmp_path / "checkpoint.json").read_text())
    assert sidecar["global_step"] == 200
    assert sidecar["checkpoint_id"] == checkpoint_identity(real_load(path))
    assert load_summary(path)["global_step"] == 200 and len(calls) == 1


def test_identity_is_inside_the_checkpoint_and_its_sidecar(tmp_path: Path) -> None:
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint({"global_step": 1, "config": {}}, path, generation=4)
    first = checkpoint_identity(load_checkpoint(path))
    save_checkpoint({"global_step": 1, "config": {}}, path, generation=4)  # same content, new write
    second = checkpoint_identity(load_checkpoint(path))
    assert first is not None and second is not None
    assert first["generation"] == second["generation"] == 4 and first["nonce"] != second["nonce"]
    assert json.loads((tmp_path / "checkpoint.json").read_text())["checkpoint_id"] == second


def test_a_sidecar_of_a_rewritten_file_in_place_is_stale(tmp_path: Path) -> None:
    """Same size, same inode (written in place, not renamed): the mtime tells them apart."""
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint({"global_step": 5, "config": {}}, path)
    state = load_checkpoint(path)
    size = path.stat().st_size
    stamp = path.stat().st_mtime_ns
    with open(path, "r+b") as f:  # same bytes count, new content
        torch.save({**state, "global_step": 6}, f)
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    assert path.stat().st_size == size
    assert load_summary(path)["global_step"] == 6


def test_a_session_counts_generations_across_resume(make_tiny_config: Callable[..., Any]) -> None:
    from plasticrl.trainers.run import resume, train

    result = train(make_tiny_config("total_steps=300", "checkpoint.every=100"), quiet=True)
    first = checkpoint_identity(load_checkpoint(result.run_dir / CHECKPOINT_NAME))
    assert first is not None and first["generation"] == 4  # steps 100, 200, 300 and the final one
    resume(result.run_dir, ["total_steps=400"], quiet=True)
    second = checkpoint_identity(load_checkpoint(result.run_dir / CHECKPOINT_NAME))
    assert second is not None and second["generation"] == 6


# ---------------------------------------------------------------------------------------------
# Extending a run keeps its lr schedule


@pytest.mark.parametrize("agent", ["dqn", "ppo"])
def test_extending_a_finished_run_does_not_restretch_a_linear_lr_schedule(
    agent: str, make_tiny_config: Callable[..., Any], runs_dir: Path
) -> None:
    from plasticrl.trainers.config import load_config
    from plasticrl.trainers.run import resume, train

    schedule = ["total_steps=320", "optimizer.lr_schedule=linear", "optimizer.lr_end_factor=0.25"]
    if agent == "ppo":
        ppo = ["agent.name=ppo", "agent.num_steps=16", "agent.num_minibatches=2", "agent.update_epochs=1"]
        base = ["env.id=CartPole-v1", "network.hidden_sizes=[16]", "logging.progress=false"]
        cfg = load_config(None, [*base, *ppo, *schedule, f"logging.dir={runs_dir}"])
    else:
        cfg = make_tiny_config(*schedule)
    lr = cfg.optimizer.lr
    done = train(cfg, quiet=True)
    assert done.agent.optimizer.param_groups[0]["lr"] == pytest.approx(0.25 * lr, rel=0.05)
    extended = resume(done.run_dir, ["total_steps=640", "logging.every=32"], quiet=True)
    assert extended.status == "finished" and extended.updates > done.updates
    # Re-stretched over 640 steps, the lr would jump back up to ~0.62 * lr right after the resume
    # (and come down to 0.25 * lr only at the new end): every lr logged after step 320 must be the
    # end of the original schedule.
    steps, lrs = read_scalars(done.run_dir)["charts/learning_rate"]
    after = [value for step, value in zip(steps, lrs, strict=True) if step > 320]
    assert len(after) >= 5
    assert after == pytest.approx([0.25 * lr] * len(after))
    assert extended.agent.optimizer.param_groups[0]["lr"] == pytest.approx(0.25 * lr)


# ---------------------------------------------------------------------------------------------
# An env that cannot be pickled keeps every other part of its checkpoints


class FailingCartPole(gym.Wrapper[Any, Any, Any, Any]):
    """CartPole whose ``step`` raises its own error at step ``fail_at_step`` (never when -1)."""

    def __init__(self, fail_at_step: int = -1, **kwargs: Any) -> None:
        super().__init__(gym.make("CartPole-v1", **kwargs))
        self.fail_at_step = fail_at_step
        self.steps = 0

    def step(self, action: Any) -> Any:
        self.steps += 1
        if self.steps == self.fail_at_step:
            raise RuntimeError("the env's own bug")
        return self.env.step(action)


class LockedCartPole(FailingCartPole):
    """CartPole holding a thread lock, as an env with a socket or a C handle would: it cannot be pickled."""

    def __init__(self, fail_at_step: int = -1, **kwargs: Any) -> None:
        super().__init__(fail_at_step, **kwargs)
        self.lock = threading.Lock()


LOCKED = f"{__name__}:LockedCartPole"
FAILING = f"{__name__}:FailingCartPole"


@pytest.mark.parametrize("agent", ["dqn", "ppo"])
def test_an_unpicklable_env_is_reported_at_start_up_and_the_rest_is_checkpointed(
    agent: str, make_tiny_config: Callable[..., Any], runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from plasticrl.trainers.config import load_config
    from plasticrl.trainers.run import resume, train

    common = [f"env.id={LOCKED}", "total_steps=320", "checkpoint.every=100"]
    if agent == "ppo":
        ppo = ["agent.name=ppo", "agent.num_steps=32", "agent.num_minibatches=2", "agent.update_epochs=1"]
        cfg = load_config(None, [*common, *ppo, "logging.progress=false", f"logging.dir={runs_dir}"])
    else:
        cfg = make_tiny_config(*common)
    result = train(cfg)
    err = capsys.readouterr().err
    assert result.status == "finished" and result.global_step == 320
    assert err.count("cannot be pickled") == 1 and "_thread.lock" in err
    state = load_checkpoint(result.run_dir / CHECKPOINT_NAME)
    assert set(state["envs"]) == {"not_saved"} and "_thread.lock" in state["envs"]["not_saved"]
    assert state["global_step"] == 320
    for key, value in result.agent.model.state_dict().items():  # the trained weights are kept
        assert torch.equal(state["agent"]["model" if agent == "ppo" else "q_net"][key], value)
    extended = resume(result.run_dir, ["total_steps=448"])
    assert "fresh envs" in capsys.readouterr().err
    assert extended.status == "finished" and extended.global_step == 448
    assert extended.updates > result.updates  # the agent went on from its checkpoint


def test_the_unpicklable_env_warning_comes_before_the_first_step(
    make_tiny_config: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from plasticrl.trainers.run import train

    # step 1 is the start-up check's probe env (its own instance); the run's env fails at its 2nd step
    cfg = make_tiny_config(f"env.id={LOCKED}", "env.kwargs={fail_at_step: 2}")
    with pytest.raises(RuntimeError, match="the env's own bug"):
        train(cfg)
    assert "cannot be pickled" in capsys.readouterr().err


def test_an_env_error_keeps_its_traceback_and_the_last_checkpoint(
    runs_dir: Path, tiny_overrides: list[str], tmp_path: Path
) -> None:
    """The user's bug is shown as a traceback (not as bad input), with a note naming the kept checkpoint."""
    config = tmp_path / "c.yaml"
    config.write_text("seed: 0\n")
    overrides = [
        *tiny_overrides,
        f"env.id={FAILING}",
        "env.kwargs={fail_at_step: 250}",
        "checkpoint.every=100",
        "logging.name=crashy",
    ]
    code = "import sys; from plasticrl.trainers.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, "train", str(config), *overrides],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert "RuntimeError: the env's own bug" in proc.stderr
    run_dir = runs_dir / "crashy"
    assert f"its last checkpoint ({run_dir / CHECKPOINT_NAME}, step 200) is intact" in proc.stderr
    assert f"plasticrl train --resume {run_dir}" in proc.stderr
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["global_step"] == 200
