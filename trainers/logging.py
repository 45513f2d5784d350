"""Metric logging: the one place that writes TensorBoard events and talks to experiment trackers.

Contains:
    MetricLogger: the protocol trainers log through (``log``, ``text``, ``layout``, ``close``).
    Tracker: what an experiment tracker (W&B) must offer to receive every scalar the logger writes.
    WandbConfig: the ``logging.wandb`` section (project, entity, group, tags, mode).
    WandbTracker: a Weights & Biases run mirroring the TensorBoard scalars and holding the
        resolved config; its id is stored in the run folder so a resume continues the same W&B run.
    TensorBoardLogger: writes scalars and text to a run folder, forwards scalars to its trackers,
        and writes TensorBoard's HParams summary into the run's own event file.
    hparam_values: the resolved config's scalar keys, as the HParams tab takes them (pure).
    sibling_differences: the keys in which a run differs from the run folders beside it.
    final_metrics: final return, final eval return, final dormant fraction and plasticity gap of a
        run folder, read back from its event files (the HParams tab's metrics).
    open_logger: the logger a run uses: TensorBoard, plus W&B when ``logging.wandb`` is set.
    wandb_settings: the ``logging.wandb`` section of a resolved config dict (pure).
    check_tracking: fail before anything runs when ``logging.wandb`` is set without ``wandb``.
    config_markdown: the resolved config as a markdown table (TensorBoard text, CleanRL-style).

Tags follow CleanRL (``charts/…``, ``losses/…``) so that existing tooling reads them; W&B receives
the same tags with ``global_step`` (the env step) as their x-axis.

``torch.utils.tensorboard`` and ``wandb`` are imported when a logger is made, so the config module
can import :class:`WandbConfig` from here cheaply.
"""

from __future__ import annotations

import math
import os
import secrets
import string
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = [
    "MetricLogger",
    "Tracker",
    "WandbConfig",
    "WandbTracker",
    "TensorBoardLogger",
    "WANDB_ID_NAME",
    "HPARAM_METRICS",
    "EVAL_RETURN_TAG",
    "hparam_values",
    "sibling_differences",
    "final_metrics",
    "open_logger",
    "wandb_settings",
    "check_tracking",
    "config_markdown",
    "flatten_config",
]

WANDB_ID_NAME = "wandb_run_id"
"""File in the run folder holding the W&B run id (one line), so ``--resume`` continues that run."""

EVAL_RETURN_TAG = "eval/episodic_return"
"""The greedy-evaluation return tag; the HParams tab shows its last value when a run logs it."""

HPARAM_METRICS: tuple[str, ...] = (
    "hparams/final_return",
    "hparams/final_eval_return",
    "hparams/final_dormant_fraction",
    "hparams/plasticity_gap",
)
"""The HParams tab's metric columns (scalar tags written at the end of each process of a run).

``final_return``: mean return of the run's last 20 episodes; ``final_eval_return``: the last
:data:`EVAL_RETURN_TAG` value; ``final_dormant_fraction``: the last unit-weighted dormant fraction
at τ = 0.025 (else the smallest τ logged); ``plasticity_gap``: ``plasticrl report``'s gap of the
last task segment (final return on it minus on segment 0). A metric a run cannot have (no eval,
no probe, one segment) is left out of its event file, and the table shows it empty."""

_FINAL_EPISODES = 20
_NEVER_DIFFERING = ("logging.", "checkpoint.", "device", "torch_threads")
_DORMANT_PREFIX = "plasticity/dormant_fraction/tau_"
_PREFERRED_TAU = "0.025"


class MetricLogger(Protocol):
    """Where trainers send scalars; agents and metrics never see it."""

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        """Record each ``tag → value`` at ``step``."""
        ...

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Record a text blob (the config)."""
        ...

    def layout(self, layout: Mapping[str, Any]) -> None:
        """Record a chart layout (TensorBoard custom scalars: category → chart → spec)."""
        ...

    def close(self) -> None:
        """Flush and release files."""
        ...


class Tracker(Protocol):
    """An experiment tracker that receives every scalar the TensorBoard logger writes."""

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        """Record each ``tag → value`` at env step ``step``.

        Steps may repeat, or go back to the checkpoint's step after a resume.
        """
        ...

    def summary(self, values: Mapping[str, float]) -> None:
        """Record the run's final values (the HParams metrics)."""
        ...

    def close(self) -> None:
        """Finish the tracker's run and flush its files."""
        ...


