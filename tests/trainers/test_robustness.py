"""Signals and sweep races (issue 17): SIGTERM/SIGHUP checkpoint like Ctrl-C; taken runs are reported."""

from __future__ import annotations

import dataclasses
import io
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, load_checkpoint
from plasticrl.trainers.config import apply_overrides
from plasticrl.trainers.experiments import sweep as sweep_module
from plasticrl.trainers.experiments.sweep import (
    EXIT_TAKEN,
    SweepResult,
    execute_sweep,
    plan_sweep,
    raise_on_sigterm,
    record_exit,
    restore_handlers,
)
from plasticrl.trainers.experiments.sweep_file import load_sweep
from plasticrl.trainers.interrupt import GracefulInterrupt
from plasticrl.trainers.run import resume, train

from tests.trainers.experiments.test_sweep import TINY

HOLD = (
    "import sys, time; from pathlib import Path; from plasticrl.trainers.runlock import lock_run_dir; "
    "lock_run_dir(Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)"
)

STOPS = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None]


def signal_regularizer(register: Callable[..., None], sig: int) -> str:
    """Register a zero penalty that raises ``sig`` on call ``at_call``."""
    from tests.conftest import ConstantPenalty

    class SignalPenalty(ConstantPenalty):
        def __init__(self, model: torch.nn.Module, at_call: int) -> None:
            super().__init__(model, [0.0], "test_signal")
            self.at_call = at_call

        def __call__(self) -> torch.Tensor:
            if self.calls == self.at_call:
                signal.raise_signal(sig)
            return super().__call__()

    def factory(model: torch.nn.Module, groups: list[dict[str, Any]], cfg: Any) -> SignalPenalty:
        return SignalPenalty(model, int(cfg.options["at_call"]))

    name = f"test_signal_{int(sig)}"
    register(name, factory)
    return name


@pytest.mark.parametrize("sig", STOPS, ids=lambda s: signal.Signals(s).name)
def test_sigterm_and_sighup_checkpoint_like_ctrl_c(
    sig: int,
    make_tiny_config: Callable[..., Any],
    register_regularizer: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = signal_regularizer(register_regularizer, sig)
    handler = signal.getsignal(sig)
    entry = "regularizers=[{{name: {name}, coef: 1, at_call: {at}}}]"
    full = train(make_tiny_config("logging.name=full", entry.format(name=name, at=-1)))
    cut = train(make_tiny_config("logging.name=cut", entry.format(name=name, at=100)))
    assert cut.status == "interrupted"
    assert cut.global_step == 200
    assert f"{signal.Signals(sig).name}: finishing this step" in capsys.readouterr().err
    assert signal.getsignal(sig) is handler
    assert load_checkpoint(cut.run_dir / CHECKPOINT_NAME)["global_step"] == 200
    done = resume(cut.run_dir)
    assert done.status == "finished"
    for key, value in full.agent.q_net.state_dict().items():
        assert torch.equal(value, done.agent.q_net.state_dict()[key]), key


def test_graceful_interrupt_handles_every_stop_signal() -> None:
    previous = {s: signal.getsignal(s) for s in STOPS}
    with GracefulInterrupt() as interrupt:
        signal.raise_signal(STOPS[0])
        assert interrupt.requested and interrupt.signal_name == signal.Signals(STOPS[0]).name
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(STOPS[-1])  # a second one, of any kind, aborts
    assert {s: signal.getsignal(s) for s in STOPS} == previous


def test_the_sweep_stops_on_sighup_too() -> None:
    previous = {s: signal.getsignal(s) for s in STOPS}
    handlers = raise_on_sigterm()
    try:
        for s in STOPS:
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(s)
    finally:
        restore_handlers(handlers)
    assert {s: signal.getsignal(s) for s in STOPS} == previous


def _sweep(tmp_path: Path, seeds: list[int]) -> Path:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(apply_overrides({}, TINY)))
    path = tmp_path / "sw.yaml"
    path.write_text(yaml.safe_dump({"base": "tiny.yaml", "dir": str(tmp_path / "runs"), "seeds": seeds}))
    return path


def test_a_run_taken_after_planning_is_reported_and_the_others_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = plan_sweep(load_sweep(_sweep(tmp_path, [0, 1])))
    taken = runs[0]
    taken.run_dir.mkdir(parents=True)  # another process starts it between planning and launch
    holder = subprocess.Popen(  # noqa: S603
        [sys.executable, "-c", HOLD, str(taken.run_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        out = io.StringIO()
        result = execute_sweep(runs, workers=1, out=out, progress=False)
    finally:
        holder.kill()
        holder.wait()
    text = out.getvalue()
    assert result.elsewhere == [taken.name], text
    assert result.ran == [runs[1].name] and not result.failed, text
    assert f"taken   {taken.name}" in text
    assert taken.run_dir.is_dir()  # left alone


def test_a_folder_without_checkpoint_is_set_aside_not_deleted(tmp_path: Path) -> None:
    runs = plan_sweep(load_sweep(_sweep(tmp_path, [0])))
    run = runs[0]
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "nonfinite_stop.pt").write_bytes(b"evidence")
    run.log_path.write_text("the old log\n")
    run = dataclasses.replace(plan_sweep(load_sweep(_sweep(tmp_path, [0])))[0])
    assert run.action == "start" and run.stale_dir
    result = execute_sweep([run], workers=1, out=io.StringIO(), progress=False)
    assert result.ran == [run.name]
    kept = run.run_dir.parent / ".stale" / f"{run.run_dir.name}.0"
    assert (kept / "nonfinite_stop.pt").read_bytes() == b"evidence"
    assert (kept / run.log_path.name).read_text() == "the old log\n"
    assert (run.run_dir / CHECKPOINT_NAME).is_file()  # restarted cleanly under its name


def test_a_child_that_finds_its_folder_in_use_is_taken_not_failed(tmp_path: Path) -> None:
    run = plan_sweep(load_sweep(_sweep(tmp_path, [0])))[0]
    result = SweepResult()
    record_exit(run, EXIT_TAKEN, result, io.StringIO())
    assert result.elsewhere == [run.name] and not result.failed
    assert sweep_module.summary_line("sw", result).endswith("1 running elsewhere (left alone)")


def test_orphan_checkpoint_temp_files_are_removed_when_the_folder_is_next_opened(tmp_path: Path) -> None:
    from plasticrl.trainers.runlock import lock_run_dir, unlock_run_dir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    orphans = [run_dir / ".checkpoint.pt.k2j4_x9a.tmp", run_dir / ".checkpoint.json.abc12345.tmp"]
    keep = [run_dir / "notes.tmp", run_dir / ".other.tmp", run_dir / "checkpoint.pt"]
    for path in (*orphans, *keep):
        path.write_bytes(b"x")
    lock_run_dir(run_dir)
    try:
        assert not any(p.exists() for p in orphans)
        assert all(p.exists() for p in keep)
    finally:
        unlock_run_dir(run_dir)
