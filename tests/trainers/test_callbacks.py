"""Callbacks (``callbacks:``): the loops call your hooks at fixed points; early stop; checkpointed state."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from plasticrl.trainers.checkpoint import load_checkpoint
from plasticrl.trainers.config import load_config
from plasticrl.trainers.experiments.plot import read_scalars
from plasticrl.trainers.run import resume, train

from tests.conftest import TINY_DQN_OVERRIDES

REPO = Path(__file__).resolve().parents[2]
HERE = "tests.trainers.test_callbacks"
SWITCHING = ("nonstationary.kind=permute_obs", "nonstationary.every=200", "nonstationary.on=step")


class Recorder:
    """Records every hook call (a class attribute, so the test can read it after the run)."""

    calls: list[tuple[str, int, Any]] = []

    def on_step(self, ctx: Any) -> None:
        Recorder.calls.append(("step", ctx.step, None))

    def on_update(self, ctx: Any, metrics: dict[str, float]) -> dict[str, float]:
        Recorder.calls.append(("update", ctx.step, sorted(metrics)))
        return {"custom/updates_seen": float(sum(1 for c in Recorder.calls if c[0] == "update"))}

    def on_task_switch(self, ctx: Any, task_id: int) -> None:
        Recorder.calls.append(("switch", ctx.step, task_id))

    def on_checkpoint(self, ctx: Any, path: Path) -> None:
        Recorder.calls.append(("checkpoint", ctx.step, path))

    def on_end(self, ctx: Any, status: str) -> None:
        Recorder.calls.append(("end", ctx.step, status))


class StopAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, ctx: Any) -> None:
        if ctx.step >= self.step:
            ctx.stop(f"reached {self.step}")


class Counter:
    """Counts steps across a resume (its count is checkpointed)."""

    seen: list[int] = []

    def __init__(self) -> None:
        self.count = 0

    def on_step(self, ctx: Any) -> None:
        self.count += 1

    def on_end(self, ctx: Any, status: str) -> None:
        Counter.seen.append(self.count)

    def state_dict(self) -> dict[str, int]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.count = state["count"]


class Idle:
    def on_step(self, ctx: Any) -> None:
        return None


def _cfg(runs: Path, *extra: str) -> Any:
    return load_config(None, [*TINY_DQN_OVERRIDES, f"logging.dir={runs}", *extra])


def test_every_hook_is_called_where_the_docs_say(runs_dir: Path) -> None:
    Recorder.calls = []
    result = train(_cfg(runs_dir, *SWITCHING, f"callbacks=[{HERE}:Recorder]"), quiet=True)
    kinds = [c[0] for c in Recorder.calls]
    assert [c[1] for c in Recorder.calls if c[0] == "step"] == list(range(1, 601))  # one env: a step each
    assert kinds.count("update") == result.agent.updates == 501
    switches = read_scalars(result.run_dir)["env/task_id"][0][1:]
    assert [c[1] for c in Recorder.calls if c[0] == "switch"] == switches == [200, 400, 600]
    assert [c[2] for c in Recorder.calls if c[0] == "switch"] == [1, 2, 3]
    assert kinds[-2:] == ["end", "checkpoint"] and Recorder.calls[-2][2] == "finished"
    assert Recorder.calls[-1][2] == result.run_dir / "checkpoint.pt"
    steps, values = read_scalars(result.run_dir)["custom/updates_seen"]  # a hook's scalars are logged
    assert values[-1] == 501.0 and steps[-1] == 600


def test_a_callback_stops_the_run_early_with_a_checkpoint(runs_dir: Path) -> None:
    result = train(_cfg(runs_dir, f"callbacks=[{{name: {HERE}:StopAt, step: 250}}]"), quiet=True)
    assert result.status == "early stop: reached 250" and result.global_step == 250
    assert load_checkpoint(result.run_dir / "checkpoint.pt")["global_step"] == 250


def test_callback_state_is_checkpointed_and_resumed(runs_dir: Path) -> None:
    Counter.seen = []
    first = train(_cfg(runs_dir, "total_steps=300", f"callbacks=[{HERE}:Counter]"), quiet=True)
    resume(first.run_dir, ["total_steps=600"], quiet=True)
    assert Counter.seen == [300, 600]


def test_callbacks_leave_training_bit_identical(runs_dir: Path) -> None:
    plain = train(_cfg(runs_dir / "a"), quiet=True)
    hooked = train(_cfg(runs_dir / "b", f"callbacks=[{HERE}:Idle]"), quiet=True)
    for a, b in zip(plain.agent.model.parameters(), hooked.agent.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_bad_callback_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "plasticrl.trainers.cli", "train", str(REPO / "configs/cartpole/dqn.yaml")]
        + ["callbacks=[nowhere.mod:Hook]", f"logging.dir={tmp_path}"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "callbacks[0]" in proc.stderr and "nowhere.mod" in proc.stderr
    assert not any(tmp_path.iterdir())