@dataclass(frozen=True)
class WandbConfig:
    """The ``logging.wandb`` section: mirror the run to Weights & Biases (``pip install 'plasticrl[wandb]'``).

    The W&B run is named after the run folder and gets the resolved config; every TensorBoard
    scalar goes to it with the env step as ``global_step``. Its id is kept in
    ``<run>/wandb_run_id``, so ``plasticrl train --resume`` continues the same W&B run.
    ``WANDB_DIR`` (else the run folder) holds W&B's local files.
    """

    project: str = "plasticrl"
    """W&B project."""
    entity: str | None = None
    """W&B team or user; None is your default entity."""
    group: str | None = None
    """W&B group (e.g. the sweep's name), so seeds of one method show together."""
    tags: tuple[str, ...] = ()
    """W&B tags of the run."""
    mode: Literal["online", "offline", "disabled"] = "online"
    """``offline`` writes the run locally (``wandb sync`` uploads it later); no network needed."""

    def __post_init__(self) -> None:
        if not self.project:
            raise ValueError("logging.wandb.project must be a non-empty string")


class WandbTracker:
    """A W&B run mirroring a plasticrl run folder.

    Args:
        run_dir: the run folder; its name is the W&B run's name and it stores the run id.
        config: the resolved config (nested mapping), shown as the W&B run's config.
        settings: project, entity, group, tags and mode.

    Raises:
        ValueError: ``wandb`` is not installed (naming the extra to install).
    """

    def __init__(self, run_dir: str | Path, config: Mapping[str, Any], settings: WandbConfig) -> None:
        wandb = _import_wandb()
        run_dir = Path(run_dir)
        id_path = run_dir / WANDB_ID_NAME
        stored = id_path.read_text().strip() if id_path.is_file() else ""
        run_id = stored or _new_run_id()
        if not stored:
            id_path.write_text(run_id + "\n")  # before init: a crash during it keeps the id
        self.run = wandb.init(
            project=settings.project,
            entity=settings.entity,
            group=settings.group,
            tags=list(settings.tags) or None,
            mode=settings.mode,
            name=run_dir.name,
            id=run_id,
            resume="allow",
            dir=os.environ.get("WANDB_DIR") or str(run_dir),
            config=dict(config),
            allow_val_change=True,  # a resume may raise total_steps
            reinit="create_new",  # several runs in one process (tests, notebooks) stay apart
        )
        self.run.define_metric("global_step")
        self.run.define_metric("*", step_metric="global_step")
        self.id: str = self.run.id

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        """Send the scalars with ``global_step = step`` (W&B's own step only counts calls)."""
        self.run.log({**{k: float(v) for k, v in scalars.items()}, "global_step": step})

    def summary(self, values: Mapping[str, float]) -> None:
        """Put the final values into the W&B run's summary (its row in the runs table)."""
        for key, value in values.items():
            self.run.summary[key] = value

    def close(self) -> None:
        """Finish the W&B run."""
        self.run.finish()


