"""Bad input: one clean line, every time (issue 17).

Each family of bad input ends ``plasticrl`` with exit code 2 and one line on stderr that names the
bad value, where it came from (file or override) and the valid choices or range, and writes
nothing. The commands run in-process (``main(argv)``) in a fresh working directory that holds the
user's own modules.
"""

from __future__ import annotations

import dataclasses
import errno
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from plasticrl.agents.dqn import DQNConfig
from plasticrl.plasticity.options import RANGE, ConfigError, Range
from plasticrl.trainers import checkpoint as checkpoint_module
from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, load_checkpoint
from plasticrl.trainers.cli import main
from plasticrl.trainers.config import (
    CheckpointConfig,
    EvalConfig,
    ExperimentConfig,
    LoggingConfig,
    config_from_dict,
    load_config,
)

USER_MODULE = '''
import gymnasium as gym
import numpy as np


class WrongDtypeEnv(gym.Env):
    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(4, np.float64), {}

    def step(self, action):
        return np.zeros(4, np.float64), 0.0, False, False, {}


class WrongShapeEnv(WrongDtypeEnv):
    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(5, np.float32), {}

    def step(self, action):
        return np.zeros((4, 1), np.float32), 0.0, False, False, {}


class StepShapeEnv(WrongDtypeEnv):
    """Right at reset, wrong from the first step on."""

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(4, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), 0.0, False, False, {}


def no_args_network():
    return None


def network_of_three(observation_space, action_space, cfg):
    import torch
    return torch.nn.Linear(4, 2)


def one_arg_optimizer(params):
    return None


def callback_needing_args(a, b):
    return None


class NotAWrapper:
    def __init__(self):
        pass


NOT_CALLABLE = 3
'''

TINY_YAML = """\
env: {id: CartPole-v1}
total_steps: 200
agent: {learning_starts: 50, buffer_size: 500, batch_size: 16}
network: {hidden_sizes: [16]}
logging: {progress: false}
checkpoint: {every: 100}
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory with the user's module ``userparts.py`` and ``tiny.yaml``."""
    import sys

    (tmp_path / "userparts.py").write_text(USER_MODULE)
    (tmp_path / "tiny.yaml").write_text(TINY_YAML)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("userparts", None)


def _listing(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if "__pycache__" not in p.parts}


