"""``plasticrl sweep --backend ray`` without Ray: task options, fit checks and command-line errors."""

from __future__ import annotations

import builtins
import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from plasticrl.trainers.cli import main
from plasticrl.trainers.config import ExperimentConfig, apply_overrides
from plasticrl.trainers.experiments.sweep import SweepRun
from plasticrl.trainers.experiments.sweep_ray import task_options, unschedulable

from tests.trainers.experiments.test_sweep import TINY, write_sweep


@pytest.fixture
def base_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(apply_overrides({}, TINY)))
    return path


def make_run(**config: Any) -> SweepRun:
    cfg = dataclasses.replace(ExperimentConfig(), **config)
    return SweepRun("sw/s0", Path("runs/sw/s0"), Path("runs/sw/s0.log"), (), cfg, "start")


def test_resources_become_ray_task_options_defaulting_to_the_run_config() -> None:
    # Defaults: torch_threads CPUs (1 when null), 1 GPU for a CUDA device; never retried.
    assert task_options(make_run(), {}) == {"num_cpus": 1, "num_gpus": 0, "max_retries": 0}
    assert task_options(make_run(torch_threads=3), {})["num_cpus"] == 3
    assert task_options(make_run(torch_threads=None), {})["num_cpus"] == 1
    assert task_options(make_run(device="cuda"), {})["num_gpus"] == 1
    assert task_options(make_run(device="mps"), {})["num_gpus"] == 0
    # The sweep's resources win; whole numbers become ints, fractions stay.
    options = task_options(make_run(torch_threads=3, device="cuda"), {"cpus": 2.0, "gpus": 0.25})
    assert options == {"num_cpus": 2, "num_gpus": 0.25, "max_retries": 0}
    assert isinstance(options["num_cpus"], int)
    assert task_options(make_run(), {"cpus": 0.5})["num_cpus"] == 0.5
    assert task_options(make_run(device="cuda:1"), {"gpus": 2})["num_gpus"] == 2
    assert task_options(make_run(device="cuda:1"), {"gpus": 0})["num_gpus"] == 0


@pytest.mark.parametrize(
    ("config", "resources", "fragment"),
    [
        ({}, {"cpus": 0}, "resources.cpus must be a number > 0, got 0"),
        ({}, {"gpus": -1.0}, "resources.gpus must be a number >= 0, got -1.0"),
        ({}, {"cpus": "2"}, "resources.cpus must be a number > 0, got '2'"),
        ({"device": "cuda:1"}, {}, "device 'cuda:1', but its Ray task gets 1 GPU(s)"),
        ({"device": "cuda:2"}, {"gpus": 1.5}, "which the child sees as cuda:0..cuda:1"),
    ],
)
def test_bad_resources_are_named(config: dict[str, Any], resources: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match="run 'sw/s0'") as info:
        task_options(make_run(**config), resources)
    assert fragment in str(info.value)


def test_a_task_that_fits_on_no_node_is_named() -> None:
    runs = [make_run(), dataclasses.replace(make_run(), name="sw/s1")]
    options = [{"num_cpus": 1, "num_gpus": 0}, {"num_cpus": 2, "num_gpus": 1}]
    assert unschedulable(runs, options, [{"CPU": 4.0}, {"CPU": 2.0, "GPU": 1.0}]) is None
    message = unschedulable(runs, options, [{"CPU": 4.0}, {"CPU": 1.0, "GPU": 1.0}])
    assert message is not None
    assert message.startswith("run 'sw/s1' asks for 2 CPU(s) and 1 GPU(s), more than any of the 2 Ray")
    assert message.endswith("(largest: 4 CPU(s), 1 GPU(s))")
    assert unschedulable(runs[:1], options[:1], []) is not None


@pytest.mark.parametrize("broken", [False, True])
def test_backend_ray_without_ray_says_how_to_install_it(
    tmp_path: Path,
    base_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    broken: bool,
) -> None:
    if broken:  # installed, but one of its own imports fails
        real_import = builtins.__import__

        def fake_import(name: str, *args: Any, **kwargs: Any) -> Any:
            if name == "ray":
                raise ImportError("No module named 'grpc'", name="grpc")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", fake_import)
    else:
        monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    path = write_sweep(tmp_path, seeds=[0])
    assert main(["sweep", str(path), "--backend", "ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    if broken:
        assert err[0].startswith("plasticrl: error: --backend ray: Ray fails to import (No module named")
    else:
        assert err[0] == (
            "plasticrl: error: --backend ray needs Ray, which is not installed; "
            'install it: pip install -e ".[ray]"'
        )
    assert not (tmp_path / "runs").exists()
    assert main(["sweep", str(path), "--backend", "ray", "--dry-run"]) == 0  # planning needs no Ray


def test_backend_flags_that_do_not_go_together(
    tmp_path: Path, base_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_sweep(tmp_path, seeds=[0])
    assert main(["sweep", str(path), "--backend", "ray", "--workers", "2"]) == 2
    assert "--workers is for --backend local" in capsys.readouterr().err
    assert main(["sweep", str(path), "--address", "auto"]) == 2
    assert "--address 'auto' needs --backend ray" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", str(path), "--backend", "slurm"])
    assert "invalid choice: 'slurm'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
