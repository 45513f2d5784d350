"""The off-policy loop end to end: determinism, resume equivalence, NaN stops, checkpoints, lr schedules.

Every run here is the tiny CartPole config of ``tests/conftest.py`` (600 steps, well under a second).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from plasticrl.trainers import checkpoint as checkpoint_module
from plasticrl.trainers import off_policy
from plasticrl.trainers import session as session_module
from plasticrl.trainers.checkpoint import (
    CHECKPOINT_NAME,
    CHECKPOINT_VERSION,
    load_checkpoint,
    load_summary,
    save_checkpoint,
)
from plasticrl.trainers.config import ConfigError, ExperimentConfig, config_to_dict, load_config
from plasticrl.trainers.learning import make_lr_scheduler
from plasticrl.trainers.run import resume, train
from plasticrl.trainers.runfolder import make_run_dir, run_name

from tests.conftest import TINY_MINATAR_OVERRIDES

MakeConfig = Callable[..., ExperimentConfig]


def episodic_returns(run_dir: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("charts/episodic_return")]


def assert_tree_equal(a: Any, b: Any, path: str = "") -> None:
    """Exact equality of nested dicts/lists/tensors/arrays (optimizer and agent state dicts)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping) and set(a) == set(b), (path, set(a) ^ set(b))
        for key in a:
            assert_tree_equal(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_tree_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def assert_agents_equal(a: Any, b: Any) -> None:
    assert_tree_equal(a.q_net.state_dict(), b.q_net.state_dict(), "q_net")
    assert_tree_equal(a.target_net.state_dict(), b.target_net.state_dict(), "target_net")
    assert_tree_equal(a.optimizer.state_dict(), b.optimizer.state_dict(), "optimizer")
    assert a.rng.bit_generator.state == b.rng.bit_generator.state
    assert a.updates == b.updates


def params_equal(a: Any, b: Any) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.q_net.parameters(), b.q_net.parameters(), strict=True))


# ---------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_same_run_other_seed_differs(make_tiny_config: MakeConfig) -> None:
    a = train(make_tiny_config("logging.name=a"))
    b = train(make_tiny_config("logging.name=b"))
    c = train(make_tiny_config("logging.name=c", "seed=1"))
    for result in (a, b, c):
        assert result.status == "finished"
        assert result.global_step == 600
        assert result.updates == 501  # one per env step from step 100 to 600
    assert_agents_equal(a.agent, b.agent)
    returns_a, returns_b = episodic_returns(a.run_dir), episodic_returns(b.run_dir)
    assert len(returns_a) >= 5
    assert returns_a == returns_b
    assert a.recent_return == b.recent_return
    assert not params_equal(a.agent, c.agent)
    assert episodic_returns(c.run_dir) != returns_a


def test_replay_ratio_and_vector_envs_set_the_update_count(make_tiny_config: MakeConfig) -> None:
    result = train(make_tiny_config("env.num_envs=2", "agent.replay_ratio=0.25", "total_steps=400"))
    # 2 env steps per iteration; from step 100 to 400 that is 151 iterations × 0.5 credit → 75 updates
    assert result.global_step == 400
    assert result.updates == 75
    state = load_checkpoint(result.run_dir / CHECKPOINT_NAME)
    assert state["buffer"]["size"] == 400  # every sub-env transition is stored
    assert state["loop"]["update_credit"] == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------
# Resume equivalence


RESUME_VARIANTS = {
    "cartpole": (),
    "vector_double_polyak": (
        "env.num_envs=2",
        "agent.replay_ratio=0.25",
        "agent.double_dqn=true",
        "agent.tau=0.5",
        "optimizer.name=rmsprop",
        "agent.max_grad_norm=1",
    ),
    "minatar_breakout": (*TINY_MINATAR_OVERRIDES, "total_steps=400"),
}


