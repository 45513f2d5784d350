"""What every training loop shares, so that a loop keeps only its algorithm.

Set-up, logging cadence, episode statistics, Ctrl-C, NaN stops and checkpoints live here; the
loops (``off_policy``, ``on_policy``) call them.

Contains:
    prepare_process: seed everything and set torch's thread count, once per run.
    EpisodeStats: recent returns, per-task returns and the current task, from vector-env infos.
    task_switched: whether sub-env 0's task changed at this vector step (for interventions).
    Cadence: "every N steps" bookkeeping that survives resume (:mod:`plasticrl.trainers.cadence`).
    Session: the run's logger, progress line, interrupt handler and checkpoint writer, as a
        context manager around the loop body: Ctrl-C and NaN losses become its ``status``, and
        leaving it writes the last checkpoint.
    Companions: what both loops carry beside their algorithm (episode statistics, the metrics
        probe, the interventions, their random streams, the global generators), checkpointed as
        one; ``measure`` and ``intervene`` are the two calls a loop makes after an update.
    env_pickle_problem / envs_checkpoint / restore_envs_checkpoint: the env's checkpoint entry,
        which an env that cannot be pickled leaves out instead of losing the whole checkpoint
        (Note [Envs that cannot be pickled]).

A loop reads top to bottom::

    with Session(cfg, run_dir, state.global_step, quiet=..., state=checkpoint, resume_state=...) as session:
        while state.global_step < cfg.total_steps and not session.stop_requested:
            ...  # act, step, store, learn, log
            session.end_iteration(step, episodes, agent, envs)  # evaluation, progress, checkpoint
        session.end_run(step, agent, envs)
    status = session.status
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import torch
from plasticrl.agents.common import NonFiniteLossError
from plasticrl.envs.vector import envs_state, make_vector_env, restore_envs
from plasticrl.plasticity.interventions import Intervention, ProbeSource
from plasticrl.plasticity.probe import PlasticityProbe
from plasticrl.trainers.cadence import Cadence
from plasticrl.trainers.callbacks import Callbacks, RunContext, build_callbacks
from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, checkpoint_identity, save_checkpoint
from plasticrl.trainers.config import ExperimentConfig, config_to_dict
from plasticrl.trainers.evaluation import Evaluator
from plasticrl.trainers.interrupt import GracefulInterrupt
from plasticrl.trainers.logging import RETURN_TAG, UNCLIPPED_RETURN_TAG, open_logger
from plasticrl.trainers.progress import Progress
from plasticrl.trainers.runlock import lock_run_dir, unlock_run_dir
from plasticrl.trainers.seeding import rng_state, seed_everything, set_rng_state, stream
from torch import Tensor, nn

__all__ = [
    "env_pickle_problem",
    "envs_checkpoint",
    "restore_envs_checkpoint",
    "prepare_process",
    "EpisodeStats",
    "task_switched",
    "Cadence",
    "Session",
    "TrainResult",
    "NONFINITE_NAME",
    "CheckpointWriteError",
]

NONFINITE_NAME = "nonfinite_stop.pt"
ENVS_NOT_SAVED = "not_saved"
"""The key of an env checkpoint entry that holds no env, only why (Note [Envs that cannot be pickled])."""

# Note [Envs that cannot be pickled]
# A checkpoint holds the pickled vector env, so that a resumed run continues mid-episode. An env
# holding a lock, a lambda, a socket or a C handle cannot be pickled; that must not cost the run
# its checkpoints (weights, optimizer, replay buffer, counters). So:
# - at start-up, the Session pickles the env once (env_pickle_problem) and, if that fails, says
#   so in one line on stderr, before the first step;
# - every checkpoint's env entry is then ``{"not_saved": reason}`` (envs_checkpoint), and the
#   rest of the checkpoint is written as usual;
# - a resumed run builds fresh envs from the config and resets them (restore_envs_checkpoint):
#   the agent, buffer and counters continue, the episodes in flight are lost, and a
#   non-stationary schedule's lifetime state (task, permutation) starts over.


def env_pickle_problem(envs: Any) -> str | None:
    """Why ``envs`` cannot go into a checkpoint, or None.

    E.g. ``TypeError: cannot pickle '_thread.lock' object``.
    """
    try:
        envs_state(envs)
    except Exception as exc:  # an env's own __getstate__ may raise anything
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


def envs_checkpoint(envs: Any) -> dict[str, Any]:
    """The checkpoint entry of ``envs``: its state, or ``{"not_saved": reason}`` when it cannot be pickled."""
    try:
        return envs_state(envs)
    except Exception as exc:
        return {ENVS_NOT_SAVED: f"{type(exc).__name__}: {exc}".splitlines()[0]}


def restore_envs_checkpoint(
    entry: Mapping[str, Any], cfg: ExperimentConfig, global_step: int, saved_obs: np.ndarray
) -> tuple[Any, np.ndarray]:
    """``(envs, obs)`` to resume from a checkpoint's env ``entry``.

    The saved envs and observations when the entry holds them; fresh envs from ``cfg``, reset with
    a seed drawn from the run seed and ``global_step``, and their first observations when it does
    not (Note [Envs that cannot be pickled]), saying so on stderr.
    """
    if ENVS_NOT_SAVED not in entry:
        return restore_envs(entry, cfg.env, cfg.seed, cfg.nonstationary), saved_obs
    print(
        f"plasticrl: warning: the checkpoint holds no env state ({entry[ENVS_NOT_SAVED]}); resuming at "
        f"step {global_step} with fresh envs (new episodes; a non-stationary schedule starts over)",
        file=sys.stderr,
    )
    envs = make_vector_env(cfg.env, cfg.seed, cfg.nonstationary)
    seed = int(np.random.SeedSequence([cfg.seed, global_step]).generate_state(1)[0])
    return envs, envs.reset(seed=seed)[0]


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

    ``record(infos)`` returns scalar dicts: for the episodes that ended at this step,
    ``charts/episodic_return``, ``charts/episodic_length`` and, in a non-stationary env,
    ``charts/episodic_return/task_<i>`` for the finished episode's task, plus ``env/task_id`` at the
    exact step where sub-env 0's active task changes. Where several episodes end at one vector
    step, each tag holds their mean (Note [One point per step]). ``env/task_id`` has this one
    meaning, so its steps are the task boundaries (``plasticrl plot`` draws them).

    With a game switch (``games``: the switch's task names), the game announced beside the task
    (``infos["game"]``) adds ``charts/episodic_return/game_<name>`` (per step, as above) and
    ``env/game`` (its index) where sub-env 0's game changes, so curves group by game across
    cycles even when ``task_id`` counts every (game, permutation) as a new task.

    Tasks are announced, not repeated on every step (Note [Task announcements] in
    :mod:`plasticrl.envs.nonstationary`): ``infos["task_id"]`` holds, for the sub-envs its mask
    ``_task_id`` marks, the task they run from this step on (a reset's, which same-step
    autoreset puts in the infos of the step that ended the episode, or the first step's
    repetition). ``tasks`` keeps every sub-env's last announced task; an episode that ends at a
    step ran the task announced before it (counting a first step's repetition, which an episode
    of one step has in ``infos["final_info"]``).
    """

    def __init__(self, window: int = 20, games: Sequence[str] = ()) -> None:
        self.recent: collections.deque[float] = collections.deque(maxlen=window)
        self.task_id: int | None = None  # sub-env 0's current task
        self.tasks: np.ndarray | None = None  # every sub-env's current task, -1 until announced
        self.game_names = tuple(games)  # a game switch's tasks, by index (``info["game"]``)
        self.game: int | None = None  # sub-env 0's current game
        self.games: np.ndarray | None = None  # every sub-env's current game, -1 until announced

    def record(self, infos: Mapping[str, Any]) -> list[dict[str, float]]:
        """Update from one step's infos; return the scalars of the episodes that ended."""
        # Note [One point per step]
        # ~~~~~~~~~~~~~~~~~~~~~~~~~~~
        # A vector of 2048 short-episode envs (the MinAtar protocol) ends ~100 episodes per step.
        # Writing each as its own event put ~100 scalars per tag at one step: TensorBoard shows one
        # of them, and the writes were most of a rollout's time (14 of 21 s per 3 rollouts). So each
        # tag gets one point per step, the mean over the episodes of this step that carry it (a
        # task's tag: the episodes of that task); with one episode ending, it is that episode's value.
        # ``recent`` (the progress line's mean return) still takes every episode.
        sums: dict[str, list[float]] = {}
        out: list[dict[str, float]] = []

        def add(tag: str, value: float) -> None:
            total = sums.setdefault(tag, [0.0, 0.0])
            total[0] += value
            total[1] += 1.0

        # A step that ended an episode announced in its own info only if it was a first step.
        self._track(infos.get("final_info", {}))
        if "episode" in infos:
            episode = infos["episode"]
            for i in np.flatnonzero(infos["_episode"]):
                ret = float(episode["r"][i])
                self.recent.append(ret)
                add(RETURN_TAG, ret)
                add("charts/episodic_length", float(episode["l"][i]))
                if self.tasks is not None and self.tasks[i] >= 0:
                    add(f"{RETURN_TAG}/task_{int(self.tasks[i])}", ret)
                if self.games is not None and 0 <= self.games[i] < len(self.game_names):
                    add(f"{RETURN_TAG}/game_{self.game_names[int(self.games[i])]}", ret)
        final = infos.get("final_info", {})
        if "unclipped_episode" in final:  # ClipTrainingReward (Atari): the game's own rewards
            for i in np.flatnonzero(final["_unclipped_episode"]):
                add(UNCLIPPED_RETURN_TAG, float(final["unclipped_episode"]["r"][i]))
        if sums:
            out.append({tag: total / count for tag, (total, count) in sums.items()})
        self._track(infos)  # resets (autoreset ones included) and first steps
        if self.tasks is not None and self.tasks[0] >= 0 and self.tasks[0] != self.task_id:
            self.task_id = int(self.tasks[0])
            out.insert(0, {"env/task_id": float(self.task_id)})
        if self.games is not None and self.games[0] >= 0 and self.games[0] != self.game:
            self.game = int(self.games[0])
            out.insert(0, {"env/game": float(self.game)})
        return out

    def _track(self, infos: Mapping[str, Any]) -> None:
        """Take the tasks (and games) that ``infos`` announces (``task_id`` where ``_task_id`` is set)."""
        self.tasks = _announced(infos, "task_id", self.tasks)
        if self.game_names:
            self.games = _announced(infos, "game", self.games)

    def mean_return(self) -> float | None:
        """Mean of the recent episode returns (None before the first episode ends)."""
        return sum(self.recent) / len(self.recent) if self.recent else None

    def progress_text(self) -> str:
        """The task part of the progress line."""
        return "" if self.task_id is None else f"task {self.task_id}"

    def state_dict(self) -> dict[str, Any]:
        """Recent returns and current tasks."""
        tasks = None if self.tasks is None else self.tasks.tolist()
        state: dict[str, Any] = {"recent": list(self.recent), "task_id": self.task_id, "tasks": tasks}
        if self.game_names:
            state["game"] = self.game
            state["games"] = None if self.games is None else self.games.tolist()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (a checkpoint without ``tasks`` learns them from announcements)."""
        self.recent.clear()
        self.recent.extend(state["recent"])
        self.task_id = state["task_id"]
        tasks = state.get("tasks")
        self.tasks = None if tasks is None else np.asarray(tasks, dtype=np.int64)
        self.game = state.get("game")
        games = state.get("games")
        self.games = None if games is None else np.asarray(games, dtype=np.int64)


def _announced(infos: Mapping[str, Any], key: str, current: np.ndarray | None) -> np.ndarray | None:
    """``current`` (every sub-env's last announced ``key``) updated where ``infos`` announces it."""
    if key not in infos:
        return current
    announced = np.asarray(infos[key])
    if current is None:
        current = np.full(len(announced), -1, dtype=np.int64)
    present = infos.get(f"_{key}")
    where = slice(None) if present is None else np.asarray(present, dtype=bool)
    current[where] = announced[where]
    return current


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


class LearningAgent(Protocol):
    """What the probe and the interventions need of an agent: its model, optimizer and update count."""

    @property
    def model(self) -> nn.Module:
        """The trained network."""
        ...

    optimizer: torch.optim.Optimizer
    updates: int


class Companions:
    """Episode statistics, the plasticity probe and the interventions of a run, with their streams.

    Probe batches and intervention batches are drawn from their own generators (the ``probe`` and
    ``intervention_batch`` streams, Note [Random streams] in :mod:`plasticrl.trainers.seeding`), so
    measuring or an idle intervention never changes the replay/rollout streams (Note [Probe
    batches] in :mod:`plasticrl.plasticity.interventions`). ``state_dict`` also captures the global
    python/numpy/torch generators.

    Args:
        seed: the run seed.
        probe: the plasticity probe, or None when metrics are off.
        interventions: the configured interventions.
        games: the tasks of a game switch (``nonstationary.tasks``), for per-game return tags.
    """

    def __init__(
        self,
        seed: int,
        probe: PlasticityProbe | None,
        interventions: Sequence[Intervention],
        games: Sequence[str] = (),
    ) -> None:
        self.episodes = EpisodeStats(games=games)
        self.probe = probe
        self.interventions = list(interventions)
        self.probe_rng = np.random.default_rng(stream(seed, "probe"))
        self.intervention_rng = np.random.default_rng(stream(seed, "intervention_batch"))

    def measure_due(self, agent: LearningAgent) -> bool:
        """Whether the probe measures after the update just taken."""
        return self.probe is not None and (self.probe.due(agent.updates) or self.probe.ntk_due(agent.updates))

    def measure(
        self, agent: LearningAgent, obs: Tensor, update_metrics: Mapping[str, Any]
    ) -> dict[str, float]:
        """The plasticity metrics of ``agent``'s model on probe observations ``obs``.

        ``update_metrics``' ``grad_norm`` (the pre-clipping norm, when clipping is on) is passed on
        so the probe does not recompute it.
        """
        assert self.probe is not None
        grad_norm = update_metrics.get("grad_norm")
        return self.probe(
            obs,
            ntk=self.probe.ntk_due(agent.updates),
            optimizer=agent.optimizer,
            grad_norm_value=None if grad_norm is None else float(grad_norm),
        )

    def intervene(
        self, agent: LearningAgent, probe_obs: ProbeSource, switched: bool
    ) -> list[dict[str, float]]:
        """Run every intervention after the update just taken; the scalars of those that acted.

        Called after :meth:`measure`, so the metrics see the network the update produced.
        """
        out = []
        for intervention in self.interventions:
            scalars = intervention.after_update(
                agent.updates, agent.model, agent.optimizer, probe_obs, task_switched=switched
            )
            if scalars:
                out.append(scalars)
        return out

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


StateFn = Callable[[], dict[str, Any]]


class CheckpointWriteError(OSError):
    """A checkpoint write the file system refused (``ENOSPC``, ``EDQUOT``, ``EROFS``, ...).

    Its message says whether the previous checkpoint is intact and how to resume; the temp file of
    the failed write is already removed (:func:`plasticrl.trainers.checkpoint.save_checkpoint`).
    """


class Session:
    """A run's shared machinery around a loop: run folder, logger, progress, Ctrl-C, checkpoints.

    A context manager around the loop body. Inside it the first Ctrl-C only sets
    :attr:`stop_requested` (the loop finishes its iteration); leaving it sets :attr:`status`,
    closes the logger and writes the last checkpoint — ``checkpoint.pt`` when the loop finished or
    was interrupted; on a NaN/inf loss (``NonFiniteLossError``, swallowed here) the state, still
    the last good one, goes to ``nonfinite_stop.pt`` and ``checkpoint.pt`` is kept. Any other error
    propagates, and no checkpoint is written over the last good one.

    The session holds the run folder's lock (:mod:`plasticrl.trainers.runlock`; taken by whoever
    made or resumed the folder, else here) until it has written the last checkpoint.

    Args:
        cfg: the resolved config.
        run_dir: the run folder (created by the caller once everything is built).
        start_step: the global step the loop starts from (non-zero on resume).
        quiet: no progress line.
        state: returns the checkpoint dict; called by :meth:`save` and on the way out.
        agent: the agent, for the callbacks' context.
        resume_state: the checkpoint resumed from, or None for a new run (a resumed run hides
            events logged after its checkpoint and restores the callbacks' state).
        probe: the plasticity probe: a new run writes its TensorBoard layout.
        envs: the training envs: pickled once here, so that an env that cannot go into
            checkpoints is reported at start-up (Note [Envs that cannot be pickled]).
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        run_dir: Path,
        start_step: int,
        *,
        quiet: bool,
        state: StateFn,
        agent: Any = None,
        resume_state: Mapping[str, Any] | None = None,
        probe: PlasticityProbe | None = None,
        envs: Any = None,
    ) -> None:
        resumed = resume_state is not None
        self.env_problem = None if envs is None else env_pickle_problem(envs)
        """Why the envs cannot be checkpointed, or None (checked once, at start-up)."""
        if self.env_problem is not None:
            print(
                f"plasticrl: warning: env {cfg.env.id!r} cannot be pickled ({self.env_problem}); "
                "checkpoints keep the agent, optimizer, replay buffer and counters but not the env "
                "state, and --resume starts fresh envs",
                file=sys.stderr,
            )
        self.cfg = cfg
        self.run_dir = run_dir
        self.state = state
        lock_run_dir(run_dir)  # a no-op when the caller took it (make_run_dir, resume)
        # TensorBoard (config text; the HParams summary at close; what a crashed run logged after
        # its checkpoint hidden) and W&B when logging.wandb is set.
        self.logger = open_logger(config_to_dict(cfg), run_dir, start_step=start_step, resumed=resumed)
        self.progress = Progress(
            cfg.total_steps, start_step, enabled=cfg.logging.progress and not quiet, run_dir=run_dir
        )
        self.log_cadence = Cadence(cfg.logging.every, start_step)
        self.checkpoint_cadence = Cadence(cfg.checkpoint.every, start_step)
        self.interrupt = GracefulInterrupt()
        self.evaluator = Evaluator(cfg, start_step)
        ctx = RunContext(cfg, run_dir, agent=agent, step=start_step, _log=self.logger.log)
        self.callbacks = Callbacks(build_callbacks(cfg.callbacks), ctx)
        """The configured callbacks (:mod:`plasticrl.trainers.callbacks`); falsy when none."""
        if resume_state is not None:
            self.callbacks.load_state_dict(resume_state.get("callbacks"))
        if probe is not None and not resumed:
            self.logger.layout(probe.layout())
        identity = None if resume_state is None else checkpoint_identity(dict(resume_state))
        self.generation = 0 if identity is None else int(identity["generation"])
        """Checkpoints written in this run so far (inside each checkpoint's identity)."""
        self.last_checkpoint_step: int | None = start_step if resumed else None
        """The step of the newest ``checkpoint.pt`` in the run folder, None before the first."""
        self.start_step = start_step
        self.step = start_step
        """The global step at the end of the last loop iteration."""
        self.status = "running"
        """``finished``, ``interrupted`` (Ctrl-C; checkpoint written at a consistent point) or
        ``stopped: <reason>`` (a NaN/inf loss), once the ``with`` block is left."""
        self.t_start = time.perf_counter()
        self.t_end = self.t_start

    def sps(self, step: int) -> float:
        """Env steps per second of this process so far (the progress line's figure)."""
        return self.progress.sps(step)

    @property
    def stop_requested(self) -> bool:
        """Ctrl-C was pressed or a callback stopped the run: the loop should finish its iteration."""
        return self.interrupt.requested or self.callbacks.stop_reason is not None

    def save(self, name: str = CHECKPOINT_NAME) -> Path:
        """Write the checkpoint (``state()``, with the callbacks' state) atomically into the run folder.

        Raises:
            CheckpointWriteError: the file system refused the write (a full disk): the message says
                that the previous checkpoint is intact and how to resume.
        """
        state = self.state()
        if self.callbacks:
            state = {**state, "callbacks": self.callbacks.state_dict()}
        self.generation += 1
        step = int(state.get("global_step", self.step))
        try:
            path = save_checkpoint(state, self.run_dir / name, generation=self.generation)
        except OSError as exc:
            raise CheckpointWriteError(self._write_failure(name, step, exc)) from exc
        if name == CHECKPOINT_NAME:
            self.last_checkpoint_step = step
        if self.callbacks:
            self.callbacks.on_checkpoint(step, path)
        return path

    def _kept(self) -> str:
        """What the run folder holds to resume from, in words."""
        if self.last_checkpoint_step is None:
            return f"no checkpoint of this run exists yet in {str(self.run_dir)!r}"
        return (
            f"its last checkpoint ({self.run_dir / CHECKPOINT_NAME}, step {self.last_checkpoint_step}) "
            "is intact"
        )

    def _write_failure(self, name: str, step: int, exc: OSError) -> str:
        """The one line for a checkpoint write the file system refused."""
        why = exc.strerror or str(exc)
        how = (
            f"; free space and resume with: plasticrl train --resume {self.run_dir}"
            if self.last_checkpoint_step is not None
            else "; free space and start the run again"
        )
        return f"could not write {name} at step {step} ({why}); {self._kept()}{how}"

    def end_iteration(self, step: int, episodes: EpisodeStats, agent: Any, envs: Any) -> None:
        """What ends every loop iteration: an evaluation when due, the progress line, a checkpoint when due.

        The evaluation plays in envs of its own with a stream of its own (``eval.*``,
        :class:`plasticrl.trainers.evaluation.Evaluator`): training is the same with it off.
        """
        self.step = step
        if self.evaluator.due(step):
            self.logger.log(self.evaluator.run(agent, envs, step), step)
        self.progress.update(step, episodes)
        if self.checkpoint_cadence.due(step):
            self.save()

    def end_run(self, step: int, agent: Any, envs: Any) -> None:
        """After the loop, inside the session: the final evaluation of a finished run."""
        if self.evaluator.final_due(step, self.stop_requested):
            self.logger.log(self.evaluator.run(agent, envs, step), step)

    def __enter__(self) -> Session:
        self.interrupt.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        try:
            try:
                self.interrupt.__exit__(exc_type, exc, tb)
                if isinstance(exc, NonFiniteLossError):
                    self.status = f"stopped: {exc}"
                    self.save(NONFINITE_NAME)
                elif exc is None:
                    reason = self.callbacks.stop_reason
                    if self.interrupt.requested:
                        self.status = "interrupted"
                    else:
                        self.status = "finished" if reason is None else f"early stop: {reason}"
                if self.callbacks and (exc is None or isinstance(exc, NonFiniteLossError)):
                    self.callbacks.on_end(self.callbacks.ctx.step, self.status)  # the logger is open
            finally:
                self.t_end = time.perf_counter()
                self.evaluator.close()
                self.logger.close()
                self.callbacks.ctx.detach_logger()  # what hooks return from here on is not logged
            if exc is None:
                self.save()
            elif isinstance(exc, Exception) and not isinstance(
                exc, NonFiniteLossError | CheckpointWriteError
            ):
                # The env's (or a hook's) own error: its traceback is the user's to read; say what is kept.
                exc.add_note(
                    f"plasticrl: the run stopped on this error after step {self.step}; {self._kept()}"
                    + (
                        f"; fix the cause and resume with: plasticrl train --resume {self.run_dir}"
                        if self.last_checkpoint_step is not None
                        else ""
                    )
                )
                exc.plasticrl_run_error = True  # type: ignore[attr-defined]  # the CLI shows its traceback
        finally:
            unlock_run_dir(self.run_dir)
        return isinstance(exc, NonFiniteLossError)

    def seconds(self) -> float:
        """Wall-clock seconds inside the session (to its end, once left)."""
        return max(self.t_end - self.t_start, 1e-9)
