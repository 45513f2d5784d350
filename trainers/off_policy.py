"""The off-policy training loop (DQN, and any agent that follows ``OffPolicyAgent``).

Contains:
    OffPolicyAgent: the small protocol the loop drives (act, update, after-env-step hook, scalars).
    OffPolicySetup / build_off_policy: env, network, optimizer, regularizers, agent, replay buffer
        and interventions from a config.
    OffPolicyState: the loop's counters and current observations (checkpointed).
    train_off_policy: the loop, reading top to bottom like CleanRL's ``dqn.py`` main block.

The loop owns the logger and the checkpoints (through :class:`plasticrl.trainers.session.Session`);
the agent only returns metric dicts. Each iteration is one vector-env step (``num_envs`` env steps);
``global_step`` counts env steps.

A second off-policy agent is an agent file: a config class with the off-policy keys
(``OffPolicyConfig``) and an agent class with ``loop = "off_policy"``, ``make_model``,
``from_parts`` and the methods of ``OffPolicyAgent``, registered in ``plasticrl.agents.AGENTS``
with its config class as options. :class:`plasticrl.agents.dqn.DQNAgent` is the example.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from plasticrl.agents import AGENTS
from plasticrl.agents.buffers import Batch, ObsStorage, ReplayBuffer
from plasticrl.envs.vector import final_observations, make_vector_env
from plasticrl.plasticity.interventions import Intervention
from plasticrl.plasticity.probe import PlasticityProbe
from plasticrl.trainers.config import ExperimentConfig, config_to_dict
from plasticrl.trainers.learning import build_interventions, build_learning, reset_optimizer_state
from plasticrl.trainers.runfolder import make_run_dir
from plasticrl.trainers.seeding import stream
from plasticrl.trainers.session import (
    Companions,
    Session,
    TrainResult,
    envs_checkpoint,
    prepare_process,
    restore_envs_checkpoint,
    task_switched,
)
from torch import Tensor, nn

__all__ = [
    "OffPolicyConfig",
    "OffPolicyAgent",
    "OffPolicySetup",
    "OffPolicyState",
    "build_off_policy",
    "train_off_policy",
]


class OffPolicyConfig(Protocol):
    """The ``agent`` keys the off-policy loop reads (``DQNConfig`` has them)."""

    @property
    def learning_starts(self) -> int:
        """Env steps of acting before the first update."""
        ...

    @property
    def replay_ratio(self) -> float:
        """Gradient updates per env step."""
        ...

    @property
    def batch_size(self) -> int:
        """Transitions per update."""
        ...

    @property
    def buffer_size(self) -> int:
        """Replay capacity in transitions."""
        ...

    @property
    def obs_storage(self) -> ObsStorage:
        """How the replay buffer stores observations."""
        ...


class OffPolicyAgent(Protocol):
    """What the off-policy loop calls on an agent, in the order it calls it."""

    optimizer: torch.optim.Optimizer
    updates: int

    @property
    def model(self) -> nn.Module:
        """The trained network (the probe and the interventions act on it)."""
        ...

    def act(self, obs: np.ndarray, step: int) -> np.ndarray:
        """Actions for the sub-envs' observations at env step ``step``."""
        ...

    def update(self, batch: Batch) -> Mapping[str, Tensor]:
        """One gradient step on a replay batch; detached scalar metrics (``losses/<key>``)."""
        ...

    def after_env_step(self, step: int) -> None:
        """Called once per vector step after the updates, once learning has started (DQN: target syncs)."""
        ...

    def scalars(self, step: int) -> dict[str, float]:
        """Extra scalars logged at the logging cadence (DQN: ``charts/epsilon``)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything to checkpoint."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        ...


@dataclass
class OffPolicySetup:
    """Everything an off-policy run is made of."""

    envs: gym.vector.VectorEnv
    agent: Any
    """The agent (an ``OffPolicyAgent``: ``DQNAgent`` for ``agent.name=dqn``)."""
    buffer: ReplayBuffer
    probe: PlasticityProbe | None
    """Plasticity metrics of the trained network; None when ``metrics.every`` and ``ntk_every`` are 0."""
    interventions: list[Intervention] = field(default_factory=list)
    """The configured interventions, bound to the trained network and its optimizer."""


def build_off_policy(cfg: ExperimentConfig) -> OffPolicySetup:
    """Build the vector env, network, optimizer, regularizers, agent, buffer and interventions of ``cfg``.

    The agent class is ``AGENTS.get(cfg.agent.name)``; its random streams are ``agent`` and
    ``replay`` (Note [Random streams] in :mod:`plasticrl.trainers.seeding`).

    Raises:
        ValueError: an action space the agent cannot act in, or interventions that cannot work
            with this network or optimizer (the envs are closed first).
    """
    agent_cfg: Any = cfg.agent
    agent_cls: Any = AGENTS.get(cfg.agent.name)
    device = torch.device(cfg.device)
    envs = make_vector_env(cfg.env, cfg.seed, cfg.nonstationary)
    try:
        obs_space, act_space = envs.single_observation_space, envs.single_action_space
        try:
            model = agent_cls.make_model(obs_space, act_space, cfg.network).to(device)
        except ValueError as exc:
            raise ValueError(f"env {cfg.env.id!r}: {exc}") from None
        total_updates = math.ceil(
            max(cfg.total_steps - agent_cfg.learning_starts, 0) * agent_cfg.replay_ratio
        )
        learning = build_learning(model, cfg, total_updates)
        agent = agent_cls.from_parts(
            model,
            learning.optimizer,
            agent_cfg,
            act_space,
            regularizers=learning.regularizers,
            scheduler=learning.scheduler,
            seed=stream(cfg.seed, "agent"),
            device=device,
        )
        # an impossible combination (e.g. ReDo on a constrained network) fails here, at start-up
        interventions = build_interventions(model, learning.optimizer, cfg, obs_space, device)
    except BaseException:
        envs.close()
        raise
    buffer = ReplayBuffer(
        agent_cfg.buffer_size,
        obs_space,
        agent_cfg.obs_storage,
        seed=stream(cfg.seed, "replay"),
        device=device,
    )
    return OffPolicySetup(envs, agent, buffer, learning.probe, interventions)


@dataclass
class OffPolicyState:
    """The off-policy loop's counters and the sub-envs' current observations (checkpointed)."""

    obs: np.ndarray
    """The observations the next action is chosen on."""
    global_step: int = 0
    """Env steps done, summed over sub-envs."""
    update_credit: float = 0.0
    """Fractional updates owed (``replay_ratio``)."""
    task_switch_pending: bool = False
    """A task switch not yet handed to the interventions (delivered with the next update)."""
    reset_pending: bool = False
    """A task switch whose optimizer reset (``optimizer.reset_on_task_switch``) waits for the next update."""
    optimizer_resets: int = 0
    """Optimizer resets done."""

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint entries: ``global_step``, ``obs`` and the counters under ``loop``."""
        counters = {k: v for k, v in asdict(self).items() if k != "obs"}
        return {"global_step": self.global_step, "obs": self.obs, "loop": counters}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> OffPolicyState:
        """Inverse of :meth:`state_dict` (a checkpoint's own entries)."""
        kept = ("update_credit", "task_switch_pending", "reset_pending", "optimizer_resets")
        counters = {k: v for k, v in state["loop"].items() if k in kept}
        return cls(obs=state["obs"], global_step=int(state["loop"]["global_step"]), **counters)


