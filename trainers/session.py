"""What every training loop shares, so that a loop keeps only its algorithm.

Set-up, logging cadence, episode statistics, Ctrl-C, NaN stops and checkpoints live here; the
loops (``off_policy``, ``on_policy``) call them.

Contains:
    prepare_process: seed everything and set torch's thread count, once per run.
    EpisodeStats: recent returns, per-task returns and the current task, from vector-env infos.
    task_switched: whether sub-env 0's task changed at this vector step (for interventions).
    Cadence: "every N steps" bookkeeping that survives resume.
    Session: the run's logger, progress line, interrupt handler and checkpoint writer; its
        ``run`` method drives a loop body and turns Ctrl-C and NaN losses into statuses.
    Companions: what both loops carry beside their algorithm (episode statistics, the metrics
        probe, the interventions, their random streams, the global generators), checkpointed as one.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from plasticrl.agents.common import NonFiniteLossError
from plasticrl.plasticity.interventions import Intervention
from plasticrl.plasticity.probe import PlasticityProbe
from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, save_checkpoint
from plasticrl.trainers.config import ExperimentConfig, config_to_dict
from plasticrl.trainers.interrupt import GracefulInterrupt
from plasticrl.trainers.logging import TensorBoardLogger, config_markdown
from plasticrl.trainers.progress import Progress
from plasticrl.trainers.runlock import lock_run_dir, unlock_run_dir
from plasticrl.trainers.seeding import rng_state, seed_everything, set_rng_state

__all__ = [
    "prepare_process",
    "EpisodeStats",
    "task_switched",
    "Cadence",
    "Session",
    "TrainResult",
    "NONFINITE_NAME",
]

NONFINITE_NAME = "nonfinite_stop.pt"


@dataclass(frozen=True)
class TrainResult:
    """What a training loop returns: where the run is, how it ended and how fast it went."""

    run_dir: Path
    """The run folder."""
    status: str
    """``finished``, ``interrupted`` (checkpoint written) or ``stopped: <reason>`` (NaN/inf loss)."""
    global_step: int
    """Env steps done (summed over sub-envs)."""
    updates: int
    """Agent updates done (DQN: gradient steps; PPO: rollouts learned from)."""
    recent_return: float | None
    """Mean return of the last 20 episodes; None before the first one ended."""
    sps: float
    """Env steps per second of this process."""
    agent: Any
    """The trained agent (``DQNAgent`` or ``PPOAgent``)."""
    learning_sps: float | None = None
    """Off-policy: env steps per second once updates started (None before ``learning_starts``)."""
    grad_steps: int | None = None
    """On-policy: minibatch gradient steps done."""
    rollout_seconds: float | None = None
    """On-policy: seconds spent collecting rollouts in this process."""
    update_seconds: float | None = None
    """On-policy: seconds spent learning in this process."""


def prepare_process(cfg: ExperimentConfig) -> None:
    """Seed python/numpy/torch and set torch's intra-op threads (before anything is built)."""
    seed_everything(cfg.seed, deterministic=cfg.deterministic)
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)


