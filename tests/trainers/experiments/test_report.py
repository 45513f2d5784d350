"""``plasticrl report`` (trainers/report.py): segments, curves and scores by hand; tables; real runs.

Synthetic runs are event files written with ``SummaryWriter`` plus a ``config.yaml``, so every
episode's step and return (and so every score) is known exactly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import yaml
from plasticrl.trainers.cli import main
from plasticrl.trainers.experiments.report import (
    Segment,
    binned_curve,
    load_run,
    markdown_tables,
    method_of,
    normalized,
    qualify_methods,
    score_table,
    segment_scores,
    task_segments,
    write_report,
)
from plasticrl.trainers.experiments.stats import iqm, stratified_bootstrap_ci

from tests.trainers.experiments.test_plot import PNG_MAGIC, write_run
from tests.trainers.experiments.test_sweep import TINY


def synthetic_run(
    path: Path,
    seed: int,
    returns: Sequence[tuple[int, float]],
    switches: Sequence[tuple[int, int]] = ((1, 0), (100, 1)),
    total: int = 200,
    extra: dict[str, Sequence[tuple[int, float]]] | None = None,
) -> Path:
    """A run folder: episodes ``returns`` (step, return), task ids ``switches`` (step, id), a config."""
    scalars = {"charts/episodic_return": list(returns), "env/task_id": [(s, float(t)) for s, t in switches]}
    write_run(path, {**scalars, **(extra or {})})
    (path / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "total_steps": total}))
    return path


def episodes(offset: float, slope: float) -> list[tuple[int, float]]:
    """An episode every 10 steps on [10, 200]: return offset + slope * (step within its task)."""
    return [(s, offset + slope * ((s - 1) % 100)) for s in range(10, 201, 10)]


# ----------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("steps", "ids", "total", "expected"),
    [
        ([], [], 50, [(0, 50, 0)]),
        ([1], [0], 50, [(0, 50, 0)]),
        ([1, 100], [0, 1], 200, [(0, 100, 0), (100, 200, 1)]),
        ([1, 10, 20, 30], [2, 0, 1, 2], 40, [(0, 10, 2), (10, 20, 0), (20, 30, 1), (30, 40, 2)]),  # a cycle
        ([1, 50, 50, 90], [0, 0, 1, 1], 100, [(0, 50, 0), (50, 100, 1)]),  # old id then new at one step
        ([1, 50, 100], [0, 1, 2], 100, [(0, 50, 0), (50, 100, 1)]),  # a change at the last step: no segment
    ],
)
def test_task_segments_hand_values(steps: list[int], ids: list[float], total: int, expected: list) -> None:
    assert [(s.start, s.end, s.task_id) for s in task_segments(steps, ids, total)] == expected


def test_binned_curve_averages_bins_and_carries_empty_ones() -> None:
    curve = binned_curve([3, 10, 11, 35], [1.0, 2.0, 4.0, 8.0], 10, 45)
    assert curve.tolist() == [1.5, 4.0, 4.0, 8.0, 8.0]  # (0,10]: 1,2; (10,20]: 4; carried; (30,40]: 8
    assert math.isnan(binned_curve([25], [1.0], 10, 30)[0])  # before the first episode
    with pytest.raises(ValueError, match="bin must be >= 1"):
        binned_curve([1], [1.0], 0, 10)


def test_segment_scores_hand_values(tmp_path: Path) -> None:
    run = load_run(synthetic_run(tmp_path / "m__s0", 0, episodes(0.0, 1.0)))
    assert run.segments == (Segment(0, 100, 0), Segment(100, 200, 1)) and run.method == "m"
    curve = binned_curve(*run.returns, 20, 200)
    scores = segment_scores(run, curve, 20, final_fraction=0.2)
    # Segment 0: episodes at 90 (89) and 100 (99) end in its last 20 steps (80, 100]: final 94.
    # Segment 1: episodes at 190 (89) and 200 (99): final 94. The curve's bins (0,20], (20,40], ...
    # hold the means of two episodes: (9+19)/2=14, 34, 54, 74, 94 in segment 0; the same in 1.
    assert scores[0][0] == pytest.approx(94.0) and scores[1][0] == pytest.approx(94.0)
    assert scores[0][1] == pytest.approx(54.0) and scores[1][1] == pytest.approx(54.0)
    # A tail with no episode falls back to the segment's last episode.
    sparse = load_run(synthetic_run(tmp_path / "sparse", 0, [(30, 5.0), (150, 7.0)]))
    assert [f for f, _ in segment_scores(sparse, binned_curve(*sparse.returns, 20, 200), 20)] == [5.0, 7.0]


def test_returns_tag_prefers_evaluation_then_the_envs_own_rewards(tmp_path: Path) -> None:
    training = episodes(0.0, 1.0)
    unclipped = [(s, 10.0 * r) for s, r in training]
    evaluation = [(100, 3.0), (200, 4.0)]
    plain = load_run(synthetic_run(tmp_path / "plain", 0, training))
    assert plain.returns_tag == "charts/episodic_return" and plain.returns[1][-1] == 99.0
    clipped = load_run(
        synthetic_run(tmp_path / "clip", 0, training, extra={"charts/episodic_return_unclipped": unclipped})
    )
    assert clipped.returns_tag == "charts/episodic_return_unclipped" and clipped.returns[1][-1] == 990.0
    both = {"charts/episodic_return_unclipped": unclipped, "eval/episodic_return": evaluation}
    evaluated = load_run(synthetic_run(tmp_path / "eval", 0, training, extra=both))
    assert evaluated.returns_tag == "eval/episodic_return" and evaluated.returns[1] == [3.0, 4.0]


def test_a_committed_run_without_its_checkpoint_ends_where_its_sidecar_says(tmp_path: Path) -> None:
    # Events end at step 200 of 400; the run got to 300 (its last episodes were still running).
    run_dir = synthetic_run(tmp_path / "m__s0", 0, episodes(0.0, 1.0), total=400)
    assert load_run(run_dir).last_step == 200
    (run_dir / "checkpoint.json").write_text(json.dumps({"global_step": 300, "config": {}}))
    run = load_run(run_dir)  # no checkpoint.pt: a study commits only the sidecar
    assert run.last_step == 300 and run.segments[-1] == Segment(100, 300, 1)


def test_method_labels() -> None:
    assert method_of(Path("runs/s/adamo__s12")) == "adamo"
    assert method_of(Path("runs/s/s3")) == "s3"  # a sweep without methods or grid: the seed is all
    assert method_of(Path("runs/CartPole-v1__dqn_20260101-120000_1")) == "CartPole-v1__dqn"


def test_runs_of_two_sweeps_with_one_grid_stay_apart(tmp_path: Path) -> None:
    """Two sweeps name runs alike; a report over both keeps them apart, a report over one does not change."""
    a = [synthetic_run(tmp_path / "sweep_a" / f"lr=1__s{s}", s, episodes(0.0, 1.0)) for s in (0, 1)]
    b = [synthetic_run(tmp_path / "sweep_b" / f"lr=1__s{s}", s, episodes(0.0, 1.0)) for s in (0, 1)]
    other = synthetic_run(tmp_path / "sweep_b" / "lr=2__s0", 0, episodes(0.0, 1.0))
    runs = qualify_methods([load_run(p) for p in (*a, *b, other)])
    assert [r.method for r in runs] == ["sweep_a/lr=1"] * 2 + ["sweep_b/lr=1"] * 2 + ["lr=2"]
    assert [r.method for r in qualify_methods([load_run(p) for p in a])] == ["lr=1", "lr=1"]
    write_report([*a, *b], tmp_path / "out", reps=200)
    assert "| sweep_a/lr=1 | 2 |" in (tmp_path / "out" / "report.md").read_text()


# ----------------------------------------------------------------------------- tables


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """Two methods x three seeds. Method ``good`` keeps learning; ``bad`` learns task 1 at half speed."""
    root = tmp_path / "study"
    for seed in range(3):
        synthetic_run(root / f"good__s{seed}", seed, episodes(float(seed), 1.0))
        bad = [(s, r if s <= 100 else r / 2) for s, r in episodes(float(seed), 1.0)]
        extra = {"plasticity/dormant_fraction/tau_0": [(50, 0.1 * seed), (150, 0.2 + 0.1 * seed)]}
        synthetic_run(root / f"bad__s{seed}", seed, bad, extra=extra)
        (root / f"bad__s{seed}.log").write_text("a sweep's log file, skipped by the report\n")
    return root


def test_scores_group_by_method_and_match_hand_values(study: Path) -> None:
    runs = [load_run(p) for p in sorted(study.iterdir()) if p.is_dir()]
    scores = score_table(runs, bin_steps=20)
    assert scores.methods == ("bad", "good") and [r.seed for r in scores.runs["good"]] == [0, 1, 2]
    # final(seed, segment) = mean of the returns at steps 90 and 100 (+ seed) = 94 + seed; bad halves
    # segment 1's (returns (89+s)/2 and (99+s)/2): 47 + seed / 2.
    np.testing.assert_allclose(scores.final["good"], [[94, 94], [95, 95], [96, 96]])
    np.testing.assert_allclose(scores.final["bad"], [[94, 47], [95, 47.5], [96, 48]])
    assert scores.task_ids["good"] == (0, 1)
    table = markdown_tables(scores, reps=2000)
    point, low, high = stratified_bootstrap_ci(scores.final["bad"], iqm, reps=2000, seed=0)
    assert point == pytest.approx(iqm(np.array([94, 95, 96, 47, 47.5, 48])))  # mean of 47.5, 48, 94, 95
    assert f"| bad | 3 | {point:.3g} [{low:.3g}, {high:.3g}] |" in table
    # The gap of bad on segment 1 is 47 + s/2 - (94 + s) = -47 - s/2: mean -47.5.
    gap_row = next(line for line in table.splitlines() if line.startswith("| bad | -4"))
    assert gap_row.startswith("| bad | -47.5 [")


def test_minmax_normalisation_is_per_task_over_all_runs(study: Path) -> None:
    scores = score_table([load_run(p) for p in sorted(study.iterdir()) if p.is_dir()], bin_steps=20)
    norm = normalized(scores, "final", "minmax")
    # Task 0: every run's final is 94..96 -> (x - 94) / 2. Task 1: 47..96 -> (x - 47) / 49.
    np.testing.assert_allclose(norm["good"][:, 0], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(norm["bad"][:, 1], [0.0, 0.5 / 49, 1.0 / 49])
    np.testing.assert_allclose(norm["good"][:, 1], [47 / 49, 48 / 49, 1.0])


def test_report_command_writes_markdown_csv_and_figures(
    study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    argv = [
        "report",
        *sorted(str(p) for p in study.iterdir()),
        "--out",
        str(out),
        "--reps",
        "500",
        "--bin",
        "20",
    ]
    assert main(argv) == 0
    written = [Path(line) for line in capsys.readouterr().out.split()]
    names = {p.name for p in written}
    figures = ["returns", "final_return_per_segment", "plasticity_gap", "dormant_fraction"]  # dormant: bad
    assert names == {"report.md", "scores.csv"} | {f"{f}.{e}" for f in figures for e in ("png", "pdf")}
    for path in written:
        assert path.is_file()
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_MAGIC
        if path.suffix == ".pdf":
            assert path.read_bytes()[:5] == b"%PDF-"
    rows = (out / "scores.csv").read_text().splitlines()
    assert rows[0] == "method,seed,run_dir,segment,task_id,start,end,final_return,auc"
    assert len(rows) == 1 + 6 * 2  # six runs x two segments
    report = (out / "report.md").read_text()
    assert "6 runs, 2 methods, seeds [0, 1, 2]" in report and "Plasticity gap" in report


def test_report_errors(tmp_path: Path, study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no run folders" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no TensorBoard event files" in capsys.readouterr().err
    run = str(study / "good__s0")
    assert main(["report", run, "--out", str(tmp_path / "o"), "--normalize", "zscore"]) == 2
    assert "--normalize must be one of ['none', 'minmax'], got 'zscore'" in capsys.readouterr().err
    assert main(["report", run, "--out", str(tmp_path / "o"), "--group-by", "optimizer.nme"]) == 2
    assert "--group-by 'optimizer.nme': no such key" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real runs


def test_report_of_two_tiny_real_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two seeds of CartPole DQN whose reward flips sign every 100 steps, trained, then reported."""
    runs = tmp_path / "runs"
    for seed in (0, 1):
        argv = ["train", "configs/cartpole/dqn_reward_flip.yaml", *TINY, "total_steps=300"]
        argv += [
            "nonstationary.every=100",
            f"seed={seed}",
            f"logging.dir={runs}",
            f"logging.name=flip__s{seed}",
        ]
        assert main([*argv, "-q"]) == 0
    out = tmp_path / "report"
    assert (
        main(["report", *(str(p) for p in sorted(runs.iterdir())), "--out", str(out), "--reps", "500"]) == 0
    )
    report = (out / "report.md").read_text()
    assert "2 runs, 1 methods, seeds [0, 1]" in report and "Unfinished" not in report
    assert "| flip | 2 |" in report  # the IQM row of the one method
    rows = (out / "scores.csv").read_text().splitlines()[1:]
    segments = {(r.split(",")[1], r.split(",")[3], r.split(",")[4]) for r in rows}
    assert {("0", "0", "0"), ("0", "1", "1"), ("0", "2", "0")} <= segments  # three segments, ids 0-1-0
    assert (out / "returns.png").read_bytes()[:8] == PNG_MAGIC