def bad(argv: list[str], root: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``plasticrl *argv``; assert exit 2, one stderr line and nothing written; return the line."""
    capsys.readouterr()
    before = _listing(root)
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert _listing(root) == before, sorted(map(str, _listing(root) - before))
    assert lines[0].startswith("plasticrl: error: ")
    return lines[0]


# ---------------------------------------------------------------------------------------------
# module:attr that imports but is not usable


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "network.name=userparts:NOT_CALLABLE",
            r"is not callable \(it is int 3\); a network factory",
        ),
        ("network.name=userparts:no_args_network", r"has the signature \(\), but a network factory"),
        ("optimizer.name=userparts:NOT_CALLABLE", r"is not callable \(it is int 3\); a optimizer factory"),
        ("optimizer.name=userparts:one_arg_optimizer", r"signature \(params\), but a optimizer factory"),
        ("env.id=userparts:NOT_CALLABLE", r"not callable"),
        ("callbacks=[userparts:NOT_CALLABLE]", r"callbacks\[0\]: 'userparts:NOT_CALLABLE' is not a class"),
        ("callbacks=[userparts:callback_needing_args]", r"callbacks\[0\]"),
        (
            "env.wrappers=[{name: userparts:NOT_CALLABLE}]",
            r"wrapper 'userparts:NOT_CALLABLE' is not callable",
        ),
        ("env.wrappers=[{name: userparts:NotAWrapper}]", r"env.wrappers\[0\]"),
    ],
)
def test_module_attr_that_is_not_usable(
    override: str, expected: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = bad(["train", "tiny.yaml", override], workdir, capsys)
    assert f"command-line override {override!r}" in line  # the source
    assert re.search(expected, line), line


def test_a_module_attr_of_the_right_signature_is_accepted(workdir: Path) -> None:
    from plasticrl.trainers.run import check_names

    check_names(load_config("tiny.yaml", ["network.name=userparts:network_of_three"]))


# ---------------------------------------------------------------------------------------------
# Ranges: one declared mechanism, checked for every key that declares one


def _ranged_fields() -> Iterator[tuple[str, type, dataclasses.Field[Any], Range]]:
    sections = {"": ExperimentConfig, "agent": DQNConfig, "logging": LoggingConfig}
    sections |= {"eval": EvalConfig, "checkpoint": CheckpointConfig}
    for prefix, cls in sections.items():
        for f in dataclasses.fields(cls):
            spec = f.metadata.get(RANGE)
            if spec is not None:
                yield prefix, cls, f, spec


def _outside(spec: Range) -> float:
    if spec.low is not None:
        return spec.low if spec.low_open else spec.low - 1
    assert spec.high is not None
    return spec.high if spec.high_open else spec.high + 1


RANGED = list(_ranged_fields())


def test_the_range_mechanism_covers_the_numeric_keys() -> None:
    keys = {f"{p}.{f.name}".lstrip(".") for p, _, f, _ in RANGED}
    assert {"agent.gamma", "agent.replay_ratio", "total_steps", "seed", "eval.epsilon"} <= keys
    assert len(keys) >= 15


@pytest.mark.parametrize(("prefix", "cls", "f", "spec"), RANGED, ids=lambda v: getattr(v, "name", None))
def test_every_declared_range_is_enforced_with_its_interval(
    prefix: str, cls: type, f: dataclasses.Field[Any], spec: Range
) -> None:
    key = f"{prefix}.{f.name}".lstrip(".")
    value = _outside(spec)
    if f.type in ("int", "int | None"):
        value = int(value)
    override = f"{key}={value}"
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert message.startswith(f"command-line override {override!r}: invalid {key}: "), message
    assert f"must be {spec}" in message
    assert info.value.key == key
    with pytest.raises(ValueError, match=rf"invalid {key}"):  # built in Python, too
        cls(**{f.name: value})


def test_gamma_2_names_the_interval(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = bad(["train", "tiny.yaml", "agent.gamma=2"], workdir, capsys)
    assert line == (
        "plasticrl: error: command-line override 'agent.gamma=2': invalid agent.gamma: 2.0 "
        "(agent.gamma must be in [0, 1])"
    )
    (workdir / "g.yaml").write_text("agent:\n  gamma: 2\n")
    assert bad(["train", "g.yaml"], workdir, capsys).startswith(
        "plasticrl: error: g.yaml: invalid agent.gamma"
    )


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="expected a finite number"):
        load_config(None, [f"optimizer.lr={value}"])


def test_the_error_is_blamed_on_the_override_at_fault() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["agent.replay_ratio=0", "agent.learning_starts=200"])
    assert str(info.value).startswith("command-line override 'agent.replay_ratio=0': ")
    with pytest.raises(ConfigError) as info:
        load_config(None, ["agent.buffer_size=8", "agent.learning_starts=200", "agent.batch_size=16"])
    assert str(info.value).startswith("command-line override 'agent.buffer_size=8': ")


# ---------------------------------------------------------------------------------------------
# Config files


def test_malformed_yaml_keeps_line_and_column(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "m.yaml").write_text("agent:\n  gamma: 0.9\n lr: 3\n")
    line = bad(["train", "m.yaml"], workdir, capsys)
    assert "m.yaml: invalid YAML: line 3, column 2: " in line
    line = bad(["train", "tiny.yaml", "network.hidden_sizes=[16"], workdir, capsys)
    assert "cannot parse the value: line 1, column 4: expected ',' or ']'" in line


def test_binary_and_directory_config_paths(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "blob.yaml").write_bytes(bytes(range(256)))
    assert bad(["train", "blob.yaml"], workdir, capsys).endswith(
        "blob.yaml: not a YAML file (binary content)"
    )
    (workdir / "latin.yaml").write_bytes("seed: 0\n# caf\xe9\n".encode("latin-1"))
    assert "latin.yaml: not UTF-8 text (byte 0xe9 on line 2)" in bad(["train", "latin.yaml"], workdir, capsys)
    (workdir / "folder").mkdir()
    line = bad(["train", "folder"], workdir, capsys)
    assert line.endswith("config path 'folder' is a directory, not a YAML file")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_an_empty_yaml_file_is_an_error(text: str, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "empty.yaml").write_text(text)
    assert "empty.yaml: the file is empty (no keys)" in bad(["train", "empty.yaml"], workdir, capsys)


def test_a_missing_base_names_the_file_that_names_it(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "child.yaml").write_text("base: nowhere.yaml\nseed: 1\n")
    line = bad(["train", "child.yaml"], workdir, capsys)
    assert "config file 'nowhere.yaml' (the 'base' of" in line and "child.yaml) not found" in line


def test_a_key_that_needs_another_key(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = bad(["train", "tiny.yaml", "nonstationary.every=1000"], workdir, capsys)
    assert "command-line override 'nonstationary.every=1000'" in line
    assert "nonstationary.every does not apply to nonstationary.kind null (stationary)" in line


def test_a_usage_error_is_one_line(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "tiny.yaml", "--bogus"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "unrecognized arguments: --bogus" in err and "usage: plasticrl" in err


# ---------------------------------------------------------------------------------------------
# Envs that break their declared observation space


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ("WrongDtypeEnv", "reset() returned observations of dtype float64 where the space declares float32"),
        ("WrongShapeEnv", "reset() returned observations of shape (5,) where the space declares (4,)"),
        ("StepShapeEnv", "step() returned observations of shape (3,) where the space declares (4,)"),
    ],
)
def test_an_env_off_its_space_is_refused_before_any_folder(
    env: str, expected: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = bad(["train", "tiny.yaml", f"env.id=userparts:{env}"], workdir, capsys)
    assert f"command-line override 'env.id=userparts:{env}'" in line
    assert expected in line, line
    assert not (workdir / "runs").exists()


# ---------------------------------------------------------------------------------------------
# Run names that escape logging.dir


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/tmp/plasticrl_escape", "''", ".", "a/./b"])
def test_run_names_that_escape_logging_dir(
    name: str, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = bad(["train", "tiny.yaml", f"logging.name={name}"], workdir, capsys)
    assert "invalid logging.name" in line and "must name a folder inside 'runs'" in line


def test_a_nested_run_name_inside_logging_dir_is_fine() -> None:
    assert config_from_dict({"logging": {"name": "study/run1"}}).logging.name == "study/run1"


def test_a_sweep_name_that_escapes_its_dir(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "s.yaml").write_text("name: ../escaped\nbase: tiny.yaml\nseeds: [0]\n")
    line = bad(["sweep", "s.yaml", "--dry-run"], workdir, capsys)
    assert "'name' must be one folder name inside 'dir'" in line


# ---------------------------------------------------------------------------------------------
# Corrupted or foreign checkpoints on --resume


@pytest.fixture
def finished_run(workdir: Path) -> Path:
    assert main(["train", "tiny.yaml", "logging.name=done"]) == 0
    return workdir / "runs" / "done"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("garbage", "is not a readable checkpoint (truncated, corrupted or not a torch file"),
        ("truncated", "is not a readable checkpoint (truncated, corrupted or not a torch file"),
        ("foreign", "is not a plasticrl checkpoint: it holds a dict without a 'version' key"),
        ("list", "is not a plasticrl checkpoint: it holds a list"),
        ("future", "is a plasticrl checkpoint of format version 99; this plasticrl reads version 1"),
        ("missing", "has no checkpoint.pt (stopped before its first checkpoint?)"),
    ],
)
def test_bad_checkpoints_on_resume(
    content: str,
    expected: str,
    finished_run: Path,
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = workdir / "runs" / "broken"
    folder.mkdir()
    path = folder / CHECKPOINT_NAME
    good = (finished_run / CHECKPOINT_NAME).read_bytes()
    if content == "garbage":
        path.write_bytes(bytes(range(256)) * 16)
    elif content == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif content == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    elif content == "list":
        torch.save([1, 2], path)
    elif content == "future":
        torch.save({**load_checkpoint(finished_run / CHECKPOINT_NAME), "version": 99}, path)
    line = bad(["train", "--resume", str(folder), "total_steps=400"], workdir, capsys)
    assert expected in line, line
    assert not (folder / ".lock").exists()  # the folder is left as it was


# ---------------------------------------------------------------------------------------------
# A full disk during a checkpoint write


def test_a_full_disk_says_the_previous_checkpoint_is_intact(
    workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = checkpoint_module.torch.save
    calls = {"n": 0}

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the checkpoint at step 200: half written, then the disk is full
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    code = main(["train", "tiny.yaml", "logging.name=full", "total_steps=300"])
    err = capsys.readouterr().err.strip().splitlines()
    run_dir = Path("runs") / "full"
    assert code == 2 and len(err) == 1, err
    assert err[0] == (
        "plasticrl: error: could not write checkpoint.pt at step 200 (No space left on device); its last "
        f"checkpoint ({run_dir / CHECKPOINT_NAME}, step 100) is intact; free space and resume with: "
        f"plasticrl train --resume {run_dir}"
    )
    monkeypatch.setattr(checkpoint_module.torch, "save", real)  # space freed
    assert load_checkpoint(workdir / run_dir / CHECKPOINT_NAME)["global_step"] == 100
    assert not [p for p in (workdir / run_dir).iterdir() if p.name.endswith(".tmp")]
    assert main(["train", "--resume", str(run_dir)]) == 0  # and the advice works
    assert load_checkpoint(workdir / run_dir / CHECKPOINT_NAME)["global_step"] == 300


def test_dqn_config_checks_still_reject_a_buffer_smaller_than_a_batch() -> None:
    with pytest.raises(ConfigError, match=r"agent.buffer_size must be >= agent.batch_size=64"):
        DQNConfig(batch_size=64, buffer_size=32)


def test_the_range_type_reads_as_the_message_says() -> None:
    assert [str(Range(0, 1)), str(Range(0, 1, low_open=True)), str(Range(0, low_open=True))] == [
        "in [0, 1]",
        "in (0, 1]",
        "> 0",
    ]
    assert 0 not in Range(0, 1, low_open=True) and 1 in Range(0, 1, low_open=True)
    assert float("nan") not in Range() and True not in Range(0, 1)