def _replay_obs(buffer: ReplayBuffer, rng: np.random.Generator, n: int) -> Tensor:
    """``n`` observations drawn uniformly from ``buffer`` with ``rng`` (an intervention's probe batch)."""
    return buffer.get(rng.integers(0, len(buffer), size=n)).obs


def _upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint written before DQN's agent owned its next target-sync step (it was the loop's)."""
    pending = state["loop"].get("next_target_update")
    if pending is not None and "next_target_update" not in state["agent"]:
        state = {**state, "agent": {**state["agent"], "next_target_update": pending}}
    return state


def train_off_policy(
    cfg: ExperimentConfig, run_dir: Path | None, resume_state: dict[str, Any] | None, *, quiet: bool = False
) -> TrainResult:
    """Train an off-policy agent for ``cfg.total_steps`` env steps, from scratch or from ``resume_state``.

    Args:
        cfg: the resolved config.
        run_dir: the run folder; None creates a fresh one once everything is built (so a start-up
            error leaves no folder behind).
        resume_state: a checkpoint of this run to continue from.
        quiet: no progress line.
    """
    agent_cfg: Any = cfg.agent
    prepare_process(cfg)
    setup = build_off_policy(cfg)
    envs, agent, buffer = setup.envs, setup.agent, setup.buffer
    companions = Companions(cfg.seed, setup.probe, setup.interventions, games=cfg.nonstationary.tasks)
    episodes, interventions = companions.episodes, companions.interventions
    if run_dir is None:
        run_dir = make_run_dir(cfg)
    num_envs = cfg.env.num_envs
    reset_on_switch = cfg.optimizer.reset_on_task_switch
    if resume_state is None:
        state = OffPolicyState(obs=envs.reset(seed=cfg.seed)[0])
    else:
        resume_state = _upgrade(resume_state)
        envs.close()
        state = OffPolicyState.from_state(resume_state)
        envs, state.obs = restore_envs_checkpoint(resume_state["envs"], cfg, state.global_step, state.obs)
        agent.load_state_dict(resume_state["agent"])
        if resume_state["buffer"] is not None:
            buffer.load_state_dict(resume_state["buffer"])
        companions.load_state_dict(resume_state)

    def checkpoint() -> dict[str, Any]:
        return {
            "config": config_to_dict(cfg),
            "agent": agent.state_dict(),
            "buffer": buffer.state_dict() if cfg.checkpoint.replay_buffer else None,
            "envs": envs_checkpoint(envs),
            **state.state_dict(),
            **companions.state_dict(),
        }

    intervention_obs = functools.partial(_replay_obs, buffer, companions.intervention_rng)
    metrics: Mapping[str, Tensor] = {}
    learning_clock: tuple[float, int] | None = None  # (time, step) when this process first updated
    session = Session(
        cfg, run_dir, state.global_step, quiet=quiet, state=checkpoint, agent=agent,
        resume_state=resume_state, probe=companions.probe, envs=envs,
    )  # fmt: skip
    with session:
        logger, callbacks = session.logger, session.callbacks
        hooks = bool(callbacks)  # your hooks (callbacks:); nothing is called when there are none
        while state.global_step < cfg.total_steps and not session.stop_requested:
            # ---- act and step the envs
            actions = agent.act(state.obs, state.global_step)
            next_obs, rewards, terminations, truncations, infos = envs.step(actions)
            state.global_step += num_envs
            step = state.global_step
            # ---- store the real next observation; bootstrap through truncations only
            real_next_obs = final_observations(next_obs, infos, terminations | truncations)
            buffer.add(state.obs, real_next_obs, actions, rewards, terminations)
            state.obs = next_obs
            for scalars in episodes.record(infos):
                logger.log(scalars, step)
            if hooks:
                if task_switched(infos):
                    callbacks.on_task_switch(step, int(episodes.task_id or 0))
                if callbacks.wants_steps:
                    callbacks.on_step(step, episodes.mean_return())
            if companions.probe is not None and task_switched(infos) and len(buffer):
                # the units dormant at the switch, on the ending task's latest observations
                companions.probe.task_switched(buffer.get(buffer.latest_indices(cfg.metrics.probe_size)).obs)
            if interventions and step >= agent_cfg.learning_starts and task_switched(infos):
                state.task_switch_pending = True  # delivered with the next update
            if reset_on_switch and task_switched(infos):
                state.reset_pending = True  # the next update starts from a fresh optimizer state
            # ---- learn
            if step >= agent_cfg.learning_starts:
                if learning_clock is None:
                    learning_clock = (time.perf_counter(), step)
                state.update_credit += agent_cfg.replay_ratio * num_envs
                while state.update_credit >= 1.0:
                    state.update_credit -= 1.0
                    if state.reset_pending:
                        reset_optimizer_state(agent.optimizer)
                        state.reset_pending, state.optimizer_resets = False, state.optimizer_resets + 1
                        logger.log({"optimizer/resets": float(state.optimizer_resets)}, step)
                    metrics = agent.update(buffer.sample(agent_cfg.batch_size))
                    if hooks:
                        callbacks.on_update(step, metrics)
                    if companions.measure_due(agent):
                        probe = _replay_obs(buffer, companions.probe_rng, cfg.metrics.probe_size)
                        logger.log(companions.measure(agent, probe, metrics), step)
                    if interventions:  # after the metrics: they see the network the update produced
                        switched, state.task_switch_pending = state.task_switch_pending, False
                        for scalars in companions.intervene(agent, intervention_obs, switched):
                            logger.log(scalars, step)
                agent.after_env_step(step)
            # ---- log and checkpoint
            if session.log_cadence.due(step):
                scalars = {f"losses/{k}": float(v) for k, v in metrics.items()}
                scalars |= {"charts/SPS": session.sps(step), **agent.scalars(step)}
                scalars["charts/learning_rate"] = agent.optimizer.param_groups[0]["lr"]
                logger.log(scalars, step)
            session.end_iteration(step, episodes, agent, envs)  # evaluation, progress, checkpoint
        session.end_run(state.global_step, agent, envs)
    session.progress.close(state.global_step, episodes)
    envs.close()
    learning_sps = None
    if learning_clock is not None and state.global_step > learning_clock[1]:
        learning_sps = (state.global_step - learning_clock[1]) / (session.t_end - learning_clock[0])
    return TrainResult(
        run_dir=run_dir,
        status=session.status,
        global_step=state.global_step,
        updates=agent.updates,
        recent_return=episodes.mean_return(),
        sps=(state.global_step - session.start_step) / session.seconds(),
        learning_sps=learning_sps,
        agent=agent,
    )