@pytest.mark.parametrize("variant", list(RESUME_VARIANTS))
def test_resume_equals_uninterrupted_run(make_tiny_config: MakeConfig, variant: str) -> None:
    extra = RESUME_VARIANTS[variant]
    full = make_tiny_config(*extra, "logging.name=full")
    half_steps = full.total_steps // 2
    a = train(full)
    b1 = train(make_tiny_config(*extra, "logging.name=half", f"total_steps={half_steps}"))
    assert b1.global_step == half_steps and b1.updates > 0  # updates on both sides of the split
    b = resume(b1.run_dir, [f"total_steps={full.total_steps}"])
    assert b.status == "finished" and b.global_step == full.total_steps
    assert b.updates > b1.updates
    assert_agents_equal(a.agent, b.agent)
    state_a = load_checkpoint(a.run_dir / CHECKPOINT_NAME)
    state_b = load_checkpoint(b.run_dir / CHECKPOINT_NAME)
    assert_tree_equal(state_a["buffer"], state_b["buffer"], "buffer")
    assert_tree_equal(state_a["loop"], state_b["loop"], "loop")
    np.testing.assert_array_equal(state_a["obs"], state_b["obs"])
    assert episodic_returns(a.run_dir) == episodic_returns(b.run_dir)
    assert load_config(b.run_dir / "config.yaml").total_steps == full.total_steps


