"""``plasticrl sweep``: sweep files, grid expansion, naming, skip, resume, restart, failures."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import yaml
from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, load_checkpoint
from plasticrl.trainers.cli import main
from plasticrl.trainers.config import ConfigError, apply_overrides, parse_override
from plasticrl.trainers.experiments.sweep import plan_sweep
from plasticrl.trainers.experiments.sweep_file import (
    expand_grid,
    format_value,
    load_sweep,
    sanitize,
    with_changes,
)

REPO = Path(__file__).resolve().parents[3]

TINY: tuple[str, ...] = (
    "env.id=CartPole-v1",
    "total_steps=200",
    "agent.learning_starts=50",
    "agent.buffer_size=500",
    "agent.batch_size=16",
    "agent.target_update_every=50",
    "agent.eps_decay_steps=100",
    "network.hidden_sizes=[16]",
    "logging.every=50",
    "logging.progress=false",
    "checkpoint.every=0",
)
"""A CartPole DQN run of a fraction of a second (most of a child's time is importing torch)."""

SUMMARY = re.compile(
    r"^sweep (\S+): (\d+) ran, (\d+) skipped \(complete\), (\d+) resumed, (\d+) failed", re.M
)


def broken_env(**kwargs: Any) -> gym.Env:
    """An env factory that fails at construction
    (``env.id=tests.trainers.experiments.test_sweep:broken_env``)."""
    raise RuntimeError("broken_env: cannot build this environment")


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Children run in the sweep's working directory; ``tests.trainers.experiments.test_sweep`` must import
    there."""
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("PLASTICRL_DEBUG", raising=False)


@pytest.fixture
def base_file(tmp_path: Path) -> Path:
    """The tiny CartPole config as a preset next to the sweep file."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(apply_overrides({}, TINY)))
    return path


def write_sweep(tmp_path: Path, stem: str = "sw", **data: Any) -> Path:
    """A sweep file ``<tmp_path>/<stem>.yaml`` (base ``tiny.yaml``, dir ``<tmp_path>/runs``) with ``data``."""
    content: dict[str, Any] = {"base": "tiny.yaml", "dir": str(tmp_path / "runs"), **data}
    path = tmp_path / f"{stem}.yaml"
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def summary(out: str) -> tuple[int, int, int, int]:
    """(ran, skipped, resumed, failed) of the summary line in ``out``."""
    match = SUMMARY.search(out)
    assert match is not None, out
    return int(match[2]), int(match[3]), int(match[4]), int(match[5])


# ----------------------------------------------------------------------------- pure parts


def test_expand_grid_is_the_cartesian_product_in_file_order() -> None:
    cells = expand_grid([("optimizer.name", ["adam", "adamo"]), ("optimizer.lr", [1e-3, 3e-4, 1e-4])])
    assert [name for name, _ in cells] == [
        "optimizer.name=adam,optimizer.lr=0.001",
        "optimizer.name=adam,optimizer.lr=0.0003",
        "optimizer.name=adam,optimizer.lr=0.0001",
        "optimizer.name=adamo,optimizer.lr=0.001",
        "optimizer.name=adamo,optimizer.lr=0.0003",
        "optimizer.name=adamo,optimizer.lr=0.0001",
    ]
    # The override texts parse back to exactly the grid values.
    assert [parse_override(o) for o in cells[4][1]] == [
        (["optimizer", "name"], "adamo"),
        (["optimizer", "lr"], 3e-4),
    ]
    assert expand_grid([]) == [("", ())]


def test_values_become_safe_folder_names() -> None:
    assert format_value([16, 16]) == "[16,16]"
    assert format_value(True) == "true"
    assert sanitize("network.hidden_sizes=[16,16]") == "network.hidden_sizes=-16,16-"
    assert sanitize("env.id=pkg.mod:Env/v1") == "env.id=pkg.mod-Env-v1"
    assert sanitize("..") == ""
    (name, overrides) = expand_grid([("network.hidden_sizes", [[8, 8]])])[0]
    assert "/" not in name and name == "network.hidden_sizes=-8,8-"
    assert parse_override(overrides[0]) == (["network", "hidden_sizes"], [8, 8])


# ----------------------------------------------------------------------------- planning


def test_plan_expands_grid_times_seeds_with_deterministic_names(tmp_path: Path, base_file: Path) -> None:
    path = write_sweep(
        tmp_path,
        seeds=[0, 1, 2],
        overrides=["total_steps=300", "optimizer.lr=0.002"],
        grid={"optimizer.name": ["adam", "adamo"]},
    )
    runs = plan_sweep(load_sweep(path))
    assert [r.name for r in runs] == [
        f"sw/optimizer.name={opt}__s{seed}" for opt in ("adam", "adamo") for seed in (0, 1, 2)
    ]
    assert [r.name for r in plan_sweep(load_sweep(path))] == [r.name for r in runs]  # stable
    for run in runs:
        leaf = run.name.split("/", 1)[1]
        assert run.action == "start" and not run.stale_dir
        assert run.run_dir == tmp_path / "runs" / "sw" / leaf
        assert run.log_path == tmp_path / "runs" / "sw" / f"{leaf}.log"
        assert run.config.logging.dir == str(tmp_path / "runs" / "sw")
        assert run.config.logging.name == leaf
        assert run.config.total_steps == 300 and run.config.optimizer.lr == 0.002
        assert run.config.optimizer.name == leaf.split("=")[1].split("__")[0]
        assert run.config.seed == int(leaf[-1])
        assert run.config.network.hidden_sizes == (16,)  # from the base preset
    assert not (tmp_path / "runs").exists()  # planning writes nothing


def test_methods_are_presets_or_overrides_and_lead_the_run_names(tmp_path: Path, base_file: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"base": "tiny.yaml", "optimizer": {"lr": 0.005}}))
    path = write_sweep(
        tmp_path,
        methods={
            "adamo": ["optimizer.name=adamo"],
            "fast": "other.yaml",
            "both": {"preset": "other.yaml", "overrides": ["optimizer.lr=0.007"]},
        },
        seeds=[0, 1],
        overrides=["total_steps=300"],
        grid={"agent.batch_size": [8, 16]},
        resources={"cpus": 2, "gpus": 0.25},
    )
    spec = load_sweep(path)
    assert spec.resources == {"cpus": 2.0, "gpus": 0.25}
    runs = plan_sweep(spec)
    assert [r.name.split("/", 1)[1] for r in runs] == [
        f"{m}__agent.batch_size={b}__s{s}" for m in ("adamo", "fast", "both") for b in (8, 16) for s in (0, 1)
    ]
    for run in runs:
        assert run.method == run.name.split("/")[1].split("__")[0]
        assert run.config.total_steps == 300 and run.config.agent.batch_size in (8, 16)
        if run.method == "adamo":
            assert run.preset == base_file and run.config.optimizer.name == "adamo"
            assert run.overrides[:2] == ("total_steps=300", "optimizer.name=adamo")  # sweep's, method's
        elif run.method == "fast":
            assert run.preset == other and run.config.optimizer.lr == 0.005
        else:
            assert run.preset == other and run.config.optimizer.lr == 0.007
    no_grid = write_sweep(tmp_path, "ng", methods={"a": "tiny.yaml"}, seeds=[4])
    assert [r.name for r in plan_sweep(load_sweep(no_grid))] == ["ng/a__s4"]


