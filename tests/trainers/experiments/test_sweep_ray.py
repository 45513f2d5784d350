"""``plasticrl sweep --backend ray``: real sweeps on a local Ray instance (skipped without Ray)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

# The sweep tests' fixtures: children run in the repo; the tiny CartPole preset as base_file.
from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, load_checkpoint  # noqa: E402
from plasticrl.trainers.cli import main  # noqa: E402
from plasticrl.trainers.experiments.sweep import plan_sweep  # noqa: E402
from plasticrl.trainers.experiments.sweep_file import load_sweep  # noqa: E402

from tests.trainers.experiments.test_sweep import _in_repo, base_file, summary, write_sweep  # noqa: E402, F401


@pytest.fixture(scope="module", autouse=True)
def _ray_instance() -> Iterator[None]:
    """One local Ray instance (2 CPUs) for the module; the sweeps use it instead of starting their own."""
    sigterm = signal.getsignal(signal.SIGTERM)  # ray.init replaces it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()
    signal.signal(signal.SIGTERM, sigterm)


@pytest.mark.usefixtures("base_file")
def test_ray_sweep_runs_each_run_as_a_task_reports_failures_and_skips_complete_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = "tests.trainers.experiments.test_sweep:broken_env"
    path = write_sweep(tmp_path, seeds=[0], grid={"env.id": [bad, "CartPole-v1"]})
    assert main(["sweep", str(path), "--backend", "ray"]) == 1
    out = capsys.readouterr().out
    assert summary(out) == (1, 0, 0, 1)
    assert "ray: 2 run(s) as tasks on the connected Ray instance (2 CPU(s), 0 GPU(s))" in out
    good_leaf, bad_leaf = (
        "env.id=CartPole-v1__s0",
        "env.id=tests.trainers.experiments.test_sweep-broken_env__s0",
    )
    assert {f"start   sw/{good_leaf}", f"start   sw/{bad_leaf}", f"done    sw/{good_leaf}"} <= set(
        out.splitlines()
    )
    # The failed run: its exit code and log, where the child's error is.
    bad_log = tmp_path / "runs" / "sw" / f"{bad_leaf}.log"
    assert f"FAILED  sw/{bad_leaf} (exit code 1; log: {bad_log})" in out
    assert f"failed: sw/{bad_leaf} (exit code 1) log: {bad_log}" in out
    assert "broken_env: cannot build this environment" in bad_log.read_text()
    # The other one finished in its folder, with its log.
    good_dir = tmp_path / "runs" / "sw" / good_leaf
    state = load_checkpoint(good_dir / CHECKPOINT_NAME)
    assert state["global_step"] >= 200 and state["config"]["env"]["id"] == "CartPole-v1"
    log = (good_dir.parent / f"{good_leaf}.log").read_text()
    assert (
        "finished:" in log
        and log.startswith("$ ")
        and "-m plasticrl.trainers.cli train" in log.splitlines()[0]
    )

    # Again: the complete run is skipped, the failed one tried again.
    assert main(["sweep", str(path), "--backend", "ray"]) == 1
    out = capsys.readouterr().out
    assert summary(out) == (0, 1, 0, 1)
    assert "ray: 1 run(s) as tasks" in out


@pytest.mark.usefixtures("base_file")
def test_stopping_a_ray_sweep_checkpoints_its_runs_and_the_next_one_resumes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_sweep(tmp_path, seeds=[0, 1], overrides=["total_steps=10000000", "logging.every=1000"])
    run_dirs = [tmp_path / "runs" / "sw" / f"s{seed}" for seed in (0, 1)]
    finished = threading.Event()

    def stop_when_training() -> None:
        deadline = time.monotonic() + 120
        while not all(any(d.glob("events.out.tfevents.*")) for d in run_dirs) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # both loops are training
        if not finished.is_set():
            os.kill(os.getpid(), signal.SIGTERM)  # like Ctrl-C: the sweep cancels its tasks

    stopper = threading.Thread(target=stop_when_training, daemon=True)
    stopper.start()
    try:
        code = main(["sweep", str(path), "--backend", "ray"])
    finally:
        finished.set()
    stopper.join()
    out = capsys.readouterr().out
    assert code == 130, out
    assert "2 interrupted" in out and summary(out) == (0, 0, 0, 0)
    assert {"stopped sw/s0 (checkpoint written)", "stopped sw/s1 (checkpoint written)"} <= set(
        out.splitlines()
    )
    steps = [load_checkpoint(d / CHECKPOINT_NAME)["global_step"] for d in run_dirs]
    assert all(0 < step < 10_000_000 for step in steps), steps
    assert [r.action for r in plan_sweep(load_sweep(path))] == ["resume", "resume"]

    # Run again, a little longer than the furthest checkpoint: both are resumed in their folders.
    assert main(["sweep", str(path), "--backend", "ray", f"total_steps={max(steps) + 50}"]) == 0
    assert summary(capsys.readouterr().out) == (0, 0, 2, 0)
    for run_dir in run_dirs:
        assert load_checkpoint(run_dir / CHECKPOINT_NAME)["global_step"] == max(steps) + 50
        commands = [
            line
            for line in (run_dir.parent / f"{run_dir.name}.log").read_text().splitlines()
            if line[:2] == "$ "
        ]
        assert len(commands) == 2 and f"--resume {run_dir}" in commands[1]
