"""What TensorBoard shows of a run (trainers/logging.py): the task id as a step, custom-scalars categories.

The logger is driven directly with known scalars (hand-computed points), and once through a tiny
``plasticrl train`` with the plasticity probe on, whose every ``plasticity/*`` tag must land in a
named custom-scalars category. Everything is read back from the event files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from plasticrl.trainers.config import config_to_dict, load_config
from plasticrl.trainers.experiments.plot import TASK_TAG as PLOT_TASK_TAG
from plasticrl.trainers.experiments.plot import read_scalars
from plasticrl.trainers.experiments.report import task_segments
from plasticrl.trainers.logging import (
    TASK_STEP_TAG,
    TASK_TAG,
    TensorBoardLogger,
    default_layout,
    merge_layouts,
    open_logger,
    plasticity_layout,
)
from plasticrl.trainers.runfolder import write_config

PRESET = "configs/cartpole/dqn.yaml"


def layouts(run_dir: Path) -> list[Any]:
    """Every custom-scalars ``Layout`` proto in the run's event files, in the order written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    if metadata.CONFIG_SUMMARY_TAG not in acc.Tags()["tensors"]:
        return []
    out = []
    for event in acc.Tensors(metadata.CONFIG_SUMMARY_TAG):
        layout = layout_pb2.Layout()
        layout.ParseFromString(event.tensor_proto.string_val[0])
        out.append(layout)
    return out


def charts_of(layout: Any) -> dict[str, dict[str, list[str]]]:
    """category → chart title → the chart's tag regexes."""
    return {c.title: {ch.title: list(ch.multiline.tag) for ch in c.chart} for c in layout.category}


def test_the_task_id_is_also_written_as_a_step_function(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, hparams=None, task_every=50)
    logger.log({TASK_TAG: 0.0}, 1)
    for step in range(10, 601, 10):
        logger.log({"charts/episodic_return": float(step)}, step)
        if step == 300:
            logger.log({TASK_TAG: 1.0}, 300)
        if step == 450:
            logger.log({TASK_TAG: 2.0}, 451)  # switches one step apart: no extra point between them
            logger.log({TASK_TAG: 0.0}, 452)
    logger.close()

    scalars = read_scalars(tmp_path)
    assert TASK_TAG == PLOT_TASK_TAG
    # the change points stay as they were: what reports read
    assert scalars[TASK_TAG] == ([1, 300, 451, 452], [0.0, 1.0, 2.0, 0.0])
    # the step: the id in force at the first call >= 50 steps after its last point, the old id
    # just before each switch (unless a point is already there), the new one at the switch, the
    # id in force at the last logged step
    steps, ids = scalars[TASK_STEP_TAG]
    assert list(zip(steps, ids, strict=True)) == [
        *[(s, 0.0) for s in (1, 60, 110, 160, 210, 260, 299)],
        *[(s, 1.0) for s in (300, 350, 400, 450)],
        (451, 2.0),
        *[(s, 0.0) for s in (452, 510, 560, 600)],
    ]
    # ... and both give the same task segments
    segments = [(s.start, s.end, s.task_id) for s in task_segments(*scalars[TASK_TAG], 600)]
    assert segments == [(0, 300, 0), (300, 451, 1), (451, 452, 2), (452, 600, 0)]
    assert [(s.start, s.end, s.task_id) for s in task_segments(steps, ids, 600)] == segments


def test_a_resumed_logger_draws_its_first_switch_as_a_step(tmp_path: Path) -> None:
    cfg = load_config(PRESET)
    run = tmp_path / "run"
    run.mkdir()
    write_config(cfg, run)
    config = config_to_dict(cfg)
    first = open_logger(config, run, start_step=0, resumed=False)
    first.log({TASK_TAG: 0.0}, 1)
    first.log({"charts/episodic_return": 5.0}, 200)
    first.log({TASK_TAG: 3.0}, 250)  # after the checkpoint at 200: a crashed tail, purged on resume
    first.close()
    second = open_logger(config, run, start_step=200, resumed=True)
    second.log({"charts/episodic_return": 6.0}, 260)
    second.log({TASK_TAG: 1.0}, 300)
    second.close()
    steps, ids = read_scalars(run)[TASK_STEP_TAG]
    kept = [(s, v) for s, v in zip(steps, ids, strict=True) if s > 200]
    # task 0 (the last point before the checkpoint) until 299; 100k total steps: a point <= 100 steps apart
    assert kept == [(260, 0.0), (299, 0.0), (300, 1.0)]
    # the resume writes no second layout: TensorBoard would show the last one
    assert len(layouts(run)) == 1


