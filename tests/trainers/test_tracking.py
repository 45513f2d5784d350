"""Tracking (trainers/logging.py): the HParams summary in a run's own event file, W&B offline runs.

Loggers are driven directly with known scalars, so every metric of the HParams tab has a
hand-computed value; the W&B tests run offline (``WANDB_MODE=offline``, ``WANDB_DIR`` in
``tmp_path``) and are skipped where ``wandb`` is not installed. They read W&B's files once, right
after the tracker closed: ``WandbTracker.close`` waits for them, so nothing here polls or sleeps.
The tests through ``plasticrl train`` need the session to open its logger with
:func:`open_logger` (and the config to have ``logging.wandb``); they say so when it does not yet.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
from pathlib import Path

import pytest
from plasticrl.trainers.config import LoggingConfig, config_to_dict, load_config
from plasticrl.trainers.experiments.report import load_run
from plasticrl.trainers.logging import (
    HPARAM_METRICS,
    WANDB_ID_NAME,
    TensorBoardLogger,
    WandbConfig,
    WandbTracker,
    check_tracking,
    final_metrics,
    hparam_values,
    open_logger,
    wandb_settings,
)
from plasticrl.trainers.runfolder import write_config

PRESET = "configs/cartpole/dqn.yaml"


def hparams_content(run_dir: Path) -> tuple[dict[str, object], list[str], dict[str, float]]:
    """(session start info's hparams, the experiment's metric tags, last value of each hparams/* tag)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    values: dict[str, object] = {}
    for key, value in start.hparams.items():
        values[key] = getattr(value, value.WhichOneof("kind"))
    scalars = {t: acc.Scalars(t)[-1].value for t in acc.Tags()["scalars"] if t.startswith("hparams/")}
    return values, [m.name.tag for m in experiment.metric_infos], scalars


def log_a_switching_run(logger: TensorBoardLogger, start: int = 0, stop: int = 60) -> None:
    """Episodes i = start+1..stop at step 10 i with return i; task 0 until step 300, then 1; dormancy."""
    for i in range(start + 1, stop + 1):
        step = 10 * i
        if step == 10:
            logger.log({"env/task_id": 0.0}, 1)
        if step == 300:
            logger.log({"env/task_id": 1.0}, 300)
        logger.log({"charts/episodic_return": float(i)}, step)
    logger.log(
        {
            "plasticity/dormant_fraction/tau_0": 0.1,
            "plasticity/dormant_fraction/tau_0.025": 0.25,
            "plasticity/dormant_fraction/tau_0.025/fc0": 0.9,  # a layer's tag: never the metric
        },
        10 * stop,
    )


def test_hparams_are_written_into_the_runs_own_event_file(tmp_path: Path) -> None:
    cfg = load_config(PRESET, ["optimizer.lr=0.0003", "regularizers=[{name: spectral, coef: 0.01}]"])
    run = tmp_path / "run"
    run.mkdir()
    write_config(cfg, run)
    logger = open_logger(config_to_dict(cfg), run, start_step=0, resumed=False)
    log_a_switching_run(logger)
    logger.close()
    logger.close()  # a second close is harmless (the session's finally may close again)

    assert [p.name for p in run.iterdir() if p.is_dir()] == []  # no subfolder: one run in TensorBoard
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    hparams, metric_tags, scalars = hparams_content(run)
    assert hparams["optimizer.lr"] == pytest.approx(3e-4)
    assert hparams["optimizer.name"] == "adam" and hparams["env.id"] == "CartPole-v1"
    assert hparams["network.hidden_sizes"] == "[256, 256]"
    assert hparams["regularizers"] == "[{name: spectral, coef: 0.01}]"
    assert metric_tags == list(HPARAM_METRICS)
    # final return: mean of the last 20 returns 41..60 = 50.5. Segments [0, 300) and [300, 600]:
    # final = the episodes ending in the last 20 % of each: steps 250..300 (returns 25..30, mean
    # 27.5) and steps 550..600 (returns 55..60, mean 57.5).
    assert scalars["hparams/final_return"] == pytest.approx(50.5)
    assert scalars["hparams/plasticity_gap"] == pytest.approx(57.5 - 27.5)
    assert scalars["hparams/final_dormant_fraction"] == pytest.approx(0.25)  # τ = 0.025's total
    assert "hparams/final_eval_return" not in scalars  # no eval logged: the cell stays empty
    # The report reads the folder as before (the hparams tags are ignored by its figures).
    data = load_run(run)
    assert len(data.returns[0]) == 60 and [s.task_id for s in data.segments] == [0, 1]


def test_keys_that_differ_from_sibling_runs_are_marked_for_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    sweep = tmp_path / "sweep"
    for name, overrides in (("a__s0", ["optimizer.lr=0.001"]), ("b__s1", ["optimizer.lr=0.0001", "seed=1"])):
        (sweep / name).mkdir(parents=True)
        write_config(load_config(PRESET, overrides), sweep / name)
    (sweep / "b__s1.log").write_text("a sweep's log, not a run\n")
    cfg = load_config(PRESET, ["optimizer.lr=0.001"])
    logger = open_logger(config_to_dict(cfg), sweep / "a__s0", start_step=0, resumed=False)
    logger.log({"charts/episodic_return": 1.0}, 10)
    logger.close()
    acc = EventAccumulator(str(sweep / "a__s0"), size_guidance={"tensors": 0})
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.EXPERIMENT_TAG]
    infos = metadata.parse_experiment_plugin_data(content).hparam_infos
    assert sorted(i.name for i in infos if i.differs) == ["optimizer.lr", "seed"]
    assert len(infos) > 40  # every scalar key is still a column; the marked ones come first


def test_final_metrics_cover_a_resumed_run_and_the_eval_return(tmp_path: Path) -> None:
    cfg = load_config(PRESET)
    run = tmp_path / "run"
    run.mkdir()
    config = config_to_dict(cfg)
    first = open_logger(config, run, start_step=0, resumed=False)
    for i in range(1, 31):
        first.log({"charts/episodic_return": 100.0}, 10 * i)
    first.close()
    second = open_logger(config, run, start_step=300, resumed=True)
    for i in range(31, 41):
        second.log({"charts/episodic_return": 0.0, "eval/episodic_return": float(i)}, 10 * i)
    second.close()
    metrics, last = final_metrics(run)
    # The last 20 episodes span both processes: 10 of 100 and 10 of 0.
    assert last == 400 and metrics["hparams/final_return"] == pytest.approx(50.0)
    assert metrics["hparams/final_eval_return"] == pytest.approx(40.0)
    assert "hparams/plasticity_gap" not in metrics and "hparams/final_dormant_fraction" not in metrics


def test_hparam_values_keep_scalars_and_write_lists_as_text() -> None:
    values = hparam_values({"seed": 3, "env": {"kwargs": {}}, "metrics": {"taus": [0.0, 0.1]}, "x": None})
    assert values == {"seed": 3, "env.kwargs": "{}", "metrics.taus": "[0.0, 0.1]"}


def test_wandb_settings_and_a_missing_wandb_package(monkeypatch: pytest.MonkeyPatch) -> None:
    assert wandb_settings({"logging": {"wandb": None}}) is None
    with pytest.raises(ValueError, match="project must be a non-empty string"):
        wandb_settings({"logging": {"wandb": {"project": ""}}})
    cfg = types.SimpleNamespace(logging=types.SimpleNamespace(wandb=WandbConfig(mode="offline")))
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'plasticrl\[wandb\]'"):
        check_tracking(cfg)
    check_tracking(types.SimpleNamespace(logging=types.SimpleNamespace(wandb=WandbConfig(mode="disabled"))))
    check_tracking(types.SimpleNamespace(logging=types.SimpleNamespace()))  # no wandb section at all


# ----------------------------------------------------------------------------- Weights & Biases


@pytest.fixture
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pytest.importorskip("wandb")
    folder = tmp_path / "wandb_dir"
    folder.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(folder))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return folder


def wandb_log(folder: Path, run_id: str) -> bytes:
    """The bytes of an offline run's ``.wandb`` log, read as soon as its tracker has closed.

    ``WandbTracker.close`` returns only once W&B's service has closed the file (it tears the
    service down when no other run is active), so the file is read once, never polled.
    """
    return (folder / f"run-{run_id}.wandb").read_bytes()


def offline_runs(folder: Path) -> list[Path]:
    return sorted((folder / "wandb").glob("offline-run-*"))


def test_an_offline_wandb_run_gets_every_scalar_and_a_resume_reuses_its_id(
    tmp_path: Path, offline_wandb: Path
) -> None:
    cfg = load_config(PRESET, ["optimizer.lr=0.0007"])
    config = config_to_dict(cfg)
    run = tmp_path / "runs" / "my_run__s0"
    run.mkdir(parents=True)
    settings = WandbConfig(project="plasticrl-tests", group="g", tags=("t1",), mode="offline")
    tracker = WandbTracker(run, config, settings)
    logger = TensorBoardLogger(run, trackers=[tracker], hparams=hparam_values(config))
    log_a_switching_run(logger, stop=30)
    logger.close()

    run_id = (run / WANDB_ID_NAME).read_text().strip()
    assert run_id == tracker.id and len(run_id) == 8
    (first,) = offline_runs(offline_wandb)
    assert first.name.endswith(f"-{run_id}")
    log = wandb_log(first, run_id)
    for text in (
        "charts/episodic_return",
        "env/task_id",
        "global_step",
        "hparams/final_return",
        "my_run__s0",
    ):
        assert text.encode() in log, text  # the same tags as TensorBoard, the folder's name
    assert b"0.0007" in log and b"plasticrl-tests" in log  # the resolved config, the project

    # Resumed at once, usually within the second the first part started in: W&B would give it
    # the same folder and overwrite the first part's log, unless the tracker waits for the next second.
    resumed = WandbTracker(run, config, settings)
    resumed.log({"charts/episodic_return": 1.0}, 310)
    resumed.close()
    assert resumed.id == run_id
    runs = offline_runs(offline_wandb)
    assert len(runs) == 2 and all(p.name.endswith(f"-{run_id}") for p in runs)
    assert wandb_log(first, run_id) == log  # the first part's log is intact
    assert b"global_step" in wandb_log(runs[1], run_id)


def test_a_closed_tracker_leaves_a_complete_log_and_spares_another_active_run(
    tmp_path: Path, offline_wandb: Path
) -> None:
    import wandb

    config = config_to_dict(load_config(PRESET))
    settings = WandbConfig(project="plasticrl-tests", mode="offline")
    for k in range(3):  # finish() alone returns before the service has flushed the log, often
        run = tmp_path / f"r{k}"
        run.mkdir()
        tracker = WandbTracker(run, config, settings)
        tracker.log({"charts/episodic_return": float(k)}, 1)
        tracker.summary({"hparams/final_return": 123.5})
        tracker.close()
        (folder,) = [p for p in offline_runs(offline_wandb) if p.name.endswith(f"-{tracker.id}")]
        assert b"hparams/final_return" in wandb_log(folder, tracker.id), k  # the summary: the last record
    own = wandb.init(project="mine", mode="offline", reinit="create_new")  # the user's own run
    run = tmp_path / "beside"
    run.mkdir()
    tracker = WandbTracker(run, config, settings)
    tracker.close()
    own.log({"still": 1.0})  # the service is still up (after a teardown this raises): the run goes on
    own.finish()


# ----------------------------------------------------------------------------- through plasticrl train

TINY = [
    "total_steps=300",
    "agent.learning_starts=50",
    "agent.buffer_size=500",
    "agent.batch_size=16",
    "metrics.every=0",
    "metrics.ntk_every=0",
    "checkpoint.every=0",
]


def _session_opens_logger() -> bool:
    from plasticrl.trainers import session

    return "open_logger" in inspect.getsource(session)


def test_a_trained_run_has_the_hparams_summary(tmp_path: Path) -> None:
    from plasticrl.trainers.cli import main

    if not _session_opens_logger():
        pytest.skip("trainers/session.py does not open its logger with open_logger yet")
    assert main(["train", PRESET, *TINY, f"logging.dir={tmp_path}", "logging.name=r", "-q"]) == 0
    hparams, metric_tags, scalars = hparams_content(tmp_path / "r")
    assert hparams["total_steps"] == 300 and metric_tags == list(HPARAM_METRICS)
    assert "hparams/final_return" in scalars


def test_train_and_resume_continue_one_offline_wandb_run(tmp_path: Path, offline_wandb: Path) -> None:
    from plasticrl.trainers.cli import main

    if "wandb" not in {f.name for f in dataclasses.fields(LoggingConfig)} or not _session_opens_logger():
        pytest.skip("logging.wandb is not in LoggingConfig / the session does not use open_logger yet")
    args = [*TINY, f"logging.dir={tmp_path}", "logging.name=r", "logging.wandb.mode=offline", "-q"]
    assert main(["train", PRESET, *args]) == 0
    run_id = (tmp_path / "r" / WANDB_ID_NAME).read_text().strip()
    assert main(["train", "--resume", str(tmp_path / "r"), "total_steps=400", "-q"]) == 0
    runs = offline_runs(offline_wandb)
    assert len(runs) == 2 and all(p.name.endswith(f"-{run_id}") for p in runs)


def test_a_failing_summary_never_fails_the_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(run_dir: Path) -> None:
        raise ValueError("unreadable events")

    monkeypatch.setattr("plasticrl.trainers.logging.final_metrics", broken)
    logger = TensorBoardLogger(tmp_path, hparams={"seed": 0})
    logger.log({"charts/episodic_return": 1.0}, 1)
    logger.close()  # the session writes its last checkpoint after this: it must not raise
    assert f"no HParams summary for {tmp_path}: unreadable events" in capsys.readouterr().err
    assert load_run_scalars(tmp_path) == {"charts/episodic_return": ([1], [1.0])}


def load_run_scalars(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    from plasticrl.trainers.experiments.plot import read_scalars

    return read_scalars(run_dir)
