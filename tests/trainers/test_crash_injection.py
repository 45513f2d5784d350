"""Kill a run, and a sweep's run, at every checkpoint-write boundary; the next attempt must end right.

A tiny CartPole DQN run of 300 steps writes ``checkpoint.pt`` four times (steps 100, 200, 300 and
the final one), so 16 boundaries (:mod:`tests.trainers.crash_hook`): before and after the
checkpoint's rename and before and after its sidecar's. For each, a process is killed there
(``os._exit(137)``, no clean-up), then:

- a run is resumed with ``--resume`` when its checkpoint is behind, accepted as complete when
  its checkpoint (read through the sidecar, which may be stale) says it is done, or started again
  when it died before its first checkpoint;
- a sweep is run again, and must start, resume or skip that run accordingly (never fail it);

and in every case the final checkpoint holds exactly the weights and optimizer state of an
uninterrupted run. The default suite kills at the boundaries around the first write's renames
and between the final write's two renames (a complete run under a stale sidecar); ``-m slow``
runs all 16 for both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, load_checkpoint, load_summary
from plasticrl.trainers.cli import main
from plasticrl.trainers.config import load_config
from plasticrl.trainers.run import resume, train

from tests.trainers import crash_hook
from tests.trainers.experiments.test_sweep import summary

ROOT = Path(__file__).resolve().parents[2]
TOTAL = 300
TINY = {
    "env": {"id": "CartPole-v1"},
    "total_steps": TOTAL,
    "agent": {
        "learning_starts": 50,
        "buffer_size": 500,
        "batch_size": 16,
        "target_update_every": 50,
        "eps_decay_steps": 100,
    },
    "network": {"hidden_sizes": [16]},
    "logging": {"every": 50, "progress": False},
    "checkpoint": {"every": 100},
}
BOUNDARIES = 16
"""4 checkpoint writes x 4 boundaries (checked against a logged uninterrupted run below)."""
DEFAULT = {"run": (2,), "sweep": (2, 14)}
"""In the default suite: between the first write's renames (a run, and a sweep's run), and between
the final write's renames (a complete run under a stale sidecar, which a sweep once failed)."""


def _cases(kind: str) -> list[Any]:
    return [
        pytest.param(k, id=f"{kind}-boundary{k}", marks=() if k in DEFAULT[kind] else pytest.mark.slow)
        for k in range(1, BOUNDARIES + 1)
    ]


@pytest.fixture
def preset(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted run's final checkpoint (trained once per module), with its boundaries logged."""
    folder = tmp_path_factory.mktemp("reference")
    preset = folder / "tiny.yaml"
    preset.write_text(yaml.safe_dump(TINY, sort_keys=False))
    log = folder / "boundaries.log"
    restore = crash_hook.install(0, str(log))
    try:
        result = train(load_config(preset, [f"logging.dir={folder / 'runs'}"]), quiet=True)
    finally:
        restore()
    lines = log.read_text().splitlines()
    assert len(lines) == BOUNDARIES, lines
    assert [line.split(" ", 1)[1] for line in lines[:4]] == [
        "before checkpoint.pt",
        "after checkpoint.pt",
        "before checkpoint.json",
        "after checkpoint.json",
    ]
    return load_checkpoint(result.run_dir / CHECKPOINT_NAME)


@pytest.fixture
def crash_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """An environment whose Python processes load the hook (as ``sitecustomize``) at start-up."""
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    shutil.copy(crash_hook.__file__, hook_dir / "sitecustomize.py")
    path = os.pathsep.join(p for p in (str(hook_dir), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    yield dict(os.environ)


def assert_same_training(state: dict[str, Any], reference: dict[str, Any]) -> None:
    """Same step, same network weights, same optimizer state as the uninterrupted run."""
    assert state["global_step"] == reference["global_step"] == TOTAL
    for part in ("q_net", "target_net"):
        for key, value in reference["agent"][part].items():
            assert torch.equal(state["agent"][part][key], value), (part, key)
    ours, theirs = state["agent"]["optimizer"]["state"], reference["agent"]["optimizer"]["state"]
    assert ours.keys() == theirs.keys()
    for index, entries in theirs.items():
        for name, value in entries.items():
            assert torch.equal(torch.as_tensor(ours[index][name]), torch.as_tensor(value)), (index, name)


def _orphans(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("boundary", _cases("run"))
def test_a_run_killed_at_a_checkpoint_boundary_ends_as_if_never_killed(
    boundary: int, preset: Path, tmp_path: Path, reference: dict[str, Any], crash_env: dict[str, str]
) -> None:
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "plasticrl.trainers.cli", "train", str(preset)]
    command += [f"logging.dir={runs}", "logging.name=cut", "-q"]
    proc = subprocess.run(
        command, env={**crash_env, crash_hook.ENV_AT: str(boundary)}, capture_output=True, timeout=300
    )
    assert proc.returncode == crash_hook.KILLED, proc.stderr.decode()
    run_dir = runs / "cut"
    checkpoint = run_dir / CHECKPOINT_NAME
    if not checkpoint.exists():  # killed before its first checkpoint: nothing to resume
        assert boundary == 1
        assert len(_orphans(run_dir)) == 1  # the complete temp file of the write that was cut
        result = train(load_config(preset, [f"logging.dir={runs}", "logging.name=again"]), quiet=True)
        final = load_checkpoint(result.run_dir / CHECKPOINT_NAME)
    else:
        step = int(load_summary(checkpoint)["global_step"])  # through the sidecar, stale or not
        assert step == int(load_checkpoint(checkpoint)["global_step"])
        if step < TOTAL:
            result = resume(run_dir, quiet=True)
            assert result.status == "finished"
            assert not _orphans(run_dir)  # removed when the folder was opened again
        final = load_checkpoint(checkpoint)
    assert_same_training(final, reference)


@pytest.mark.parametrize("boundary", _cases("sweep"))
def test_a_sweep_run_killed_at_a_checkpoint_boundary_is_resumed_or_skipped(
    boundary: int,
    preset: Path,
    tmp_path: Path,
    reference: dict[str, Any],
    crash_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sweep = tmp_path / "sw.yaml"
    sweep.write_text(yaml.safe_dump({"base": preset.name, "dir": str(tmp_path / "runs"), "seeds": [0]}))
    monkeypatch.setenv(crash_hook.ENV_AT, str(boundary))  # for the sweep's child, through its environment
    assert main(["sweep", str(sweep), "--workers", "1"]) == 1
    assert summary(capsys.readouterr().out)[3] == 1  # the killed run is reported as failed
    monkeypatch.delenv(crash_hook.ENV_AT)
    run_dir = tmp_path / "runs" / "sw" / "s0"
    checkpoint = run_dir / CHECKPOINT_NAME
    done = int(load_checkpoint(checkpoint)["global_step"]) if checkpoint.exists() else None
    assert main(["sweep", str(sweep), "--workers", "1"]) == 0
    ran, skipped, resumed, failed = summary(capsys.readouterr().out)
    if done is None:
        assert (ran, skipped, resumed, failed) == (1, 0, 0, 0)  # restarted; the cut folder set aside
    elif done < TOTAL:
        assert (ran, skipped, resumed, failed) == (0, 0, 1, 0)
    else:
        assert (ran, skipped, resumed, failed) == (0, 1, 0, 0)  # complete, even under a stale sidecar
    assert_same_training(load_checkpoint(checkpoint), reference)
