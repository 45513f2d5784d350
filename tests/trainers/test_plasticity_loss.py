"""Plasticity loss against the fresh-agent control, computed from the event files of real runs."""

from __future__ import annotations

from pathlib import Path

import plasticrl
import pytest
from plasticrl.trainers.experiments.plasticity_loss import (
    control_key,
    fresh_task,
    loss_table,
    plasticity_loss,
    task_evaluations,
)
from plasticrl.trainers.experiments.plot import read_scalars

PRESET = Path(__file__).parents[2] / "configs" / "cartpole" / "dqn_permuted.yaml"
EVERY = 1200
COMMON = {
    "nonstationary__every": EVERY,
    "agent__learning_starts": 200,
    "eval__every": 400,
    "eval__episodes": 3,
    "metrics__every": 0,
    "metrics__ntk_every": 0,
    "checkpoint__every": 0,
    "quiet": True,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    logs = tmp_path_factory.mktemp("runs")
    continual = plasticrl.train(
        str(PRESET), total_steps=3 * EVERY, logging__dir=str(logs), logging__name="cont", **COMMON
    )
    fresh = [
        plasticrl.train(
            str(PRESET),
            total_steps=EVERY,
            nonstationary__start_task=k,
            logging__dir=str(logs),
            logging__name=f"fresh{k}",
            **COMMON,
        ).run_dir
        for k in (1, 2)
    ]
    return continual.run_dir, fresh


def test_controls_are_recognised_and_paired(runs: tuple[Path, list[Path]]) -> None:
    import yaml

    continual, fresh = runs
    configs = [yaml.safe_load((d / "config.yaml").read_text()) for d in (continual, *fresh)]
    assert [fresh_task(c) for c in configs] == [None, 1, 2]
    assert len({control_key(c) for c in configs}) == 1


def test_loss_is_fresh_minus_continual_at_matching_offsets(runs: tuple[Path, list[Path]]) -> None:
    """By hand: DQN steps one env, so evaluations sit at multiples of 400 in both runs."""
    continual, fresh = runs
    cont = dict(zip(*read_scalars(continual)["eval/episodic_return"], strict=True))
    rows = plasticity_loss([continual, *fresh], methods={continual: "dqn"})
    assert [(r.method, r.task, r.evaluations) for r in rows] == [("dqn", 1, 2), ("dqn", 2, 2)]
    for row, run in zip(rows, fresh, strict=True):
        mine = dict(zip(*read_scalars(run)["eval/episodic_return"], strict=True))
        start = row.task * EVERY
        assert row.fresh_final == pytest.approx(mine[800]) and row.continual_final == pytest.approx(
            cont[start + 800]
        )
        fresh_mean = (mine[400] + mine[800]) / 2
        cont_mean = (cont[start + 400] + cont[start + 800]) / 2
        assert row.loss_auc == pytest.approx(fresh_mean - cont_mean)
        assert row.loss_final == pytest.approx(mine[800] - cont[start + 800])
    table = loss_table(rows)
    assert table.count("\n| dqn |") == 2 and f"{rows[0].loss_final:+.2f}" in table


def test_task_evaluations_place_the_boundary_evaluation_in_the_new_task() -> None:
    config = {"nonstationary": {"every": 100, "start_task": 2}}
    scalars = {"eval/episodic_return": ([50, 100, 150], [1.0, 2.0, 3.0])}
    assert task_evaluations(config, scalars) == {2: {50: 1.0}, 3: {0: 2.0, 50: 3.0}}


def test_a_run_made_before_a_key_existed_still_pairs_with_its_controls(
    runs: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """An older continual run's config.yaml lacks a key added since: it is read at its default."""
    import shutil

    import yaml

    continual, fresh = runs
    old = tmp_path / continual.name
    shutil.copytree(continual, old)
    config = yaml.safe_load((old / "config.yaml").read_text())
    del config["network"]["input_precision"]
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    assert [r.task for r in plasticity_loss([old, *fresh], methods={old: "dqn"})] == [1, 2]
