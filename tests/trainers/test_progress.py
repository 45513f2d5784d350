"""The progress line's ETA and the run folder printed at start (trainers/progress.py), and the
sweep's single progress line (``SweepProgress`` in trainers/experiments/sweep.py)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from plasticrl.trainers.experiments.sweep import SweepProgress, SweepResult
from plasticrl.trainers.progress import Progress, eta_seconds, format_duration


class Source:
    def mean_return(self) -> float | None:
        return 1.5

    def progress_text(self) -> str:
        return "task 2"


class Clock:
    """A settable ``time.perf_counter``."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("plasticrl.trainers.progress.time.perf_counter", fake)
    monkeypatch.setattr("plasticrl.trainers.experiments.sweep.time.perf_counter", fake)
    return fake


def test_durations_and_eta_by_hand() -> None:
    assert [format_duration(s) for s in (0, 59.4, 60, 3599, 3600, 86_399, 90_000)] == [
        "0s",
        "59s",
        "1m00s",
        "59m59s",
        "1h00m",
        "23h59m",
        "1d01h",
    ]
    assert format_duration(-1) == "?" and format_duration(None) == "?"
    assert eta_seconds(0, 100, 5.0) is None and eta_seconds(10, 100, 0.0) is None
    assert eta_seconds(25, 100, 10.0) == pytest.approx(30.0) and eta_seconds(100, 100, 3.0) == 0.0


def test_progress_line_has_an_eta_from_this_processes_rate(clock: Clock) -> None:
    stream = io.StringIO()
    progress = Progress(10_000, start=2_000, stream=stream)  # a resumed run: rate counts from 2000
    clock.now += 20.0
    line = progress.line(4_000, 1.5, "task 2")  # 2000 steps in 20 s: 6000 left → 60 s
    assert "|     100 SPS |" in line and "| ETA 1m00s |" in line and line.endswith("| return 1.50 | task 2")
    assert "done" in progress.line(10_000, None) and "ETA" not in progress.line(10_000, None)


def test_run_folder_is_printed_when_the_run_starts(tmp_path: Path) -> None:
    stream = io.StringIO()
    Progress(100, stream=stream, run_dir=tmp_path / "runs" / "x")
    assert stream.getvalue() == f"run folder: {tmp_path / 'runs' / 'x'}\n"
    resumed = io.StringIO()
    Progress(100, start=40, stream=resumed, run_dir="runs/x")
    assert resumed.getvalue() == "resuming runs/x at step 40\n"
    quiet = io.StringIO()
    Progress(100, enabled=False, stream=quiet, run_dir="runs/x")
    assert quiet.getvalue() == ""


def test_sweep_progress_counts_and_eta(clock: Clock) -> None:
    out = io.StringIO()
    bar = SweepProgress(8, out)
    result = SweepResult(ran=["a", "b"], resumed=["c"], failed=[("d", 1, Path("d.log"))])
    clock.now += 120.0  # 4 of 8 finished in 2 minutes: 4 left → 2 more minutes
    assert bar.line(result, running=2) == (
        "[sweep] 4/8 finished (1 failed) | 2 running | 2 queued | elapsed 2m00s | ETA 2m00s"
    )
    assert bar.line(SweepResult(), running=2).endswith("| 6 queued | elapsed 2m00s | ETA ?")
    bar.draw(result, 2, finished_one=False)
    assert out.getvalue() == ""  # on a pipe only a finished run prints the line
    bar.draw(result, 2, finished_one=True)
    assert out.getvalue().splitlines() == [bar.line(result, 2)]
    done = SweepResult(ran=list("abcdefgh"))
    assert bar.line(done, running=0).endswith("| done")


def test_sweep_progress_redraws_one_terminal_line(clock: Clock) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    bar = SweepProgress(2, out)
    bar.draw(SweepResult(), 2, finished_one=False)
    bar.clear()
    out.write("done    a\n")
    bar.draw(SweepResult(ran=["a"]), 1, finished_one=True)
    bar.close()
    text = out.getvalue()
    assert text.startswith("\r[sweep] 0/2 finished") and "\r\x1b[Kdone    a\n" in text
    assert text.endswith(
        "[sweep] 1/2 finished (0 failed) | 1 running | 0 queued | elapsed 0s | ETA ?\x1b[K\n"
    )