def test_the_command_line_changes_seeds_name_and_adds_overrides(
    tmp_path: Path, base_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_sweep(tmp_path, seeds=[0, 1, 2], overrides=["total_steps=300"])
    argv = ["sweep", str(path), "total_steps=500", "--seeds", "4,5", "--name", "small", "--dry-run"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["start   small/s4  (500 steps)", "start   small/s5  (500 steps)"]
    spec = with_changes(load_sweep(path), seeds="7", overrides=["optimizer.lr=0.01"], name="a b")
    assert spec.seeds == (7,) and spec.name == "a-b"
    assert spec.overrides == ("total_steps=300", "optimizer.lr=0.01")
    for seeds in ("", "1,1", "-1", "x"):
        with pytest.raises(ConfigError, match="--seeds"):
            with_changes(spec, seeds=seeds)
    with pytest.raises(ConfigError, match="'seed' is set by the sweep"):
        with_changes(spec, overrides=["seed=3"])
    moved = with_changes(spec, folder=str(tmp_path / "results"))  # --dir: another parent folder
    assert moved.sweep_dir == tmp_path / "results" / "a-b"
    assert plan_sweep(moved)[0].config.logging.dir == str(tmp_path / "results" / "a-b")
    with pytest.raises(ConfigError, match="--dir"):
        with_changes(spec, folder=" ")


@pytest.mark.parametrize(
    "path",
    sorted((REPO / "configs").glob("sweeps/*.yaml")) + sorted((REPO / "configs").glob("studies/*.yaml")),
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_shipped_sweep_files_plan_every_run(path: Path, tmp_path: Path) -> None:
    spec = dataclasses.replace(load_sweep(path), dir=tmp_path)
    runs = plan_sweep(spec)  # resolves and validates every run's config and names
    assert runs and all(r.action == "start" for r in runs)
    assert len(runs) == len(spec.methods) * len(spec.seeds or (0,)) * len(expand_grid(spec.grid))
    if path.name.startswith("continual_minatar_ppo"):  # the AdamO protocol: seven arms, seeds from 26
        assert len(spec.methods) == 7 and spec.seeds and spec.seeds[0] == 26
    elif path.name == "plasticity_loss_adam.yaml":  # the continual run and a fresh control per task k > 0
        starts = sorted(r.config.nonstationary.start_task for r in runs)
        assert starts == sorted([0, *range(1, 8)] * len(spec.seeds or (0,)))
        assert {r.config.total_steps for r in runs if r.config.nonstationary.start_task} == {2097152}
    elif path.name == "adamo_lambda_protocol.yaml":  # AdamO's lambda, on seeds that are not evaluated
        assert spec.seeds == (0, 1, 2) and {r.config.optimizer.name for r in runs} == {"adamo"}
    elif path.name == "coupled_lambda_protocol.yaml":  # the coupled penalty's λ, AdamO's λ setting
        assert spec.seeds == (0, 1, 2)
        coefs = sorted(r.config.regularizers[0].coef for r in runs)
        assert coefs == sorted([0.01, 0.05, 0.25] * 3)
        assert {r.config.total_steps for r in runs} == {8388608}
    elif path.name == "protocol_arms.yaml":  # the paper's arms but Adam (plasticity_loss_adam's runs)
        assert len(spec.methods) == 7 and spec.seeds == tuple(range(26, 34))
    elif path.parent.name == "studies":  # nine methods x five seeds, each one preset or one change away
        assert len(spec.methods) == 9 and spec.seeds == (0, 1, 2, 3, 4)
        assert len({r.config.nonstationary.kind for r in runs}) == 1


def test_sweep_name_defaults_to_the_file_stem_and_seeds_to_the_base_seed(
    tmp_path: Path, base_file: Path
) -> None:
    (tmp_path / "seeded.yaml").write_text("base: tiny.yaml\nseed: 5\n")
    path = write_sweep(tmp_path, "my sweep", base="seeded.yaml")
    spec = load_sweep(path)
    assert spec.name == "my-sweep" and spec.seeds is None
    runs = plan_sweep(spec)
    assert [r.name for r in runs] == ["my-sweep/s5"] and runs[0].config.seed == 5
    named = write_sweep(tmp_path, "other", name="custom", seeds=[1])
    assert [r.name for r in plan_sweep(load_sweep(named))] == ["custom/s1"]


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        ({"sedes": [0]}, ["unknown key 'sedes'"]),
        ({"grid": {"optimizer.name": []}}, ["grid key 'optimizer.name'", "empty list"]),
        ({"grid": {"optimizer.name": "adam"}}, ["grid key 'optimizer.name'", "expected a list"]),
        ({"grid": ["optimizer.name=adam"]}, ["'grid' must map"]),
        ({"grid": {"seed": [1, 2]}}, ["'seed' is set by the sweep"]),
        ({"seeds": 3}, ["'seeds' must be a non-empty list"]),
        ({"seeds": [0, -1]}, ["'seeds': -1"]),
        ({"seeds": [1, 1]}, ["repeats a seed"]),
        ({"overrides": "total_steps=5"}, ["'overrides' must be a list"]),
        ({"overrides": ["total_steps"]}, ["bad override 'total_steps'"]),
        ({"overrides": ["logging.dir=x"]}, ["'logging.dir' is set by the sweep"]),
        ({"base": "missing.yaml"}, ["base preset", "missing.yaml"]),
        ({"name": ""}, ["'name' must be a non-empty string"]),
        ({"overrides": ["optimizer.lr=fast"]}, ["sweep 'sw'", "override 'optimizer.lr=fast'"]),
        ({"seeds": [0], "overrides": ["optimizer.lr=fast"]}, ["sweep run 'sw/s0'", "optimizer.lr"]),
        ({"grid": {"optimizer.name": ["adam", "adma"]}}, ["sweep run 'sw/optimizer.name=adma__s0'", "adma"]),
        ({"grid": {"env.kwargs": [{"x": "a b"}, {"x": "a-b"}]}}, ["same folder name"]),
        ({"grid": {"network.hidden_sizes": [[16], "[16]"]}}, ["repeated value"]),
        ({"base": None}, ["needs 'base' (a preset) or 'methods'"]),
        ({"methods": ["adam"]}, ["'methods' must map"]),
        ({"methods": {"a__b": "tiny.yaml"}}, ["method name 'a__b'"]),
        ({"methods": {"a": 3}}, ["method 'a': expected a preset path, a list of overrides or a mapping"]),
        ({"methods": {"a": {"presets": "tiny.yaml"}}}, ["method 'a': expected", "['preset', 'overrides']"]),
        ({"methods": {"a": {"preset": 1}}}, ["method 'a': 'preset' must be a YAML file path"]),
        ({"methods": {"a": "nope.yaml"}}, ["method 'a': preset", "nope.yaml"]),
        ({"base": None, "methods": {"a": ["optimizer.name=adamo"]}}, ["method 'a' names no preset"]),
        ({"methods": {"a": ["seed=3"]}}, ["'seed' is set by the sweep"]),
        ({"methods": {"a": ["optimizer.name=adma"]}}, ["sweep run 'sw/a__s0'", "adma"]),
        ({"resources": {"cpu": 1}}, ["'resources': unknown key 'cpu'"]),
        ({"resources": {"cpus": 0}}, ["'resources.cpus': expected a number > 0"]),
        ({"resources": {"gpus": -0.5}}, ["'resources.gpus': expected a number >= 0"]),
    ],
)
def test_bad_sweep_files_fail_up_front_with_one_line(
    tmp_path: Path,
    base_file: Path,
    capsys: pytest.CaptureFixture[str],
    data: dict[str, Any],
    fragments: list[str],
) -> None:
    path = write_sweep(tmp_path, **data)
    assert main(["sweep", str(path), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("plasticrl: error: "), err
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])
    assert not (tmp_path / "runs").exists()  # nothing started


def test_missing_sweep_file_and_bad_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sweep", str(tmp_path / "nope.yaml")]) == 2
    assert "sweep file" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "nope.yaml"), "--workers", "0"]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real sweeps