class EpisodeStats:
    """Episode returns and tasks seen in a vector env's infos (same-step autoreset).

    ``record(infos)`` returns scalar dicts: one per finished episode (``charts/episodic_return``,
    ``charts/episodic_length`` and, in a non-stationary env, ``charts/episodic_return/task_<i>``
    for the finished episode's task), plus ``env/task_id`` at the exact step where sub-env 0's
    active task changes. ``env/task_id`` has this one meaning, so its steps are the task
    boundaries (``plasticrl plot`` draws them).

    Tasks are announced, not repeated on every step (Note [Task announcements] in
    :mod:`plasticrl.envs.nonstationary`): ``infos["task_id"]`` holds, for the sub-envs its mask
    ``_task_id`` marks, the task they run from this step on (a reset's, which same-step
    autoreset puts in the infos of the step that ended the episode, or the first step's
    repetition). ``tasks`` keeps every sub-env's last announced task; an episode that ends at a
    step ran the task announced before it (counting a first step's repetition, which an episode
    of one step has in ``infos["final_info"]``).
    """

    def __init__(self, window: int = 20) -> None:
        self.recent: collections.deque[float] = collections.deque(maxlen=window)
        self.task_id: int | None = None  # sub-env 0's current task
        self.tasks: np.ndarray | None = None  # every sub-env's current task, -1 until announced

    def record(self, infos: Mapping[str, Any]) -> list[dict[str, float]]:
        """Update from one step's infos; return the scalars of the episodes that ended."""
        out: list[dict[str, float]] = []
        # A step that ended an episode announced in its own info only if it was a first step.
        self._track(infos.get("final_info", {}))
        if "episode" in infos:
            episode = infos["episode"]
            for i in np.flatnonzero(infos["_episode"]):
                ret = float(episode["r"][i])
                self.recent.append(ret)
                scalars = {"charts/episodic_return": ret, "charts/episodic_length": float(episode["l"][i])}
                if self.tasks is not None and self.tasks[i] >= 0:
                    scalars[f"charts/episodic_return/task_{int(self.tasks[i])}"] = ret
                out.append(scalars)
        self._track(infos)  # resets (autoreset ones included) and first steps
        if self.tasks is not None and self.tasks[0] >= 0 and self.tasks[0] != self.task_id:
            self.task_id = int(self.tasks[0])
            out.insert(0, {"env/task_id": float(self.task_id)})
        return out

    def _track(self, infos: Mapping[str, Any]) -> None:
        """Take the tasks that ``infos`` announces (``task_id`` where ``_task_id`` is set)."""
        if "task_id" not in infos:
            return
        announced = np.asarray(infos["task_id"])
        if self.tasks is None:
            self.tasks = np.full(len(announced), -1, dtype=np.int64)
        present = infos.get("_task_id")
        where = slice(None) if present is None else np.asarray(present, dtype=bool)
        self.tasks[where] = announced[where]

    def mean_return(self) -> float | None:
        """Mean of the recent episode returns (None before the first episode ends)."""
        return sum(self.recent) / len(self.recent) if self.recent else None

    def progress_text(self) -> str:
        """The task part of the progress line."""
        return "" if self.task_id is None else f"task {self.task_id}"

    def state_dict(self) -> dict[str, Any]:
        """Recent returns and current tasks."""
        tasks = None if self.tasks is None else self.tasks.tolist()
        return {"recent": list(self.recent), "task_id": self.task_id, "tasks": tasks}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (a checkpoint without ``tasks`` learns them from announcements)."""
        self.recent.clear()
        self.recent.extend(state["recent"])
        self.task_id = state["task_id"]
        tasks = state.get("tasks")
        self.tasks = None if tasks is None else np.asarray(tasks, dtype=np.int64)


def task_switched(infos: Mapping[str, Any]) -> bool:
    """Whether sub-env 0 started an episode under a new task at this vector step.

    ``info["task_switched"]`` comes with the resets of :class:`envs.NonStationary` that start a
    new task (True) and its first reset (under same-step autoreset, in the step's infos, masked
    by ``_task_switched``; Note [Task announcements] in :mod:`plasticrl.envs.nonstationary`). Sub-env 0 is the
    reference, as for ``env/task_id`` in :class:`EpisodeStats`, so a switch counts once even when
    the sub-envs reach their episode boundaries at different steps.
    """
    if "task_switched" not in infos:
        return False
    present = infos.get("_task_switched")
    return bool(infos["task_switched"][0]) and (present is None or bool(present[0]))


class Companions:
    """Episode statistics, the plasticity probe and the interventions of a run, with their streams.

    Probe batches and intervention batches are drawn from their own generators (children 2 and 3
    of the run seed's ``SeedSequence``), so measuring or an idle intervention never changes the
    replay/rollout streams (Note [Probe batches] in :mod:`plasticrl.plasticity.interventions`).
    ``state_dict`` also captures the global python/numpy/torch generators.

    Args:
        seed: the run seed.
        probe: the plasticity probe, or None when metrics are off.
        interventions: the configured interventions.
    """

    def __init__(
        self, seed: int, probe: PlasticityProbe | None, interventions: Sequence[Intervention]
    ) -> None:
        self.episodes = EpisodeStats()
        self.probe = probe
        self.interventions = list(interventions)
        children = np.random.SeedSequence(seed).spawn(4)
        self.probe_rng = np.random.default_rng(children[2])
        self.intervention_rng = np.random.default_rng(children[3])

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint entries (merged into the loop's checkpoint dict)."""
        return {
            "episodes": self.episodes.state_dict(),
            "probe": None if self.probe is None else self.probe.state_dict(),
            "probe_rng": self.probe_rng.bit_generator.state,
            "interventions": [intervention.state_dict() for intervention in self.interventions],
            "intervention_rng": self.intervention_rng.bit_generator.state,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (the global generators last, as the loop resumes)."""
        self.episodes.load_state_dict(state["episodes"])
        if self.probe is not None and state["probe"] is not None:
            self.probe.load_state_dict(state["probe"])
        self.probe_rng.bit_generator.state = state["probe_rng"]
        for intervention, entry in zip(self.interventions, state["interventions"], strict=True):
            intervention.load_state_dict(entry)
        self.intervention_rng.bit_generator.state = state["intervention_rng"]
        set_rng_state(state["rng"])


class Cadence:
    """Fires once each time the step crosses a multiple of ``every``; ``every=0`` never fires.

    Example:
        >>> c = Cadence(100, step=0)
        >>> [s for s in (50, 100, 150, 260, 300) if c.due(s)]
        [100, 260, 300]
    """

    def __init__(self, every: int, step: int = 0) -> None:
        self.every = every
        self.next = (step // every + 1) * every if every else 0

    def due(self, step: int) -> bool:
        """Whether ``step`` reached the next multiple; if so, schedule the one after ``step``."""
        if not self.every or step < self.next:
            return False
        self.next = (step // self.every + 1) * self.every
        return True


StateFn = Callable[[], dict[str, Any]]


class Session:
    """A run's shared machinery around a loop: run folder, logger, progress, Ctrl-C, checkpoints.

    The session holds the run folder's lock (:mod:`plasticrl.trainers.runlock`; taken by whoever made or
    resumed the folder, else here) until :meth:`run` has written the last checkpoint.

    Args:
        cfg: the resolved config.
        run_dir: the run folder (created by the caller once everything is built).
        start_step: the global step the loop starts from (non-zero on resume).
        resumed: whether this continues a checkpoint (hides events logged after it).
        quiet: no progress line.
    """

    def __init__(
        self, cfg: ExperimentConfig, run_dir: Path, start_step: int, *, resumed: bool, quiet: bool
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        lock_run_dir(run_dir)  # a no-op when the caller took it (make_run_dir, resume)
        # Hide what a crashed run logged after its checkpoint; the checkpoint's own step stays.
        self.logger = TensorBoardLogger(run_dir, purge_step=start_step + 1 if resumed else None)
        if not resumed:
            flat = dict(_flatten(config_to_dict(cfg)))
            self.logger.text("hyperparameters", config_markdown(flat))
        self.progress = Progress(cfg.total_steps, start_step, enabled=cfg.logging.progress and not quiet)
        self.log_cadence = Cadence(cfg.logging.every, start_step)
        self.checkpoint_cadence = Cadence(cfg.checkpoint.every, start_step)
        self.interrupt = GracefulInterrupt()
        self.start_step = start_step
        self.t_start = time.perf_counter()
        self.t_end = self.t_start

    def sps(self, step: int) -> float:
        """Env steps per second of this process so far (the progress line's figure)."""
        return self.progress.sps(step)

    @property
    def stop_requested(self) -> bool:
        """Ctrl-C was pressed: the loop should finish its iteration and return."""
        return self.interrupt.requested

    def save(self, state: StateFn, name: str = CHECKPOINT_NAME) -> Path:
        """Write ``state()`` atomically into the run folder."""
        return save_checkpoint(state(), self.run_dir / name)

    def run(self, loop: Callable[[], int], state: StateFn) -> tuple[str, int]:
        """Drive ``loop`` (which returns the final global step) and write the final checkpoint.

        Returns:
            (status, global step): status is ``finished``, ``interrupted`` (Ctrl-C; checkpoint
            written at a consistent point) or ``stopped: <reason>`` (a NaN/inf loss; the state,
            still the last good one, goes to ``nonfinite_stop.pt`` and ``checkpoint.pt`` is kept).
        """
        status = "finished"
        step = self.start_step
        try:
            try:
                with self.interrupt:
                    step = loop()
                if self.interrupt.requested:
                    status = "interrupted"
            except NonFiniteLossError as exc:
                status = f"stopped: {exc}"
                self.save(state, NONFINITE_NAME)
            finally:
                self.t_end = time.perf_counter()
                self.logger.close()
            if not status.startswith("stopped"):
                self.save(state)
        finally:
            unlock_run_dir(self.run_dir)
        return status, step


def _flatten(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, dict) and tree:
        out: list[tuple[str, Any]] = []
        for key, value in tree.items():
            out.extend(_flatten(value, f"{prefix}{key}."))
        return out
    return [(prefix[:-1], tree)]
