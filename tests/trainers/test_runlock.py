"""The run folder lock: one training process per run folder, released however the holder exits."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, load_checkpoint
from plasticrl.trainers.cli import main
from plasticrl.trainers.config import apply_overrides, load_config
from plasticrl.trainers.run import resume, train
from plasticrl.trainers.runfolder import make_run_dir
from plasticrl.trainers.runlock import LOCK_NAME, RunFolderInUse, lock_run_dir, run_dir_holder, unlock_run_dir

from tests.trainers.experiments.test_sweep import TINY

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no flock on Windows: locking is off")

HOLD = """
import sys
from pathlib import Path
from plasticrl.trainers.runlock import lock_run_dir
lock_run_dir(Path(sys.argv[1]))
print("locked", flush=True)
sys.stdin.read()  # hold until the test closes our stdin, or kills us
"""


def hold(run_dir: Path) -> subprocess.Popen[str]:
    """Another process that holds ``run_dir``'s lock until its stdin closes."""
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", HOLD, str(run_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "locked"
    return process


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    run_dir = tmp_path / "runs" / "held"
    run_dir.mkdir(parents=True)
    process = hold(run_dir)
    yield run_dir, process
    process.kill()
    process.wait()


def test_a_lock_is_per_process_reentrant_and_released(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert run_dir_holder(run_dir) is None
    lock_run_dir(run_dir)
    lock_run_dir(run_dir)  # re-entrant within this process
    assert run_dir_holder(run_dir) == "this process"
    assert (run_dir / LOCK_NAME).read_text().split() == [str(os.getpid()), socket.gethostname()]
    unlock_run_dir(run_dir)
    assert run_dir_holder(run_dir) is None
    assert (run_dir / LOCK_NAME).is_file()  # never removed (Note [Run folder lock])
    unlock_run_dir(run_dir)  # releasing what is not held does nothing


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_keep_the_lock(tmp_path: Path) -> None:
    """AsyncVectorEnv workers are forked while a run holds its lock; they must not inherit it."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lock_run_dir(run_dir)
    read, write = os.pipe()
    started_read, started_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child (the at-fork hooks have run): say so, then outlive the parent's unlock
        os.close(write)
        os.write(started_write, b"x")
        os.read(read, 1)
        os._exit(0)
    os.close(read)
    os.close(started_write)
    assert os.read(started_read, 1) == b"x"
    os.close(started_read)
    try:
        assert run_dir_holder(run_dir) == "this process"
        unlock_run_dir(run_dir)
        assert run_dir_holder(run_dir) is None  # the child's copy did not keep it
    finally:
        os.close(write)
        os.waitpid(pid, 0)


def test_another_process_holds_until_it_dies_even_by_kill(holder: tuple[Path, subprocess.Popen[str]]) -> None:
    run_dir, process = holder
    expected = f"pid {process.pid} on {socket.gethostname()}"
    assert run_dir_holder(run_dir) == expected
    with pytest.raises(RunFolderInUse, match=f"in use by {expected}"):
        lock_run_dir(run_dir)
    process.kill()  # SIGKILL: no cleanup code runs, the kernel releases the lock
    process.wait()
    assert run_dir_holder(run_dir) is None
    lock_run_dir(run_dir)
    unlock_run_dir(run_dir)


def test_training_refuses_a_folder_in_use_and_writes_nothing(
    tmp_path: Path, holder: tuple[Path, subprocess.Popen[str]]
) -> None:
    run_dir, _ = holder
    cfg = load_config(None, [*TINY, f"logging.dir={run_dir.parent}", f"logging.name={run_dir.name}"])
    with pytest.raises(RunFolderInUse, match="in use by pid"):
        make_run_dir(cfg)
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]  # no config.yaml written


def test_resume_refuses_a_folder_in_use_and_a_finished_run_releases_its_lock(tmp_path: Path) -> None:
    cfg = load_config(None, [*TINY, f"logging.dir={tmp_path}", "logging.name=run"])
    result = train(cfg, quiet=True)
    run_dir = Path(result.run_dir)
    assert run_dir_holder(run_dir) is None  # the session released it after the last checkpoint
    before = (run_dir / CHECKPOINT_NAME).read_bytes()
    process = hold(run_dir)
    try:
        with pytest.raises(RunFolderInUse, match="in use by pid"):
            resume(run_dir, ["total_steps=400"], quiet=True)
        assert (run_dir / CHECKPOINT_NAME).read_bytes() == before
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["total_steps"] == cfg.total_steps
    finally:
        process.kill()
        process.wait()
    resume(run_dir, ["total_steps=400"], quiet=True)
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["global_step"] == 400
    assert run_dir_holder(run_dir) is None


def test_generated_names_never_share_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    cfg = load_config(None, [*TINY, f"logging.dir={tmp_path}"])
    stamp = time.strftime("%Y%m%d-%H%M%S")  # both in the same second, even on a loaded machine
    monkeypatch.setattr("plasticrl.trainers.runfolder.time.strftime", lambda fmt: stamp)
    first, second = make_run_dir(cfg), make_run_dir(cfg)  # the same second: a suffix
    assert first != second and second.name.startswith(first.name)
    assert run_dir_holder(first) == run_dir_holder(second) == "this process"
    unlock_run_dir(first)
    unlock_run_dir(second)


def test_a_sweep_leaves_a_run_another_process_trains_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(apply_overrides({}, TINY)))
    sweep = tmp_path / "sw.yaml"
    sweep.write_text(yaml.safe_dump({"base": "tiny.yaml", "dir": str(tmp_path / "runs"), "seeds": [0, 1]}))
    busy = tmp_path / "runs" / "sw" / "s0"  # no checkpoint yet: without the lock, "stale" and removed
    busy.mkdir(parents=True)
    (busy / "events.out.tfevents.partial").write_text("a run in progress")
    process = hold(busy)
    try:
        assert main(["sweep", str(sweep), "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert f"running  sw/s0  (in use by pid {process.pid} on {socket.gethostname()}; left alone)" in out
        assert "1 to start, 0 to resume, 0 to skip (complete), 1 running elsewhere" in out
        assert main(["sweep", str(sweep), "--workers", "1"]) == 0
        out = capsys.readouterr().out
        assert "sweep sw: 1 ran, 0 skipped (complete), 0 resumed, 0 failed, 1 running elsewhere" in out
        assert (busy / "events.out.tfevents.partial").is_file()  # untouched
        assert not (busy / CHECKPOINT_NAME).exists()
        assert load_checkpoint(tmp_path / "runs" / "sw" / "s1" / CHECKPOINT_NAME)["global_step"] == 200
    finally:
        process.kill()
        process.wait()