class _InterruptAfter:
    """Stands in for GracefulInterrupt: ``requested`` turns True after ``limit`` loop iterations."""

    limit = 0

    def __init__(self) -> None:
        self.checks = 0

    @property
    def requested(self) -> bool:
        self.checks += 1
        return self.checks > self.limit

    def __enter__(self) -> _InterruptAfter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def test_interrupted_run_resumes_identically_with_lr_schedule(
    make_tiny_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = ("optimizer.lr_schedule=linear", "optimizer.lr_end_factor=0.1")
    a = train(make_tiny_config(*extra, "logging.name=full"))
    with monkeypatch.context() as m:
        _InterruptAfter.limit = 250
        m.setattr(session_module, "GracefulInterrupt", _InterruptAfter)
        b1 = train(make_tiny_config(*extra, "logging.name=cut"))
    assert b1.status == "interrupted"
    assert b1.global_step == 250
    with pytest.raises(ConfigError, match="cannot change 'optimizer.lr'"):
        resume(b1.run_dir, ["optimizer.lr=0.1"])
    b = resume(b1.run_dir)  # same total_steps: an interrupted run continues as it was
    assert b.status == "finished"
    assert_agents_equal(a.agent, b.agent)
    assert_tree_equal(a.agent.scheduler.state_dict(), b.agent.scheduler.state_dict(), "scheduler")
    assert [g["lr"] for g in b.agent.optimizer.param_groups] == [pytest.approx(1e-3 * 0.1)] * len(
        b.agent.optimizer.param_groups
    )


def sigint_regularizer(register: Callable[..., None]) -> str:
    """Register ``test_sigint``: a zero penalty that raises SIGINT ``times`` times on call ``at_call``."""
    import signal

    from tests.conftest import ConstantPenalty

    class SigintPenalty(ConstantPenalty):
        def __init__(self, model: torch.nn.Module, at_call: int, times: int) -> None:
            super().__init__(model, [0.0], "test_sigint")
            self.at_call, self.times = at_call, times

        def __call__(self) -> torch.Tensor:
            if self.calls == self.at_call:
                for _ in range(self.times):
                    signal.raise_signal(signal.SIGINT)
            return super().__call__()

    def factory(model: torch.nn.Module, groups: list[dict[str, Any]], cfg: Any) -> SigintPenalty:
        return SigintPenalty(model, int(cfg.options["at_call"]), int(cfg.options.get("times", 1)))

    register("test_sigint", factory)
    return "test_sigint"


def test_ctrl_c_checkpoints_and_resumes_identically(
    make_tiny_config: MakeConfig,
    register_regularizer: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    import signal

    name = sigint_regularizer(register_regularizer)
    handler = signal.getsignal(signal.SIGINT)
    a = train(make_tiny_config("logging.name=full", f"regularizers=[{{name: {name}, coef: 1, at_call: -1}}]"))
    # SIGINT during update 100 (step 200): the loop finishes that iteration, checkpoints and stops
    sigint = f"regularizers=[{{name: {name}, coef: 1, at_call: 100}}]"
    b1 = train(make_tiny_config("logging.name=cut", sigint))
    assert b1.status == "interrupted"
    assert b1.global_step == 200 and b1.updates == 101
    assert "Interrupt: finishing this step" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is handler  # the previous handler is back
    assert load_checkpoint(b1.run_dir / CHECKPOINT_NAME)["global_step"] == 200
    b = resume(b1.run_dir)
    assert b.status == "finished"
    assert_tree_equal(a.agent.q_net.state_dict(), b.agent.q_net.state_dict(), "q_net")
    assert_tree_equal(a.agent.optimizer.state_dict(), b.agent.optimizer.state_dict(), "optimizer")


def test_second_ctrl_c_aborts_without_touching_the_checkpoint(
    make_tiny_config: MakeConfig, register_regularizer: Callable[..., None]
) -> None:
    import signal

    name = sigint_regularizer(register_regularizer)
    handler = signal.getsignal(signal.SIGINT)
    cfg = make_tiny_config(
        "logging.name=abort",
        "checkpoint.every=100",
        f"regularizers=[{{name: {name}, coef: 1, at_call: 150, times: 2}}]",
    )
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert signal.getsignal(signal.SIGINT) is handler
    run_dir = Path(cfg.logging.dir) / "abort"
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["global_step"] == 200  # the last periodic one
    assert not list(run_dir.glob("*.tmp"))


def test_resume_of_finished_run_needs_more_steps(make_tiny_config: MakeConfig) -> None:
    result = train(make_tiny_config("total_steps=150", "logging.name=done"))
    run_dir = result.run_dir
    before = (run_dir / CHECKPOINT_NAME).read_bytes()
    for overrides in ([], ["total_steps=150"], ["total_steps=100"]):
        with pytest.raises(ConfigError, match=r"already at step 150 of total_steps=\d+; pass a larger"):
            resume(run_dir, overrides)
    assert (run_dir / CHECKPOINT_NAME).read_bytes() == before
    with pytest.raises(ConfigError, match="cannot change 'seed' on resume"):
        resume(run_dir, ["seed=3", "total_steps=300"])
    with pytest.raises(ConfigError, match="not found"):
        resume(run_dir / "missing", ["total_steps=300"])


# ---------------------------------------------------------------------------------------------
# Non-finite losses


def test_nan_penalty_stops_and_keeps_last_good_checkpoint(
    make_tiny_config: MakeConfig, nan_regularizer: str
) -> None:
    # 250 good updates (steps 100..349); the update at step 350 sees NaN. Checkpoints every 200 steps.
    cfg = make_tiny_config(
        "checkpoint.every=200",
        "logging.name=nan",
        f"regularizers=[{{name: {nan_regularizer}, coef: 1.0, good_calls: 250}}]",
    )
    result = train(cfg)
    run_dir = result.run_dir
    assert result.status == "stopped: non-finite loss nan at update 250"
    assert result.global_step == 350
    assert result.updates == 250
    good = load_checkpoint(run_dir / CHECKPOINT_NAME)
    assert good["global_step"] == 200  # the step-200 checkpoint, not overwritten at the stop
    assert good["agent"]["updates"] == 101
    stop = load_checkpoint(run_dir / "nonfinite_stop.pt")
    assert stop["global_step"] == 350 and stop["agent"]["updates"] == 250
    agent = result.agent
    for name, tensor in agent.q_net.state_dict().items():
        assert torch.isfinite(tensor).all()
        assert torch.equal(stop["agent"]["q_net"][name], tensor)  # the last good parameters
    assert not all(torch.equal(good["agent"]["q_net"][k], v) for k, v in agent.q_net.state_dict().items())
    assert not list(run_dir.glob("*.tmp"))


def test_huge_learning_rate_stops_without_a_checkpoint(make_tiny_config: MakeConfig) -> None:
    result = train(make_tiny_config("optimizer.name=sgd", "optimizer.lr=1e30", "logging.name=huge"))
    assert result.status.startswith("stopped: non-finite loss")
    assert result.global_step < 600
    run_dir = result.run_dir
    assert not (run_dir / CHECKPOINT_NAME).exists()  # no checkpoint was written before the stop
    stop = load_checkpoint(run_dir / "nonfinite_stop.pt")
    assert stop["global_step"] == result.global_step
    for key, value in result.agent.q_net.state_dict().items():
        assert torch.equal(stop["agent"]["q_net"][key], value)


# ---------------------------------------------------------------------------------------------
# Checkpoint files


def test_checkpoint_round_trip_and_version(tmp_path: Path) -> None:
    path = save_checkpoint({"global_step": 7, "w": torch.arange(3)}, tmp_path / "sub" / "ck.pt")
    state = load_checkpoint(path)
    assert state["version"] == CHECKPOINT_VERSION
    assert state["global_step"] == 7 and torch.equal(state["w"], torch.arange(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["ck.json", "ck.pt"]  # + the sidecar


def test_summary_reads_the_sidecar_and_falls_back_to_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_checkpoint(
        {"global_step": 7, "config": {"a": [1, 2]}, "w": torch.arange(3)}, tmp_path / "ck.pt"
    )
    calls: list[Path] = []
    real_load = checkpoint_module.load_checkpoint
    monkeypatch.setattr(checkpoint_module, "load_checkpoint", lambda p: calls.append(p) or real_load(p))
    assert load_summary(path) == {"global_step": 7, "config": {"a": [1, 2]}}
    assert calls == []  # the sidecar answered: the checkpoint was not unpickled
    sidecar = tmp_path / "ck.json"
    sidecar.write_text(sidecar.read_text().replace('"global_step": 7', '"global_step": 5'))
    newer = {"version": CHECKPOINT_VERSION, "global_step": 8, "config": {}, "w": torch.arange(9)}
    torch.save(newer, path)  # a newer checkpoint than its sidecar (a crash between the two writes)
    assert load_summary(path) == {"global_step": 8, "config": {}}  # not the sidecar's stale 5
    save_checkpoint({"global_step": 9, "config": {"a": [1]}}, path)
    sidecar.unlink()
    assert load_summary(path) == {"global_step": 9, "config": {"a": [1]}} and len(calls) == 2
    assert load_summary(path) == {"global_step": 9, "config": {"a": [1]}} and len(calls) == 3


def test_failed_save_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint({"global_step": 1}, path)
    before = path.read_bytes()

    def broken_save(obj: object, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"half a checkpoint")  # a partial write, then the failure
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", CHECKPOINT_NAME]  # no temp file


def test_interrupted_save_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint({"global_step": 1}, path)

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"global_step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", CHECKPOINT_NAME]


def test_load_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "none.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match="is not a readable checkpoint"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state": 1}, foreign)
    with pytest.raises(ValueError, match="is not a plasticrl checkpoint"):
        load_checkpoint(foreign)


def test_checkpoint_is_self_describing(make_tiny_config: MakeConfig) -> None:
    result = train(make_tiny_config("total_steps=200", "logging.name=sd"))
    state = load_checkpoint(result.run_dir / CHECKPOINT_NAME)
    assert set(state) >= {"version", "config", "global_step", "agent", "buffer", "envs", "obs", "loop", "rng"}
    assert state["config"] == config_to_dict(load_config(result.run_dir / "config.yaml"))
    assert state["global_step"] == 200 and state["buffer"]["size"] == 200
    assert set(state["agent"]) >= {"q_net", "target_net", "optimizer", "rng", "updates"}


# ---------------------------------------------------------------------------------------------
# Learning-rate schedules


def test_linear_schedule_scales_every_group_by_the_same_factor() -> None:
    from plasticrl.plasticity.optimizers import OptimizerConfig

    w1, w2 = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([{"params": [w1], "lr": 1.0}, {"params": [w2], "lr": 0.1}], lr=1.0)
    scheduler = make_lr_scheduler(optimizer, OptimizerConfig(lr_schedule="linear", lr_end_factor=0.2), 4)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    seen = []
    for _ in range(7):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    factors = [1.0, 0.8, 0.6, 0.4, 0.2, 0.2, 0.2]
    assert seen == [[pytest.approx(f), pytest.approx(0.1 * f)] for f in factors]
    assert make_lr_scheduler(optimizer, OptimizerConfig(), 4) is None


def test_linear_schedule_in_a_run_decays_every_group(make_tiny_config: MakeConfig) -> None:
    cfg = make_tiny_config(
        "optimizer.lr_schedule=linear", "optimizer.lr_end_factor=0.5", "total_steps=300", "optimizer.lr=0.01"
    )
    setup = off_policy.build_off_policy(cfg)
    groups = setup.agent.optimizer.param_groups
    assert len(groups) >= 2 and {g["kind"] for g in groups} >= {"matrix", "vector"}
    setup.envs.close()
    result = train(cfg)
    # 200 planned updates (ceil((300 - 100) · 1.0)); 201 taken, the last at the end factor
    factor = 1.0 - 0.5 * min(result.updates / 200, 1.0)
    assert math.isclose(factor, 0.5)
    for group in result.agent.optimizer.param_groups:
        assert group["lr"] == pytest.approx(0.01 * factor)
        assert group["initial_lr"] == pytest.approx(0.01)


# ---------------------------------------------------------------------------------------------
# Autoreset in the loop and the progress line


def test_loop_stores_real_final_observations(make_tiny_config: MakeConfig) -> None:
    # TinyEnv: observation [t, episode], terminates at t = 3 (+ seed offset per sub-env: 3 and 4).
    cfg = make_tiny_config(
        "env.id=tests.envs.test_make:TinyEnv",
        "env.num_envs=2",
        "total_steps=40",
        "agent.learning_starts=20",
        "agent.batch_size=4",
        "logging.name=tiny_env",
    )
    result = train(cfg)
    buffer = load_checkpoint(result.run_dir / CHECKPOINT_NAME)["buffer"]
    assert buffer["storage"] == "float32" and buffer["size"] == 40
    obs, next_obs, terminated = buffer["obs"], buffer["next_obs"], buffer["terminated"]
    np.testing.assert_array_equal(next_obs[:, 0], obs[:, 0] + 1)  # never the reset observation [0, ep + 1]
    np.testing.assert_array_equal(next_obs[:, 1], obs[:, 1])
    lengths = np.tile([3.0, 4.0], 20)
    np.testing.assert_array_equal(terminated, (next_obs[:, 0] == lengths).astype(np.float32))
    assert terminated.sum() == 20 // 3 + 20 // 4
    # the logged episodic returns are the stored rewards summed per episode (reward 1 or 2 per step)
    expected, running = [], [0.0, 0.0]
    for k in range(20):
        for i in range(2):
            running[i] += float(buffer["rewards"][2 * k + i])
            if terminated[2 * k + i]:
                expected.append((2 * (k + 1), running[i]))
                running[i] = 0.0
    # episodes ending at one vector step are one point, their mean (Note [One point per step])
    per_step: dict[int, list[float]] = {}
    for step, ret in expected:
        per_step.setdefault(step, []).append(ret)
    assert any(len(rets) == 2 for rets in per_step.values())  # the case the mean is for occurs
    assert episodic_returns(result.run_dir) == [(step, sum(r) / len(r)) for step, r in per_step.items()]


def test_progress_prints_milestones_on_a_pipe() -> None:
    import io

    from plasticrl.trainers.progress import Progress

    class Source:
        ret: float | None = None

        def mean_return(self) -> float | None:
            return self.ret

        def progress_text(self) -> str:
            return ""

    source = Source()
    stream = io.StringIO()
    progress = Progress(100, enabled=True, stream=stream)
    for step in range(1, 101):
        source.ret = None if step < 50 else 1.5
        progress.update(step, source)
    progress.close(100, source)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 20  # every 5 %, the final line not repeated
    assert lines[0].startswith("         5/100 (  5.0%)") and lines[0].endswith("| return -")
    assert lines[-1].startswith("       100/100 (100.0%)") and lines[-1].endswith("| return 1.50")
    quiet = io.StringIO()
    silent = Progress(100, enabled=False, stream=quiet)
    source.ret = 1.0
    silent.update(50, source)
    silent.close(100, source)
    assert quiet.getvalue() == ""


# ---------------------------------------------------------------------------------------------
# Run folders


def test_run_name_and_folder(tiny_config: ExperimentConfig, runs_dir: Path) -> None:
    name = run_name(tiny_config)
    env, agent, opt, net, seed, stamp = name.split("__")
    assert (env, agent, opt, net, seed) == ("CartPole-v1", "dqn", "adam", "mlp", "s0")
    assert len(stamp) == len("20250101-120000")
    first = make_run_dir(tiny_config)
    second = make_run_dir(tiny_config)  # same second (usually): a suffix, never the same folder
    assert first != second and first.parent == second.parent == runs_dir
    assert load_config(first / "config.yaml") == tiny_config
    custom = load_config(None, ["env.id=tests.envs.test_make:TinyEnv", "logging.name=null"])
    assert run_name(custom).startswith("tests.envs.test_make-TinyEnv__")


# ---------------------------------------------------------------------------------------------
# Known bugs (strict xfails: they start failing, on purpose, once the bug is fixed)


def scalar_steps(run_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


def test_resumed_curves_keep_the_point_at_the_checkpoint_step(make_tiny_config: MakeConfig) -> None:
    b1 = train(make_tiny_config("logging.name=half", "total_steps=300"))
    assert scalar_steps(b1.run_dir, "losses/td_loss") == [100, 200, 300]
    resume(b1.run_dir, ["total_steps=600"])
    assert scalar_steps(b1.run_dir, "losses/td_loss") == [100, 200, 300, 400, 500, 600]


def test_new_run_does_not_reuse_a_stopped_runs_folder(make_tiny_config: MakeConfig) -> None:
    stopped = train(make_tiny_config("optimizer.name=sgd", "optimizer.lr=1e30", "logging.name=x"))
    assert stopped.status.startswith("stopped")
    with pytest.raises(ConfigError, match="already holds a run"):
        train(make_tiny_config("logging.name=x"))


def test_hyperparameter_table_lists_every_key(make_tiny_config: MakeConfig) -> None:
    from plasticrl.trainers.config import describe_config
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_tiny_config("total_steps=10", "logging.name=hp")
    result = train(cfg)
    acc = EventAccumulator(str(result.run_dir))
    acc.Reload()
    table = acc.Tensors("hyperparameters/text_summary")[0].tensor_proto.string_val[0].decode()
    rows = {line.split("|")[1] for line in table.splitlines()[2:]}
    missing = [key for key, _, _ in describe_config(cfg) if key not in rows]
    assert missing == []


def test_exploration_and_replay_generators_are_independent(tiny_config: ExperimentConfig) -> None:
    setup = off_policy.build_off_policy(tiny_config)
    setup.envs.close()
    assert setup.agent.rng.bit_generator.state != setup.buffer.rng.bit_generator.state
