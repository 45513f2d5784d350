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
    TASK_STEP_TAG: the task id drawn as a step function (beside ``env/task_id``'s change points).
    default_layout: the custom-scalars categories every run gets (the task as a step, interventions).
    plasticity_layout: a custom-scalars chart for every family of ``plasticity/*`` tags (pure).
    merge_layouts: custom-scalars layouts merged category by category (pure).

Tags follow CleanRL (``charts/…``, ``losses/…``) so that existing tooling reads them; W&B receives
the same tags with ``global_step`` (the env step) as their x-axis.

``torch.utils.tensorboard`` and ``wandb`` are imported when a logger is made, so the config module
can import :class:`WandbConfig` from here cheaply.
"""

from __future__ import annotations

import math
import os
import re
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
    "RETURN_TAG",
    "UNCLIPPED_RETURN_TAG",
    "EVAL_RETURN_TAG",
    "hparam_values",
    "sibling_differences",
    "final_metrics",
    "open_logger",
    "wandb_settings",
    "check_tracking",
    "config_markdown",
    "flatten_config",
    "TASK_TAG",
    "TASK_STEP_TAG",
    "TASK_POINTS",
    "default_layout",
    "plasticity_layout",
    "merge_layouts",
]

WANDB_ID_NAME = "wandb_run_id"
"""File in the run folder holding the W&B run id (one line), so ``--resume`` continues that run."""

RETURN_TAG = "charts/episodic_return"
"""Return of each finished training episode, in the rewards the agent learns from."""

UNCLIPPED_RETURN_TAG = "charts/episodic_return_unclipped"
"""Return of each finished training episode in the env's own rewards, logged when a wrapper
(``ClipTrainingReward``, reward normalisation under it) changes the rewards the agent sees."""

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

TASK_TAG = "env/task_id"
"""The task id, one point where the run starts and one at each change (what reports read:
``plasticrl.trainers.experiments.plot.TASK_TAG``)."""

TASK_STEP_TAG = "env/task_id_step"
"""The same task id drawn as a step function. TensorBoard joins a tag's points by straight lines,
so ``env/task_id``'s change points draw ramps between switches. Here each switch at step s also
holds the previous id at s − 1, and the id in force is repeated at the logger's calls at most
every ``task_every`` steps (``open_logger``: ``total_steps // 1000``, so about 1000 points a run,
TensorBoard's own sampling) and at the last logged step. The line is flat on every task and
vertical at every switch; TensorBoard's smoothing (0.6 by default), an average over points,
catches up within a few points, well under 1 % of the run. Written by
:class:`TensorBoardLogger` whenever ``env/task_id`` is logged; reports never read it."""

TASK_POINTS = 1000
"""About how many :data:`TASK_STEP_TAG` points a run gets (``task_every = total_steps // 1000``)."""

_LAYERS, _WHOLE, _KINDS = "every layer", "whole network", "each parameter kind"
PLASTICITY_FAMILIES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "plasticity/dormant",
        (("dormant_persistent", "every τ and layer"), ("dormant_reactivated", "every τ and layer")),
    ),
    ("plasticity/features", (("effective_rank", "every head"), ("feature_norm", _WHOLE))),
    ("plasticity/isometry", (("jacobian_sv2_var", _LAYERS),)),
    (
        "plasticity/weights",
        tuple((f, _LAYERS) for f in ("weight_norm", "weight_dist_init", "weight_sv_max", "weight_sv_min"))
        + (("stable_rank", _LAYERS),),
    ),
    (
        "plasticity/optimizer",
        (("grad_norm", _WHOLE), ("param_rms", _WHOLE))
        + tuple((f, _KINDS) for f in ("sqrt_v_mean", "sqrt_v_max", "sqrt_v_min")),
    ),
    (
        "plasticity/ntk",
        tuple(
            (f, _WHOLE) for f in ("ntk_condition_number", "ntk_rank", "ntk_effective_rank", "ntk_lambda_max")
        ),
    ),
)
"""Custom-scalars category → the ``plasticity/<family>`` tag families charted in it, each with what
its lines are (one chart per family: its total and every layer / τ / parameter kind as lines).
The per-τ dormant charts, the isometry gaps, the Jacobian σ² means and the feature ranks come
from the probe's own layout (:func:`plasticrl.plasticity.metrics.custom_scalars_layout`), which
these complete."""

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
        wandb_dir = os.environ.get("WANDB_DIR") or str(run_dir)
        _after_existing_wandb_runs(Path(wandb_dir), run_id)
        self._wandb: Any = wandb
        self.run = wandb.init(
            project=settings.project,
            entity=settings.entity,
            group=settings.group,
            tags=list(settings.tags) or None,
            mode=settings.mode,
            name=run_dir.name,
            id=run_id,
            resume="allow",
            dir=wandb_dir,
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
        """Finish the W&B run; when no other W&B run is active in this process, wait for its files.

        ``run.finish()`` returns before W&B's service process has flushed and closed the run's
        ``.wandb`` log (it is told to, not waited for). When this was the process's last active
        W&B run, ``wandb.teardown()`` is called, which returns once the service has closed every
        file and exited: after ``close`` the run's files are complete (a ``wandb sync`` or a
        resume in this process reads all of it). A user's own concurrent W&B run is never
        finished by it: the service is then left running.
        """
        self.run.finish()
        # ``most_recent_active_run``: a property of wandb.setup()'s object (a method in some
        # versions); where it is missing, whether another run is active is unknown: leave the service.
        active = getattr(self._wandb.setup(), "most_recent_active_run", self)
        if callable(active):
            active = active()
        if active is None:
            self._wandb.teardown()


def _after_existing_wandb_runs(wandb_dir: Path, run_id: str) -> None:
    """Wait, if needed, until the clock has left the second in which run ``run_id`` last started.

    W&B names a run's local folder ``<mode>-<YYYYmmdd_HHMMSS>-<id>`` after its start second
    (local time). A resume of the same id started within that second (a short run resumed at once
    in one process) would get the same folder and overwrite the first part's ``.wandb`` log.
    """
    stamps = []
    for sub in ("wandb", ".wandb"):
        for path in (wandb_dir / sub).glob(f"*run-*-{run_id}"):
            stamp = path.name.split("-")[-2]
            if len(stamp) == 15 and stamp[8] == "_":
                stamps.append(stamp)
    while stamps and time.strftime("%Y%m%d_%H%M%S") <= max(stamps):
        time.sleep(0.05)


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
        write_default_layout: write :func:`default_layout` before the first scalars unless
            :meth:`layout` came first (False on a resume: the run's first event file has it, and
            TensorBoard reads a run's last layout).
        last_task: on a resume, ``(step, id)`` of the last ``env/task_id`` point before it, so the
            first switch after the resume is drawn as a step too (:data:`TASK_STEP_TAG`).
        task_every: repeat the task id in force in :data:`TASK_STEP_TAG` at most every this many
            steps (None: only around switches and at the end).
    """

    def __init__(
        self,
        run_dir: str | Path,
        purge_step: int | None = None,
        *,
        trackers: Sequence[Tracker] = (),
        hparams: Mapping[str, float | int | str | bool] | None = None,
        write_default_layout: bool = True,
        last_task: tuple[int, float] | None = None,
        task_every: int | None = None,
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        _after_existing_event_files(self.run_dir)
        self.writer = SummaryWriter(str(run_dir), purge_step=purge_step, flush_secs=30)
        self.trackers = list(trackers)
        self.hparams = None if hparams is None else dict(hparams)
        self._closed = False
        self._layout_pending = write_default_layout
        self._task = last_task  # (step, id) of the last task-step point written
        self.task_every = task_every
        self._last_step = -1  # the largest step logged by this process

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        """Write every scalar at ``step``, to the event file and to each tracker.

        ``env/task_id`` also writes :data:`TASK_STEP_TAG`: the previous id at ``step − 1``
        (when another task was in force before) and the new id at ``step``; other calls repeat
        the id in force when ``task_every`` steps have passed since its last point.
        """
        if self._layout_pending:
            self.layout({})
        if TASK_TAG in scalars:
            task = float(scalars[TASK_TAG])
            if self._task is not None and self._task[1] != task and step - 1 > self._task[0]:
                self._write({TASK_STEP_TAG: self._task[1]}, step - 1)
            scalars = {**scalars, TASK_STEP_TAG: task}
            self._task = (step, task)
        elif self._task is not None and self.task_every and step - self._task[0] >= self.task_every:
            self._task = (step, self._task[1])
            self.writer.add_scalar(TASK_STEP_TAG, self._task[1], step)  # TensorBoard only
        self._write(scalars, step)
        self._last_step = max(self._last_step, step)

    def _write(self, scalars: Mapping[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, float(value), step)
        for tracker in self.trackers:
            tracker.log(scalars, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Write a markdown text blob."""
        self.writer.add_text(tag, text, step)

    def layout(self, layout: Mapping[str, Any]) -> None:
        """Write the run's custom-scalars layout: ``layout`` merged with the logger's own charts.

        The result is ``layout`` (e.g. the probe's: every layer's dormant curve in one chart per
        τ), completed by :func:`plasticity_layout` when ``layout`` has ``plasticity/``
        categories, then :func:`default_layout` (the task id as a step, per-task returns,
        interventions). TensorBoard shows a run's last layout, so a run writes one, once: a
        later call replaces it.
        """
        self._layout_pending = False
        parts = [dict(layout)]
        if any(str(category).startswith("plasticity/") for category in layout):
            parts.append(plasticity_layout())
        self.writer.add_custom_scalars(merge_layouts(*parts, default_layout()))

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
        if self._task is not None and self._last_step > self._task[0]:  # the last task runs to the end
            self._write({TASK_STEP_TAG: self._task[1]}, self._last_step)
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
    from plasticrl.trainers.experiments.report import Segment, segment_scores, task_segments

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
        write_default_layout=not resumed,
        last_task=_last_task(Path(run_dir), start_step) if resumed else None,
        task_every=max(1, int(config.get("total_steps", 0)) // TASK_POINTS),
    )
    if not resumed:
        logger.text("hyperparameters", config_markdown(dict(flatten_config(config))))
    return logger


def _last_task(run_dir: Path, start_step: int) -> tuple[int, float] | None:
    """``(step, id)`` of the last ``env/task_id`` point at or before ``start_step`` in ``run_dir``."""
    from plasticrl.trainers.experiments.plot import read_scalars

    steps, ids = read_scalars(run_dir).get(TASK_TAG, ([], []))
    kept = [(s, v) for s, v in zip(steps, ids, strict=True) if s <= start_step]
    return (int(kept[-1][0]), float(kept[-1][1])) if kept else None


Layout = dict[str, dict[str, list[Any]]]
"""A custom-scalars layout: ``{category: {chart title: ["Multiline", [tag regex, ...]]}}``."""


def merge_layouts(*layouts: Mapping[str, Mapping[str, list[Any]]]) -> Layout:
    """Custom-scalars layouts merged: categories in first-seen order, a category's charts joined.

    A chart title already in a category keeps its first definition; a category without charts
    is left out (TensorBoard would show it empty).

    Example:
        >>> merge_layouts({"a": {"x": ["Multiline", ["^x$"]]}}, {"b": {}, "a": {"y": ["Multiline", ["^y$"]]}})
        {'a': {'x': ['Multiline', ['^x$']], 'y': ['Multiline', ['^y$']]}}
    """
    out: Layout = {}
    for layout in layouts:
        for category, charts in layout.items():
            merged = out.setdefault(category, {})
            for title, spec in charts.items():
                merged.setdefault(title, list(spec))
    return {category: charts for category, charts in out.items() if charts}


def default_layout() -> Layout:
    """The custom-scalars charts every run gets, whatever it measures.

    ``env/task``: the task id as a step function (:data:`TASK_STEP_TAG`) and the return of each
    task's episodes (``charts/episodic_return/task_<i>``), one line per task; ``interventions``:
    every ``interventions/*`` tag (ReDo, Shrink & Perturb, CBP counts). A chart whose tags a run
    never logs shows no data.
    """
    return {
        "env/task": {
            "Task id (a step at every task switch)": ["Multiline", [f"^{re.escape(TASK_STEP_TAG)}$"]],
            "Episodic return of each task (one line per task)": [
                "Multiline",
                [r"^charts/episodic_return/task_\d+$"],
            ],
        },
        "interventions": {"Interventions (every counter)": ["Multiline", [r"^interventions/.+$"]]},
    }


def plasticity_layout() -> Layout:
    """One custom-scalars chart per ``plasticity/*`` family of :data:`PLASTICITY_FAMILIES`.

    Each chart holds the family's total and every layer (or τ, or parameter kind) as its lines,
    titled in words with the quantity's unit, so every plasticity tag is in a named category of
    the Custom Scalars tab (the Scalars tab puts all of them in one ``plasticity`` group).

    Example:
        >>> layout = plasticity_layout()
        >>> layout["plasticity/weights"]["Weight norm — every layer [‖W‖_F]"]
        ['Multiline', ['^plasticity/weight_norm(/.*)?$']]
    """
    from plasticrl.trainers.experiments.plot import axis_label, tag_title

    out: Layout = {}
    for category, families in PLASTICITY_FAMILIES:
        charts: dict[str, list[Any]] = {}
        for family, lines in families:
            tag = f"plasticity/{family}"
            charts[f"{tag_title(tag)} — {lines} [{axis_label(tag)}]"] = ["Multiline", [f"^{tag}(/.*)?$"]]
        out[category] = charts
    return out


def config_markdown(flat: Mapping[str, object]) -> str:
    """A two-column markdown table of ``key → value``."""
    rows = "\n".join(f"|{key}|{value}|" for key, value in flat.items())
    return f"|param|value|\n|-|-|\n{rows}"
