"""The ``plasticrl`` command line: help, list, config, error paths and a smoke run (trainers/cli.py)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from plasticrl.trainers.checkpoint import load_checkpoint
from plasticrl.trainers.cli import main
from plasticrl.trainers.config import config_to_dict, load_config

from tests.conftest import TINY_DQN_OVERRIDES

REPO = Path(__file__).resolve().parents[2]


def tiny_yaml(path: Path, runs_dir: Path, **extra: object) -> Path:
    """The tiny CartPole config as a YAML file (overrides → nested dict)."""
    from plasticrl.trainers.config import apply_overrides

    data = apply_overrides({}, [*TINY_DQN_OVERRIDES, f"logging.dir={runs_dir}", "total_steps=300"])
    data.update(extra)
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PLASTICRL_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "plasticrl.trainers.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("plasticrl: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def main_or_raised(argv: list[str]) -> int | str:
    try:
        return main(argv)
    except Exception as exc:  # what the bug looks like: an exception escapes main
        return type(exc).__name__


@pytest.fixture
def config_file(tmp_path: Path, runs_dir: Path) -> Path:
    return tiny_yaml(tmp_path / "tiny.yaml", runs_dir)


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLASTICRL_DEBUG", raising=False)


# ---------------------------------------------------------------------------------------------
# Help, list, config


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--help"], "train"),
        (["train", "--help"], "--resume"),
        (["list", "--help"], "registered"),
        (["config", "--help"], "config"),
    ],
)
def test_help(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: plasticrl")
    assert fragment in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage: plasticrl" in capsys.readouterr().err


def test_list_prints_registered_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    words = {line.strip().split(" ")[0] for line in out.splitlines()}
    for name in (
        "dqn",
        "mlp",
        "minatar_cnn",
        "adam",
        "adamw",
        "sgd",
        "rmsprop",
        "breakout",
        "obs_noise",
        "every",
    ):
        assert name in words, name
    assert "breakout -> MinAtar/Breakout-v0" in out
    for section in ("agents:", "networks:", "optimizers:", "regularizers:", "env aliases:", "change kinds"):
        assert section in out


def test_config_prints_every_key(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", str(config_file), "seed=9"]) == 0
    lines = capsys.readouterr().out.splitlines()
    values = {line.split(" = ")[0]: line.split(" = ", 1)[1] for line in lines}
    assert values["seed"].startswith("9    # ")
    assert values["total_steps"].startswith("300")
    assert values["network.hidden_sizes"].startswith("[32, 32]")
    assert "optimizer.lr" in values and "checkpoint.replay_buffer" in values


def test_config_without_file_shows_defaults_with_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "seed=4"]) == 0
    out = capsys.readouterr().out
    assert "\nseed = 4    # " in "\n" + out
    assert "env.id = 'CartPole-v1'" in out


# ---------------------------------------------------------------------------------------------
# Error paths: exit 2, one line, no traceback


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["foo"], ["bad override 'foo'"]),
        (["a..b=1"], ["bad override"]),
        (["sed=1"], ["'sed'", "did you mean 'seed'"]),
        (["agent.gamma=2"], ["agent.gamma"]),
        (["env.id=CartPol-v1"], ["unknown env id 'CartPol-v1'", "did you mean 'CartPole-v1'"]),
        (["network.name=mpl"], ["unknown network 'mpl'", "did you mean 'mlp'", "minatar_cnn"]),
        (["optimizer.name=adm"], ["unknown optimizer 'adm'", "'adam'", "rmsprop"]),
        (["regularizers=[{name: no_such_reg, coef: 0.1}]"], ["unknown regularizer 'no_such_reg'"]),
        (["network.name=no_such_module:factory"], ["no_such_module"]),
    ],
)
def test_train_bad_input(
    config_file: Path,
    runs_dir: Path,
    overrides: list[str],
    fragments: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["train", str(config_file), *overrides]) == 2
    captured = capsys.readouterr()
    assert_one_line_error(captured.err, *fragments)
    assert list(runs_dir.iterdir()) == []  # names are checked before a run folder is made


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["train", str(missing)]) == 2
    assert_one_line_error(capsys.readouterr().err, "not found", str(missing))


def test_train_without_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train"]) == 2
    assert_one_line_error(capsys.readouterr().err, "missing CONFIG")


def test_resume_of_missing_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume", str(tmp_path / "no_run")]) == 2
    assert_one_line_error(capsys.readouterr().err, "not found")


def test_resume_of_dir_without_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume", str(tmp_path), "total_steps=10"]) == 2
    assert_one_line_error(capsys.readouterr().err, "no checkpoint")


@pytest.mark.parametrize(
    ("env_id", "fragment"),
    [("no_such_module:Env", "no_such_module"), ("Pendulum-v1", "Discrete action space")],
)
def test_start_up_failure_leaves_no_run_folder(
    config_file: Path, runs_dir: Path, env_id: str, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(config_file), f"env.id={env_id}"]) == 2
    assert_one_line_error(capsys.readouterr().err, fragment)
    assert list(runs_dir.iterdir()) == []


@pytest.mark.skipif(importlib.util.find_spec("Box2D") is not None, reason="needs Box2D to be missing")
def test_missing_env_dependency(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_or_raised(["train", str(config_file), "env.id=LunarLander-v3"]) == 2
    assert_one_line_error(capsys.readouterr().err, "Box2D")


def test_unhashable_agent_name(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["train", str(config_file), "agent.name=[dqn]"])
    except TypeError:
        code = 1
    assert code == 2
    assert_one_line_error(capsys.readouterr().err, "agent.name")


def test_subprocess_error_paths(config_file: Path, tmp_path: Path) -> None:
    proc = run_cli("train", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "not found")
    assert proc.stdout == ""
    proc = run_cli("train", str(config_file), "env.id=CartPol-v1")
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "did you mean 'CartPole-v1'")


# ---------------------------------------------------------------------------------------------
# Smoke run, resume and its errors


def test_smoke_train_in_subprocess(config_file: Path, runs_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = run_cli("train", str(config_file), "logging.name=smoke", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    run_dir = runs_dir / "smoke"
    assert proc.stdout.startswith(f"finished: 300 steps, 201 updates -> {run_dir}")

    expected = load_config(config_file, ["logging.name=smoke"])
    assert load_config(run_dir / "config.yaml") == expected
    state = load_checkpoint(run_dir / "checkpoint.pt")
    assert state["global_step"] == 300
    assert state["config"] == config_to_dict(expected)
    assert state["agent"]["updates"] == 201  # updates at steps 100..300

    events = list(run_dir.glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in (
        "charts/episodic_return",
        "charts/episodic_length",
        "charts/SPS",
        "losses/td_loss",
        "losses/q_values",
    ):
        assert tag in scalars, tag
    returns = acc.Scalars("charts/episodic_return")
    lengths = acc.Scalars("charts/episodic_length")
    assert returns and [e.value for e in returns] == [e.value for e in lengths]  # CartPole: +1 per step
    assert sum(e.value for e in lengths) <= 300
    assert [e.step for e in acc.Scalars("losses/td_loss")] == [100, 200, 300]
    assert all(e.value >= 0 for e in acc.Scalars("losses/td_loss"))
    text_tags = acc.Tags()["tensors"]
    assert any(t.startswith("hyperparameters") for t in text_tags), text_tags
    table = acc.Tensors(text_tags[0])[0].tensor_proto.string_val[0].decode()
    assert "|seed|0|" in table and "|total_steps|300|" in table and "|agent.batch_size|16|" in table


def test_train_and_resume_in_process(
    config_file: Path, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(config_file), "logging.name=r", "-q"]) == 0
    run_dir = runs_dir / "r"
    out = capsys.readouterr().out
    assert out.strip() == f"finished: 300 steps, 201 updates -> {run_dir}"

    # finished and not extended
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert_one_line_error(capsys.readouterr().err, "already at step 300", "total_steps")
    # a key that may not change on resume
    assert main(["train", "--resume", str(run_dir), "seed=1"]) == 2
    assert_one_line_error(capsys.readouterr().err, "cannot change 'seed' on resume", "total_steps")
    assert main(["train", "--resume", str(run_dir), "total_steps=400", "network.hidden_sizes=[8]"]) == 2
    assert_one_line_error(capsys.readouterr().err, "network.hidden_sizes")
    # both CONFIG and --resume
    assert main(["train", str(config_file), "--resume", str(run_dir)]) == 2
    assert_one_line_error(capsys.readouterr().err, "not both")
    # a new run with the same logging.name refuses to overwrite
    assert main(["train", str(config_file), "logging.name=r"]) == 2
    assert_one_line_error(capsys.readouterr().err, "already holds a run")
    assert load_checkpoint(run_dir / "checkpoint.pt")["global_step"] == 300

    assert main(["train", "--resume", str(run_dir), "total_steps=400", "-q"]) == 0
    assert capsys.readouterr().out.strip() == f"finished: 400 steps, 301 updates -> {run_dir}"
    assert load_checkpoint(run_dir / "checkpoint.pt")["global_step"] == 400
    assert load_config(run_dir / "config.yaml").total_steps == 400


def test_nonfinite_stop_exit_code(
    config_file: Path, runs_dir: Path, nan_regularizer: str, capsys: pytest.CaptureFixture[str]
) -> None:
    regularizers = f"regularizers=[{{name: {nan_regularizer}, coef: 1}}]"
    code = main(["train", str(config_file), "logging.name=nan", regularizers])
    assert code == 3
    err = capsys.readouterr().err
    assert "plasticrl: stopped: non-finite loss" in err
    assert (runs_dir / "nan" / "nonfinite_stop.pt").is_file()
    stop = load_checkpoint(runs_dir / "nan" / "nonfinite_stop.pt")
    assert torch.isfinite(stop["agent"]["q_net"]["1.weight"]).all()


def test_logging_dir_below_a_file(
    config_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main_or_raised(["train", str(config_file), f"logging.dir={blocker}/runs"]) == 2
    assert_one_line_error(capsys.readouterr().err, str(blocker))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_cuda_device(
    config_file: Path, runs_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main_or_raised(["train", str(config_file), "device=cuda"]) == 2
    assert_one_line_error(capsys.readouterr().err, "cuda")
    assert list(runs_dir.iterdir()) == []


def test_malformed_device_string_is_a_config_error() -> None:
    from plasticrl.trainers.config import ConfigError

    with pytest.raises(ConfigError, match="device"):
        load_config(None, ["device=cuda:abc"])