def _new_run_id() -> str:
    """A fresh W&B run id: 8 random lowercase letters and digits (W&B's own id alphabet)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _import_wandb() -> Any:
    try:
        import wandb  # type: ignore[import-not-found]  # the optional extra
    except ImportError:
        raise ValueError(
            "logging.wandb is set but the wandb package is not installed; "
            "pip install 'plasticrl[wandb]' (or remove logging.wandb)"
        ) from None
    return wandb


class TensorBoardLogger:
    """TensorBoard event files in ``run_dir``, every scalar also sent to ``trackers``.

    Args:
        run_dir: the run folder.
        purge_step: on resume, the checkpoint's step: events a crashed run wrote at or after it
            are hidden, so the resumed curves continue without duplicates.
        trackers: experiment trackers (W&B) that receive the same scalars; closed with the logger.
        hparams: the run's hyperparameters (:func:`hparam_values`); when given, :meth:`close`
            writes TensorBoard's HParams summary with :func:`final_metrics` into this event file.
    """

    def __init__(
        self,
        run_dir: str | Path,
        purge_step: int | None = None,
        *,
        trackers: Sequence[Tracker] = (),
        hparams: Mapping[str, float | int | str | bool] | None = None,
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        _after_existing_event_files(self.run_dir)
        self.writer = SummaryWriter(str(run_dir), purge_step=purge_step, flush_secs=30)
        self.trackers = list(trackers)
        self.hparams = None if hparams is None else dict(hparams)
        self._closed = False

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        """Write every scalar at ``step``, to the event file and to each tracker."""
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, float(value), step)
        for tracker in self.trackers:
            tracker.log(scalars, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Write a markdown text blob."""
        self.writer.add_text(tag, text, step)

    def layout(self, layout: Mapping[str, Any]) -> None:
        """Write a custom-scalars layout (e.g. every layer's dormant curve in one chart)."""
        self.writer.add_custom_scalars(dict(layout))

    def write_hparams(
        self, hparams: Mapping[str, float | int | str | bool], metrics: Mapping[str, float], step: int
    ) -> None:
        """TensorBoard's HParams summary into this run's own event file (not a subfolder).

        ``SummaryWriter.add_hparams`` opens a new writer in a subfolder, which makes every run two
        runs in TensorBoard; the same three summaries (experiment, session start, session end)
        are written here through this writer instead. Every name of :data:`HPARAM_METRICS` is a
        metric column; the finite ``metrics`` are written as scalars at ``step``, which is where
        the HParams tab reads their values.
        """
        from tensorboard.plugins.hparams import plugin_data_pb2
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        columns = {name: 0.0 for name in HPARAM_METRICS} | {k: 0.0 for k in metrics}
        experiment, start, end = hparams_summaries(dict(hparams), columns)
        # Mark the keys that set this run apart from its sibling runs (a sweep's grid keys, the
        # seed): TensorBoard lists marked hyperparameters first and shows them by default.
        differing = sibling_differences(self.run_dir, hparams)
        value = experiment.value[0]
        data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
        for info in data.experiment.hparam_infos:
            info.differs = info.name in differing
        value.metadata.plugin_data.content = data.SerializeToString()
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, start, end):
            file_writer.add_summary(summary)
        for tag, value in metrics.items():
            if math.isfinite(value):
                self.writer.add_scalar(tag, float(value), step)

    def close(self) -> None:
        """Write the HParams summary (if asked), flush and close the event file and the trackers.

        A failure to compute the summary is a warning on stderr, never an exception: the session
        closes the logger before it writes the run's last checkpoint.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self.hparams is not None:
                self.writer.flush()
                metrics, step = final_metrics(self.run_dir)
                self.write_hparams(self.hparams, metrics, step)
                for tracker in self.trackers:
                    tracker.summary({k: v for k, v in metrics.items() if math.isfinite(v)})
        except Exception as exc:  # noqa: BLE001 (a summary must never cost the run its last checkpoint)
            print(f"plasticrl: warning: no HParams summary for {self.run_dir}: {exc}", file=sys.stderr)
        finally:
            self.writer.close()
            for tracker in self.trackers:
                tracker.close()


def _after_existing_event_files(run_dir: Path) -> None:
    """Wait, if needed, until a new event file would sort after the folder's existing ones.

    Readers take event files in name order, and a name starts with the creation second; a file
    made in the same second as an earlier one (a resume right after a short run, in one process)
    can sort before it — its purge of the crashed tail would then hit the wrong file.
    """
    seconds = []
    for path in run_dir.glob("events.out.tfevents.*"):
        field = path.name.split(".")[3]
        if field.isdigit():
            seconds.append(int(field))
    while seconds and int(time.time()) <= max(seconds):
        time.sleep(0.05)


def flatten_config(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """A nested config dict as ``(dotted key, value)`` pairs, leaves in order.

    Example:
        >>> flatten_config({"seed": 0, "optimizer": {"name": "adam", "lr": 0.001}, "tags": []})
        [('seed', 0), ('optimizer.name', 'adam'), ('optimizer.lr', 0.001), ('tags', [])]
    """
    if isinstance(tree, Mapping) and tree:
        out: list[tuple[str, Any]] = []
        for key, value in tree.items():
            out.extend(flatten_config(value, f"{prefix}{key}."))
        return out
    return [(prefix[:-1], tree)]


def sibling_differences(run_dir: Path, hparams: Mapping[str, object]) -> set[str]:
    """The keys of ``hparams`` whose values differ in a run folder beside ``run_dir`` (and ``seed``).

    The siblings are the folders of ``run_dir``'s parent that hold a ``config.yaml`` (a sweep's
    runs); their values are compared as :func:`hparam_values` writes them. A key only one of
    the two has (an option of another optimizer) does not count, nor do the keys that never make
    runs different experiments (``logging.*``, ``checkpoint.*``, ``device``, ``torch_threads``).
    Runs that have not started when this one ends are not seen, so a sweep's first runs may mark
    fewer keys.
    """
    import yaml

    differing = {"seed"} & set(hparams)
    for sibling in sorted(run_dir.parent.iterdir()) if run_dir.parent.is_dir() else []:
        path = sibling / "config.yaml"
        if sibling == run_dir or not path.is_file():
            continue
        try:
            other = hparam_values(yaml.safe_load(path.read_text()) or {})
        except (OSError, yaml.YAMLError, AttributeError):
            continue  # a sibling being written or not a run: it says nothing about this one
        differing |= {k for k, v in hparams.items() if k in other and other[k] != v}
    return {k for k in differing if not k.startswith(_NEVER_DIFFERING)}


def hparam_values(config: Mapping[str, Any]) -> dict[str, float | int | str | bool]:
    """The HParams tab's hyperparameters: every scalar key of the resolved config, dotted.

    Numbers, strings and booleans are kept as they are; ``None`` is left out (the tab has no
    null); lists (``regularizers``, ``interventions``, ``hidden_sizes``) become their compact
    YAML text, so two methods that differ only in a regularizer still differ in the table.

    Example:
        >>> hparam_values({"seed": 1, "optimizer": {"lr": 1e-3, "iso_target": None},
        ...                "regularizers": [{"name": "spectral", "coef": 0.01}]})
        {'seed': 1, 'optimizer.lr': 0.001, 'regularizers': '[{name: spectral, coef: 0.01}]'}
    """
    import yaml

    out: dict[str, float | int | str | bool] = {}
    for key, value in flatten_config(config):
        if value is None:
            continue
        if isinstance(value, bool | int | float | str):
            out[key] = value
        else:
            out[key] = yaml.safe_dump(value, default_flow_style=True, sort_keys=False).strip()
    return out


def final_metrics(run_dir: str | Path) -> tuple[dict[str, float], int]:
    """The HParams metrics (:data:`HPARAM_METRICS`) of a run folder, from its event files.

    Read back from the events (a resumed run's included), so they cover the whole run, not only
    this process. Metrics a run does not have are left out.

    Returns:
        (tag → value, the last step logged), the step being where the metric scalars are written.
    """
    from plasticrl.trainers.experiments.plot import TASK_TAG, read_scalars
    from plasticrl.trainers.experiments.report import RETURN_TAG, Segment, segment_scores, task_segments

    scalars = read_scalars(run_dir)
    steps = [s for series_steps, _ in scalars.values() for s in series_steps]
    last = max(steps) if steps else 0
    out: dict[str, float] = {}
    ret_steps, returns = scalars.get(RETURN_TAG, ([], []))
    if returns:
        tail = returns[-_FINAL_EPISODES:]
        out["hparams/final_return"] = sum(tail) / len(tail)
    if scalars.get(EVAL_RETURN_TAG, ([], []))[1]:
        out["hparams/final_eval_return"] = scalars[EVAL_RETURN_TAG][1][-1]
    dormant = {t[len(_DORMANT_PREFIX) :]: s for t, s in scalars.items() if _is_dormant_total(t) and s[1]}
    if dormant:
        tau = _PREFERRED_TAU if _PREFERRED_TAU in dormant else min(dormant, key=float)
        out["hparams/final_dormant_fraction"] = dormant[tau][1][-1]
    task_steps, task_ids = scalars.get(TASK_TAG, ([], []))
    segments: list[Segment] = task_segments(task_steps, task_ids, last) if task_steps else []
    if returns and len(segments) > 1:
        from plasticrl.trainers.experiments.report import RunData

        run = RunData(Path(run_dir), "", 0, last, last, (ret_steps, returns), tuple(segments))
        import numpy as np

        scores = segment_scores(run, np.full(1, np.nan), max(last, 1))
        first, final = scores[0][0], scores[-1][0]
        if math.isfinite(first) and math.isfinite(final):
            out["hparams/plasticity_gap"] = final - first
    return out, last


def _is_dormant_total(tag: str) -> bool:
    """``plasticity/dormant_fraction/tau_<τ>`` (the total, not a layer's tag) with a numeric τ."""
    if not tag.startswith(_DORMANT_PREFIX) or "/" in tag[len(_DORMANT_PREFIX) :]:
        return False
    try:
        float(tag[len(_DORMANT_PREFIX) :])
    except ValueError:
        return False
    return True


def check_tracking(cfg: Any) -> None:
    """Raise ValueError (one line) when ``cfg.logging.wandb`` is set but ``wandb`` is missing.

    Called before the run folder is made, so a missing extra never leaves a half-started run.
    """
    if (
        getattr(cfg.logging, "wandb", None) is not None
        and getattr(cfg.logging.wandb, "mode", "") != "disabled"
    ):
        _import_wandb()


def wandb_settings(config: Mapping[str, Any]) -> WandbConfig | None:
    """The ``logging.wandb`` section of a resolved config dict, or None when it is unset.

    Example:
        >>> wandb_settings({"logging": {"wandb": {"project": "p", "tags": ["a"], "mode": "offline"}}})
        WandbConfig(project='p', entity=None, group=None, tags=('a',), mode='offline')
        >>> wandb_settings({"logging": {"dir": "runs"}}) is None
        True
    """
    section = config.get("logging", {}).get("wandb") if isinstance(config.get("logging"), Mapping) else None
    if section is None:
        return None
    if isinstance(section, WandbConfig):
        return section
    values = dict(section)
    if "tags" in values:
        values["tags"] = tuple(values["tags"] or ())
    return WandbConfig(**values)


def open_logger(
    config: Mapping[str, Any], run_dir: str | Path, *, start_step: int, resumed: bool
) -> TensorBoardLogger:
    """The logger of a run: TensorBoard events, the config text, HParams at close, W&B if configured.

    Args:
        config: the resolved config as a nested dict (``config_to_dict(cfg)``).
        run_dir: the run folder.
        start_step: the step the loop starts from (the checkpoint's on resume).
        resumed: whether this continues a checkpoint: events a crashed run logged after it are
            hidden, the config text is not written twice, and W&B continues the stored run id.
    """
    trackers: list[Tracker] = []
    settings = wandb_settings(config)
    if settings is not None and settings.mode != "disabled":
        trackers.append(WandbTracker(run_dir, config, settings))
    logger = TensorBoardLogger(
        run_dir,
        purge_step=start_step + 1 if resumed else None,
        trackers=trackers,
        hparams=hparam_values(config),
    )
    if not resumed:
        logger.text("hyperparameters", config_markdown(dict(flatten_config(config))))
    return logger


def config_markdown(flat: Mapping[str, object]) -> str:
    """A two-column markdown table of ``key → value``."""
    rows = "\n".join(f"|{key}|{value}|" for key, value in flat.items())
    return f"|param|value|\n|-|-|\n{rows}"
