"""``plasticrl report`` never pools runs of different configs, and says what it grouped.

Synthetic run folders (event files + a ``config.yaml``): the grouping is decided by the configs
alone, so each case states the configs and the groups it must give.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from plasticrl.trainers.cli import main
from plasticrl.trainers.experiments.report import (
    config_key,
    grouping_lines,
    load_run,
    qualify_methods,
    score_table,
    split_by_config,
    write_report,
)

from tests.trainers.experiments.test_plot import write_run


def run_folder(path: Path, seed: int, **config: Any) -> Path:
    """A run at ``path`` with returns rising 0..19 and ``config`` (plus seed, total_steps 200)."""
    write_run(path, {"charts/episodic_return": [(10 * i, float(i)) for i in range(1, 21)]})
    full = {"seed": seed, "total_steps": 200, "optimizer": {"name": "adam", "lr": 1e-3}, **config}
    (path / "config.yaml").write_text(yaml.safe_dump(full))
    return path


def methods(paths: list[Path], group_by: str | None = None) -> dict[str, list[int]]:
    runs = [load_run(p, group_by=group_by) for p in paths]
    if group_by is None:
        runs = qualify_methods(runs)
    scores = score_table(split_by_config(runs))
    return {m: [r.seed for r in scores.runs[m]] for m in scores.methods}


def test_two_seed0_runs_of_different_configs_are_two_methods(tmp_path: Path) -> None:
    a = run_folder(tmp_path / "sw" / "dqn__s0", 0)
    b = run_folder(tmp_path / "other" / "dqn__s0", 0, optimizer={"name": "adam", "lr": 1e-4})
    c = run_folder(tmp_path / "other2" / "dqn__s1", 1, optimizer={"name": "adam", "lr": 1e-4})
    # Three folders, one label: qualify_methods prefixes the folders; and even under one prefix
    # (same folder, same label) the configs keep them apart:
    same = [
        run_folder(tmp_path / "one" / f"m__s{s}", 0, optimizer={"name": "adam", "lr": lr})
        for s, lr in ((0, 1e-3), (1, 1e-4))
    ]
    assert methods(same) == {"m [optimizer.lr=0.001]": [0], "m [optimizer.lr=0.0001]": [0]}
    grouped = methods([a, b, c])
    assert sorted(len(s) for s in grouped.values()) == [1, 1, 1] and len(grouped) == 3


def test_seeds_of_one_config_are_pooled_whatever_their_folder_names(tmp_path: Path) -> None:
    runs = [
        run_folder(
            tmp_path / f"CartPole-v1__dqn__adam__mlp__s{s}__2026010{s}-120000",
            s,
            logging={"dir": f"elsewhere{s}"},
            device="cpu" if s else "cuda",
            torch_threads=s + 1,
        )
        for s in (0, 1, 2)
    ]
    assert methods(runs) == {"CartPole-v1__dqn__adam__mlp": [0, 1, 2]}
    assert config_key({"seed": 0, "logging": {"dir": "a"}, "x": 1}) == config_key({"seed": 5, "x": 1})
    assert config_key({"total_steps": 1}) != config_key({"total_steps": 2})  # lengths differ: not pooled


def test_group_by_labels_but_still_never_pools_other_configs(tmp_path: Path) -> None:
    paths = [
        run_folder(tmp_path / "a__s0", 0),
        run_folder(tmp_path / "b__s1", 1),
        run_folder(tmp_path / "c__s2", 2, network={"hidden_sizes": [8]}),
    ]
    assert methods(paths, group_by="optimizer.name") == {
        "optimizer.name=adam [network.hidden_sizes=[128, 128]]": [0, 1],  # unset: the default
        "optimizer.name=adam [network.hidden_sizes=[8]]": [2],
    }


def test_the_report_says_what_it_grouped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = [
        run_folder(tmp_path / "sw" / "x__s0", 0),
        run_folder(tmp_path / "sw2" / "y__s0", 0, optimizer={"name": "adamo", "lr": 1e-3}),
        run_folder(tmp_path / "sw2" / "y__s0_again", 0, optimizer={"name": "adamo", "lr": 1e-3}),
    ]
    lines = grouping_lines(split_by_config(qualify_methods([load_run(p) for p in paths])))
    # Configs are read as resolved (AdamO's own keys at their defaults), as plasticrl writes them.
    keys = ("iso_coef", "iso_every", "iso_lr", "iso_prefetch", "iso_target")
    unset = ", ".join(f"optimizer.{k}=<unset>" for k in keys)
    adamo = "optimizer.iso_coef=0.01, optimizer.iso_every=1, optimizer.iso_lr=null, "
    adamo += "optimizer.iso_prefetch=false, optimizer.iso_target=1.0"
    assert lines[0] == f"- `x`: 1 run, seeds [0], in `{tmp_path / 'sw'}`; {unset}, optimizer.name=adam"
    assert lines[1:] == [
        f"- `y`: 1 run, seeds [0], in `{tmp_path / 'sw2'}`; {adamo}, optimizer.name=adamo"
        " (same config as `y__s0_again`: kept apart by name)",
        f"- `y__s0_again`: 1 run, seeds [0], in `{tmp_path / 'sw2'}`; {adamo}, optimizer.name=adamo"
        " (same config as `y`: kept apart by name)",
    ]
    assert main(["report", *map(str, paths), "--out", str(tmp_path / "out"), "--reps", "100"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "report: 3 runs in 3 method(s):"
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Groups" in report and "optimizer.name=adamo" in report


def test_a_repeated_seed_is_flagged(tmp_path: Path) -> None:
    paths = [run_folder(tmp_path / "sw" / name, 0) for name in ("m__s0", "m__s0_1")]
    runs = [load_run(p) for p in paths]
    runs = [runs[0], dataclasses.replace(runs[1], method=runs[0].method)]  # one label, one config
    (line,) = grouping_lines(split_by_config(runs))
    assert "2 runs, seeds [0, 0]" in line and "seed 0 repeated" in line
    write_report(paths, tmp_path / "out", reps=100)  # still writes, flagged in report.md


def test_pool_over_pools_runs_that_differ_only_in_the_named_keys(tmp_path: Path) -> None:
    # An older run lacks a key newer runs hold at its default: read at its default, it pools with
    # them by itself. Two runs differ in a key declared immaterial; a last differs in a real setting.
    old = run_folder(tmp_path / "sw" / "ppo__s0", 0)
    same = run_folder(tmp_path / "sw" / "ppo__s1", 1, metrics={"probe_chunk": 64})  # the default
    new = run_folder(tmp_path / "sw" / "ppo__s2", 2, metrics={"probe_chunk": 32})
    other = run_folder(
        tmp_path / "sw" / "ppo__s3", 3, metrics={"probe_chunk": 64}, optimizer={"name": "adam", "lr": 1.0}
    )
    runs = [load_run(p) for p in (old, same, new, other)]
    assert [r.method for r in split_by_config(runs)].count(
        "ppo [metrics.probe_chunk=64, optimizer.lr=0.001]"
    ) == 2
    assert len({r.method for r in split_by_config(runs)}) == 3  # 64 (the old run too), 32, the other lr
    pooled = split_by_config(runs, ignore=("metrics.probe_chunk",))
    assert [r.method for r in pooled][:3] == ["ppo [optimizer.lr=0.001]"] * 3
    assert pooled[3].method == "ppo [optimizer.lr=1.0]"
    lines = grouping_lines(pooled, ("metrics.probe_chunk",))
    assert len(lines) == 2 and "seeds [0, 1, 2]" in lines[0] and "probe_chunk" not in lines[0]
    out = tmp_path / "out"
    paths = [str(p) for p in (old, same, new)]
    assert (
        main(["report", *paths, "--out", str(out), "--reps", "10", "--pool-over", "metrics.probe_chunk"]) == 0
    )
    text = (out / "report.md").read_text()
    assert "3 runs, 1 methods" in text and "`metrics.probe_chunk` by `--pool-over`" in text