def test_sweep_runs_in_parallel_then_skips_complete_runs(
    tmp_path: Path, base_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_sweep(tmp_path, seeds=[0, 1])
    assert main(["sweep", str(path), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert summary(out) == (2, 0, 0, 0)
    for seed in (0, 1):
        run_dir = tmp_path / "runs" / "sw" / f"s{seed}"
        state = load_checkpoint(run_dir / CHECKPOINT_NAME)
        assert state["global_step"] >= 200
        assert state["config"]["seed"] == seed
        assert (run_dir / "config.yaml").is_file()
        log = (run_dir.parent / f"s{seed}.log").read_text()
        assert "finished:" in log and "-q" in log.splitlines()[0]

    assert main(["sweep", str(path), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert summary(out) == (0, 2, 0, 0)
    assert main(["sweep", str(path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("skip    sw/s0  (complete: step 200 of 200)"), lines
    assert lines[-1] == "sweep sw: 2 runs: 0 to start, 0 to resume, 2 to skip (complete)"


def test_a_failing_run_is_reported_and_the_others_complete(
    tmp_path: Path, base_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = "tests.trainers.experiments.test_sweep:broken_env"
    path = write_sweep(tmp_path, seeds=[0], grid={"env.id": [bad, "CartPole-v1"]})
    assert main(["sweep", str(path), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert summary(out) == (1, 0, 0, 1)
    bad_leaf = "env.id=tests.trainers.experiments.test_sweep-broken_env__s0"
    log_path = tmp_path / "runs" / "sw" / f"{bad_leaf}.log"
    assert f"failed: sw/{bad_leaf} (exit code 1) log: {log_path}" in out
    assert "broken_env: cannot build this environment" in log_path.read_text()
    good = load_checkpoint(tmp_path / "runs" / "sw" / "env.id=CartPole-v1__s0" / CHECKPOINT_NAME)
    assert good["global_step"] >= 200

    assert main(["sweep", str(path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"start   sw/{bad_leaf}"), lines  # retried next time
    assert lines[1].startswith("skip    sw/env.id=CartPole-v1__s0"), lines


def test_an_interrupted_run_is_resumed_not_restarted(
    tmp_path: Path, base_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_sweep(tmp_path, seeds=[3], overrides=["total_steps=100"])
    assert main(["sweep", str(path), "--workers", "1"]) == 0
    assert summary(capsys.readouterr().out) == (1, 0, 0, 0)
    run_dir = tmp_path / "runs" / "sw" / "s3"
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["global_step"] == 100
    first_events = sorted(p.name for p in run_dir.glob("events.out.tfevents.*"))

    path = write_sweep(tmp_path, seeds=[3], overrides=["total_steps=200"])  # the same run, longer
    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("resume  sw/s3  (from step 100 of 200)")
    assert main(["sweep", str(path), "--workers", "1"]) == 0
    assert summary(capsys.readouterr().out) == (0, 0, 1, 0)
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    assert state["global_step"] == 200 and state["config"]["total_steps"] == 200
    # Same folder, its first event file kept; the log holds both commands, the second a --resume.
    assert set(first_events) <= {p.name for p in run_dir.glob("events.out.tfevents.*")}
    commands = [
        line for line in (run_dir.parent / "s3.log").read_text().splitlines() if line.startswith("$ ")
    ]
    assert len(commands) == 2 and "--resume" not in commands[0]
    assert f"--resume {run_dir}" in commands[1] and "total_steps=200" in commands[1]


def test_a_folder_without_checkpoint_is_restarted_and_a_changed_config_refused(
    tmp_path: Path, base_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_sweep(tmp_path, seeds=[0])
    run_dir = tmp_path / "runs" / "sw" / "s0"
    run_dir.mkdir(parents=True)
    (run_dir / "junk.txt").write_text("a run that crashed before its first checkpoint")
    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert "(200 steps (setting aside a folder without checkpoint))" in capsys.readouterr().out
    assert main(["sweep", str(path), "--workers", "1"]) == 0
    assert summary(capsys.readouterr().out) == (1, 0, 0, 0)
    assert not (run_dir / "junk.txt").exists()
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["global_step"] == 200

    changed = write_sweep(tmp_path, seeds=[0], overrides=["optimizer.lr=0.01"])
    assert main(["sweep", str(changed), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "optimizer" in err


def test_stopping_the_sweep_checkpoints_the_running_runs_for_a_resume(
    tmp_path: Path, base_file: Path
) -> None:
    path = write_sweep(tmp_path, seeds=[0, 1], overrides=["total_steps=10000000", "logging.every=1000"])
    sweep = subprocess.Popen(
        [sys.executable, "-m", "plasticrl.trainers.cli", "sweep", str(path), "--workers", "2"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    run_dirs = [tmp_path / "runs" / "sw" / f"s{seed}" for seed in (0, 1)]
    deadline = time.monotonic() + 60
    while not all(any(d.glob("events.out.tfevents.*")) for d in run_dirs) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # both loops are training
    sweep.send_signal(signal.SIGTERM)  # like Ctrl-C (which a test cannot send to a background job)
    out, _ = sweep.communicate(timeout=60)
    assert sweep.returncode == 130, out
    assert "2 interrupted" in out and summary(out) == (0, 0, 0, 0)
    for run_dir in run_dirs:
        assert 0 < load_checkpoint(run_dir / CHECKPOINT_NAME)["global_step"] < 10_000_000
    actions = [r.action for r in plan_sweep(load_sweep(path))]
    assert actions == ["resume", "resume"]


def test_committed_results_without_checkpoint_count_as_done(tmp_path: Path, base_file: Path) -> None:
    """Note [Committed results]: config, events and sidecar kept, checkpoint dropped -> skipped."""
    import io

    from plasticrl.trainers.experiments.sweep import execute_sweep

    path = write_sweep(tmp_path, seeds=[0, 1])
    runs = plan_sweep(load_sweep(path))
    assert [r.action for r in runs] == ["start", "start"]
    out = io.StringIO()
    execute_sweep(runs, workers=1, out=out, progress=False)
    for run in runs:  # what a study commits: everything but the checkpoint
        (run.run_dir / "checkpoint.pt").unlink()
    replanned = plan_sweep(load_sweep(path))
    assert [(r.action, r.checkpoint_step) for r in replanned] == [("skip", 200), ("skip", 200)]
    # A run made before a key existed (its sidecar lacks it) is the same run at the key's default.
    sidecar = runs[0].run_dir / "checkpoint.json"
    recorded = json.loads(sidecar.read_text())
    del recorded["config"]["network"]["input_precision"]
    sidecar.write_text(json.dumps(recorded))
    assert plan_sweep(load_sweep(path))[0].action == "skip"
    longer = plan_sweep(load_sweep(write_sweep(tmp_path, seeds=[0], overrides=["total_steps=400"])))
    assert [r.action for r in longer] == ["start"]  # short of total_steps and no checkpoint: start over