def test_a_run_without_the_probe_gets_the_task_and_intervention_charts(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path)
    logger.log({TASK_TAG: 0.0, "charts/episodic_return/task_0": 1.0}, 1)
    logger.log({TASK_TAG: 1.0, "charts/episodic_return/task_1": 2.0}, 9)
    logger.close()
    (layout,) = layouts(tmp_path)
    charts = charts_of(layout)
    assert list(charts) == ["env/task", "interventions"]  # no plasticity category without the probe
    (task_chart,) = [r for title, r in charts["env/task"].items() if title.startswith("Task id")]
    assert [t for t in read_scalars(tmp_path) if any(re.search(r, t) for r in task_chart)] == [TASK_STEP_TAG]
    (per_task,) = [r for title, r in charts["env/task"].items() if title.startswith("Episodic return")]
    matched = sorted(t for t in read_scalars(tmp_path) if any(re.search(r, t) for r in per_task))
    assert matched == ["charts/episodic_return/task_0", "charts/episodic_return/task_1"]


def test_merge_keeps_the_first_definition_and_drops_empty_categories() -> None:
    a = {"c": {"x": ["Multiline", ["^x$"]]}}
    b = {
        "c": {"x": ["Multiline", ["^other$"]], "y": ["Multiline", ["^y$"]]},
        "empty": {},
        "d": {"z": ["M", []]},
    }
    assert merge_layouts(a, b) == {
        "c": {"x": ["Multiline", ["^x$"]], "y": ["Multiline", ["^y$"]]},
        "d": {"z": ["M", []]},
    }
    titles = [t for charts in plasticity_layout().values() for t in charts]
    assert len(titles) == len(set(titles))  # no chart is lost to a duplicate title
    assert all("/" not in t.split(" — ")[0] for t in titles)  # titles in words, not tag names
    assert set(default_layout()) == {"env/task", "interventions"}


def test_every_plasticity_tag_of_a_run_is_in_a_named_category(tmp_path: Path) -> None:
    from plasticrl.trainers.cli import main

    args = [
        "configs/cartpole/dqn_permuted.yaml",
        "total_steps=1200",
        "nonstationary.every=400",
        "agent.learning_starts=100",
        "agent.buffer_size=1000",
        "agent.batch_size=16",
        "metrics.every=200",
        "metrics.ntk_every=400",
        "metrics.probe_size=32",
        "metrics.ntk_probe_size=16",
        "checkpoint.every=0",
        f"logging.dir={tmp_path}",
        "logging.name=r",
        "-q",
    ]
    assert main(["train", *args]) == 0
    run = tmp_path / "r"
    scalars = read_scalars(run)
    (layout,) = layouts(run)
    charts = charts_of(layout)
    # the probe's categories first (its per-τ dormant charts), then the logger's
    assert list(charts)[:3] == ["plasticity/dormant", "plasticity/isometry", "plasticity/features"]
    assert {"plasticity/weights", "plasticity/optimizer", "plasticity/ntk", "env/task"} <= set(charts)
    regexes = [r for category in charts.values() for chart in category.values() for r in chart]
    plasticity = [t for t in scalars if t.startswith("plasticity/")]
    assert len(plasticity) > 40
    unplaced = [t for t in plasticity if not any(re.search(r, t) for r in regexes)]
    assert unplaced == []
    # the task chart draws a step: each switch also holds the previous id one step before it
    switches = scalars[TASK_TAG][0][1:]
    steps, ids = scalars[TASK_STEP_TAG]
    points = dict(zip(steps, ids, strict=True))
    assert len(switches) == 2
    for s in switches:
        assert points[s - 1] == points[s] - 1  # permute_obs: task k+1 follows task k
