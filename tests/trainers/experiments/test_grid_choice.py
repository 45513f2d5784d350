"""Choosing a grid value by its mean rank over (seed, task) pairs, against hand computations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from plasticrl.trainers.experiments.grid_choice import _ranks, choice_table, grid_scores, main, rank_choice


def test_ranks_are_one_for_the_highest_and_ties_share_their_mean_rank() -> None:
    assert _ranks([3.0, 1.0, 2.0]).tolist() == [1.0, 3.0, 2.0]
    assert _ranks([5.0, 5.0, 1.0, 7.0]).tolist() == [2.5, 2.5, 4.0, 1.0]


def test_rank_choice_by_hand_leaves_incomplete_pairs_out() -> None:
    scores = {
        (0, 0): {"a": 1.0, "b": 2.0, "c": 3.0},  # ranks a 3, b 2, c 1
        (0, 1): {"a": 9.0, "b": 2.0, "c": 2.0},  # a 1, b 2.5, c 2.5
        (1, 0): {"a": 5.0, "b": 4.0, "c": 0.0},  # a 1, b 2, c 3
        (1, 1): {"a": 100.0, "b": 0.0},  # c missing: not ranked, though a would win it
    }
    choices = rank_choice(scores)
    assert [(c.value, c.mean_rank, c.firsts, c.pairs) for c in choices] == [
        ("a", pytest.approx(5 / 3), 2, 3),
        ("b", pytest.approx(6.5 / 3), 0, 3),  # equal mean ranks: first-seen order
        ("c", pytest.approx(6.5 / 3), 1, 3),
    ]
    table = choice_table(choices, "optimizer.iso_coef")
    assert table.splitlines()[2] == "| a | 1.67 | 2 | 3 |"
    assert rank_choice({}) == []


def _run(root: Path, name: str, coef: float, seed: int, evals: dict[int, float]) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    run_dir = root / name
    run_dir.mkdir()
    config = {
        "seed": seed,
        "total_steps": 200,
        "optimizer": {"name": "adamo", "iso_coef": coef},
        "nonstationary": {"every": 100},
    }
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "checkpoint.json").write_text(
        json.dumps({"global_step": config.get("total_steps", 0)})
    )  # finished
    writer = SummaryWriter(str(run_dir))
    for step, value in evals.items():
        writer.add_scalar("eval/episodic_return", value, step)
    writer.close()
    return run_dir


def test_scores_are_task_means_without_the_zero_shot_evaluation(tmp_path: Path, capsys) -> None:
    # Task 0: evaluations at 50 and 100 steps in... 100 is task 1's offset 0 (zero-shot), left out.
    _run(tmp_path, "lo", 0.1, 0, {50: 2.0, 100: 50.0, 150: 4.0, 175: 6.0})
    _run(tmp_path, "hi", 1.0, 0, {50: 3.0, 100: -50.0, 150: 1.0, 175: 1.0})
    scores = grid_scores(sorted(tmp_path.iterdir()), "optimizer.iso_coef")
    assert scores == {(0, 0): {"1.0": 3.0, "0.1": 2.0}, (0, 1): {"1.0": 1.0, "0.1": 5.0}}
    # A run still training (its checkpoint short of total_steps) is left out, not ranked on task 0.
    running = _run(tmp_path, "running", 3.0, 0, {50: 99.0})
    (running / "checkpoint.json").write_text('{"global_step": 50}')
    first = _run(tmp_path, "first_period", 5.0, 0, {50: 99.0})  # no checkpoint written yet
    (first / "checkpoint.json").unlink()
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "left out, unfinished: first_period, running" in out
    assert "| 0.1 | 1.50 | 1 | 2 |" in out and "| 1.0 | 1.50 | 1 | 2 |" in out
    assert main([str(tmp_path), "--key", "optimizer.nope"]) == 2
    assert "--key optimizer.nope" in capsys.readouterr().err


def test_key_method_ranks_the_methods_of_several_sweeps_together(tmp_path: Path, capsys) -> None:
    """Two sweeps' folders pooled; ``--key method`` labels each run by its folder's method name."""
    grid, other = tmp_path / "grid", tmp_path / "other"
    grid.mkdir(), other.mkdir()
    _run(grid, "optimizer.iso_coef=0.1__s0", 0.1, 0, {50: 2.0, 150: 4.0})
    _run(other, "coupled_0.1__s0", 0.0, 0, {50: 3.0, 150: 1.0})
    _run(other, "coupled_1__s0", 0.0, 0, {50: 1.0, 150: 9.0})
    scores = grid_scores(sorted([*grid.iterdir(), *other.iterdir()]), "method")
    assert scores == {
        (0, 0): {"optimizer.iso_coef=0.1": 2.0, "coupled_0.1": 3.0, "coupled_1": 1.0},
        (0, 1): {"optimizer.iso_coef=0.1": 4.0, "coupled_0.1": 1.0, "coupled_1": 9.0},
    }
    assert main([str(grid), str(other), "--key", "method"]) == 0
    out = capsys.readouterr().out
    # coupled_1: ranks 3, 1 -> 2.0; the grid's: 2, 2 -> 2.0; coupled_0.1: 1, 3 -> 2.0
    assert "| coupled_1 | 2.00 | 1 | 2 |" in out and "| optimizer.iso_coef=0.1 | 2.00 | 0 | 2 |" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(grid), str(empty)]) == 2
    assert f"runs_dir {empty}" in capsys.readouterr().err
