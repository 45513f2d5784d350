"""The method comparison's per-game scores, fresh normaliser and mechanisms, against hand computations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from plasticrl.trainers.cli import main
from plasticrl.trainers.experiments.comparison import (
    MECHANISMS,
    comparison_markdown,
    fresh_reference,
    game_scores,
    load_arm_run,
    meeting_scores,
    task_means,
)
from plasticrl.trainers.experiments.stats import probability_of_improvement

EVERY = 100


def _run(
    root: Path,
    name: str,
    seed: int,
    evals: dict[int, tuple[str, float]],
    *,
    start_task: int | None = None,
    total: int = 2 * EVERY,
    scalars: dict[str, dict[int, float]] | None = None,
) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    run_dir = root / name
    run_dir.mkdir()
    ns: dict[str, object] = {"every": EVERY}
    if start_task is not None:
        ns["start_task"] = start_task
    config = {"seed": seed, "total_steps": total, "nonstationary": ns, "eval": {"every": 50}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "checkpoint.json").write_text(
        json.dumps({"global_step": config.get("total_steps", 0)})
    )  # finished
    writer = SummaryWriter(str(run_dir))
    for step, (game, value) in evals.items():
        writer.add_scalar(f"eval/episodic_return/game_{game}", value, step)
    for tag, points in (scalars or {}).items():
        for step, value in points.items():
            writer.add_scalar(tag, value, step)
    writer.close()
    return run_dir


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study")
    # Two tasks of 100 steps: task 0 pong, task 1 ms; evaluations every 50 steps. The one at 100 is
    # task 1's zero-shot evaluation and the one at 200 opens a task the run never trained on.
    gap = {
        "plasticity/isometry_gap/net.1": {50: 1.0, 100: 3.0, 150: 5.0, 200: 7.0},
        "plasticity/isometry_gap/net.3": {50: 3.0, 100: 5.0, 150: 7.0, 200: 9.0},
        "plasticity/isometry_gap/net.5": {50: 100.0, 100: 100.0, 150: 100.0, 200: 100.0},
    }  # output layer
    for seed, (a, b) in enumerate([(2.0, 6.0), (4.0, 8.0)]):
        _run(
            root,
            f"continual__s{seed}",
            seed,
            {50: ("pong", 1.0), 100: ("ms", 99.0), 150: ("ms", 3.0), 200: ("pong", 99.0)}
            if seed == 0
            else {50: ("pong", 2.0), 100: ("ms", 99.0), 150: ("ms", 5.0), 200: ("pong", 99.0)},
            scalars=gap,
        )
        _run(
            root,
            f"adamo__s{seed}",
            seed,
            {50: ("pong", a), 100: ("ms", 99.0), 150: ("ms", b), 200: ("pong", 99.0)},
            scalars=gap,
        )
        _run(
            root,
            f"fresh_task_1__s{seed}",
            seed,
            {50: ("ms", 4.0 + 2 * seed), 100: ("pong", 99.0)},
            start_task=1,
            total=EVERY,
        )
    return root


def test_scores_per_game_leave_out_zero_shot_and_untrained_tasks(study: Path) -> None:
    run = load_arm_run(study / "continual__s0", "adam")
    assert (run.arm, run.seed, run.fresh_task) == ("adam", 0, None)
    assert {k: (g, dict(e)) for k, (g, e) in run.tasks.items()} == {
        0: ("pong", {50: 1.0}),
        1: ("ms", {0: 99.0, 50: 3.0}),
    }
    runs = [
        load_arm_run(study / d, "adam" if d.startswith("continual") else None)
        for d in ("continual__s0", "continual__s1", "adamo__s0", "adamo__s1")
    ]
    games, final = game_scores(runs, "final")
    assert games == ["ms", "pong"]
    np.testing.assert_array_equal(final["adam"], [[3.0, 1.0], [5.0, 2.0]])
    np.testing.assert_array_equal(final["adamo"], [[6.0, 2.0], [8.0, 4.0]])
    fresh = load_arm_run(study / "fresh_task_1__s1")
    assert fresh.fresh_task == 1 and list(fresh.tasks) == [1]  # its evaluation at 100 opens task 2
    assert fresh_reference([load_arm_run(study / f"fresh_task_1__s{s}") for s in (0, 1)], "auc") == {
        "ms": 5.0
    }
    # ms: adamo {6, 8} beats adam {3, 5} in all 4 pairings; pong: {2, 4} vs {1, 2}, one tie (2 = 2)
    poi = probability_of_improvement(final["adamo"], final["adam"], reps=100)
    assert poi.point == pytest.approx((1.0 + (0.5 + 1 + 1 + 1) / 4) / 2)


def test_isometry_gap_is_the_hidden_layers_mean_inside_each_task(study: Path) -> None:
    runs = [load_arm_run(study / "adamo__s0"), load_arm_run(study / "adamo__s1")]
    means = task_means(runs, MECHANISMS["isometry_gap"])["adamo"]
    # task 0: steps 50, 100 of net.1 and net.3 (net.5 is the output): (1+3+3+5)/4; task 1: 150, 200
    np.testing.assert_allclose(means, [[3.0, 7.0], [3.0, 7.0]])
    assert np.isnan(task_means(runs, MECHANISMS["ntk_condition_number"])["adamo"]).all()


def test_log_scale_mechanisms_are_averaged_geometrically(tmp_path: Path) -> None:
    """Inside a task and over seeds: a condition number of 1e2 and 1e6 averages to 1e4, not ~5e5."""
    ntk = "plasticity/ntk_condition_number"
    evals = {50: ("pong", 1.0), 150: ("ms", 1.0)}  # two tasks
    runs = [
        load_arm_run(_run(tmp_path, f"adamo__s{seed}", seed, evals, scalars={ntk: points}))
        for seed, points in enumerate([{50: 1e2, 100: 1e6, 150: 10.0}, {50: 1e4, 150: 1e3, 200: -1.0}])
    ]
    means = task_means(runs, MECHANISMS["ntk_condition_number"])["adamo"]
    np.testing.assert_allclose(means, [[1e4, 10.0], [1e4, 1e3]])  # -1 (not positive) is left out
    gaps = task_means(runs, MECHANISMS["dormant_fraction"])["adamo"]
    assert np.isnan(gaps).all()  # nothing logged: no mean
    assert MECHANISMS["ntk_condition_number"].log and not MECHANISMS["srank"].log


def test_meeting_scores_keep_each_meeting_of_a_game_apart(tmp_path: Path) -> None:
    """Four tasks, two games met twice each; seed 1 meets ``ms`` once (its last task: pong)."""
    runs = [
        load_arm_run(_run(tmp_path, f"adamo__s{seed}", seed, evals, total=4 * EVERY))
        for seed, evals in enumerate(
            [
                {50: ("pong", 1.0), 150: ("ms", 10.0), 250: ("pong", 3.0), 350: ("ms", 30.0)},
                {50: ("pong", 2.0), 150: ("ms", 20.0), 250: ("pong", 5.0), 350: ("pong", 7.0)},
            ]
        )
    ]
    games, scores = meeting_scores(runs, "final")
    assert games == ["ms", "pong"]
    nan = np.nan
    expected = [[[10.0, 30.0, nan], [1.0, 3.0, nan]], [[20.0, nan, nan], [2.0, 5.0, 7.0]]]
    np.testing.assert_array_equal(scores["adamo"], expected)
    text = comparison_markdown(runs, [], "adam", reps=100)
    assert "| adamo | 15 → 30 → — | 1.5 → 4 → 7 |" in text


def test_layer_means_know_the_output_layer_by_name_or_by_natural_order() -> None:
    """The isometric MLP's layers (``hidden.k.0``, ``head``) and a Sequential's (``9`` before ``11``)."""
    isometric = {
        "plasticity/isometry_gap/actor.hidden.0.0": ([10], [1.0]),
        "plasticity/isometry_gap/actor.hidden.1.0": ([10], [3.0]),
        "plasticity/isometry_gap/actor.head": ([10], [50.0]),
        "plasticity/isometry_gap/critic.hidden.0.0": ([10], [5.0]),
        "plasticity/isometry_gap/critic.head": ([10], [70.0]),
        "plasticity/srank/actor.head": ([10], [4.0]),
        "plasticity/srank/critic.head": ([10], [6.0]),
    }
    assert MECHANISMS["isometry_gap"].read(isometric) == ([10], [3.0])  # (1 + 3 + 5) / 3
    assert MECHANISMS["srank"].read(isometric) == ([10], [5.0])
    sequential = {
        "plasticity/isometry_gap/net.1": ([10], [2.0]),
        "plasticity/isometry_gap/net.9": ([10], [4.0]),
        "plasticity/isometry_gap/net.11": ([10], [90.0]),  # the output: 11 after 9, not before
    }
    assert MECHANISMS["isometry_gap"].read(sequential) == ([10], [3.0])


def test_the_comparison_writes_its_tables_and_figures_and_rejects_bad_input(
    study: Path, tmp_path: Path, capsys
) -> None:
    running = _run(tmp_path, "spectral__s0", 0, {50: ("pong", 50.0)})  # still training: left out
    (running / "checkpoint.json").write_text('{"global_step": 50}')
    dirs = [str(p) for p in sorted(study.iterdir())] + [str(running)]
    out = tmp_path / "out"
    assert main(["compare", *dirs, "--out", str(out), "--rename", "continual=adam", "--reps", "200"]) == 0
    text = (out / "comparison.md").read_text()
    assert "left out, unfinished: `spectral__s0`" in text and "| spectral |" not in text
    assert "ms 5" in text and "| adamo | 2 |" in text and "| adamo | 3 → 7 → 7 |" in text
    # the study logs no NTK probe: its column is "—", and the table says its means are geometric
    assert "geometric means for the NTK condition number" in text
    assert {p.name for p in out.iterdir()} >= {"per_game_returns.png", "mechanisms_per_task.pdf"}
    capsys.readouterr()
    assert main(["compare", *dirs, "--out", str(tmp_path / "x"), "--reference", "sgd"]) == 2
    assert "--reference 'sgd'" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["compare", *dirs, "--out", str(tmp_path / "x"), "--rename", "continual"]) == 2
    assert "--rename 'continual' is not LABEL=ARM" in capsys.readouterr().err
