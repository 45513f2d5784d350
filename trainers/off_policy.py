"""The off-policy training loop (DQN): act, step, store, update, log, checkpoint.

Contains:
    build_dqn: env, network, optimizer, regularizers, agent, replay buffer and interventions from a config.
    train_off_policy: the loop, reading top to bottom like CleanRL's ``dqn.py`` main block.

The loop owns the logger and the checkpoints (through :class:`plasticrl.trainers.session.Session`); the agent
only returns metric dicts. Each iteration is one vector-env step (``num_envs`` env steps);
``global_step`` counts env steps.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from plasticrl.agents.buffers import ReplayBuffer
from plasticrl.agents.dqn import DQNAgent, DQNConfig
from plasticrl.agents.networks import make_network
from plasticrl.envs.vector import envs_state, final_observations, make_vector_env, restore_envs
from plasticrl.plasticity.interventions import Intervention
from plasticrl.plasticity.probe import PlasticityProbe
from plasticrl.trainers.config import ExperimentConfig, config_to_dict
from plasticrl.trainers.learning import build_interventions, build_learning
from plasticrl.trainers.runfolder import make_run_dir
from plasticrl.trainers.session import Companions, Session, TrainResult, prepare_process, task_switched

__all__ = ["DQNSetup", "build_dqn", "train_off_policy"]


@dataclass
class DQNSetup:
    """Everything a DQN run is made of."""

    envs: gym.vector.VectorEnv
    agent: DQNAgent
    buffer: ReplayBuffer
    probe: PlasticityProbe | None
    """Plasticity metrics of the online network; None when ``metrics.every`` and ``ntk_every`` are 0."""
    interventions: list[Intervention] = dataclasses.field(default_factory=list)
    """The configured interventions, bound to the online network and its optimizer."""


def build_dqn(cfg: ExperimentConfig) -> DQNSetup:
    """Build the vector env, Q-network, optimizer, regularizers, agent, buffer and interventions of ``cfg``.

    Raises:
        ValueError: a non-Discrete action space, or interventions that cannot work with this
            network or optimizer (the envs are closed first).
    """
    agent_cfg = cfg.agent
    assert isinstance(agent_cfg, DQNConfig)
    device = torch.device(cfg.device)
    envs = make_vector_env(cfg.env, cfg.seed, cfg.nonstationary)
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    if not isinstance(act_space, gym.spaces.Discrete):
        raise ValueError(f"DQN needs a Discrete action space; {cfg.env.id!r} has {act_space}")
    q_net = make_network(obs_space, act_space, cfg.network).to(device)
    total_updates = math.ceil(max(cfg.total_steps - agent_cfg.learning_starts, 0) * agent_cfg.replay_ratio)
    learning = build_learning(q_net, cfg, total_updates)
    probe, optimizer = learning.probe, learning.optimizer
    # Independent streams for exploration and replay sampling, both fixed by the run seed.
    explore_seed, replay_seed = np.random.SeedSequence(cfg.seed).spawn(2)
    agent = DQNAgent(
        q_net,
        optimizer,
        agent_cfg,
        int(act_space.n),
        regularizers=learning.regularizers,
        scheduler=learning.scheduler,
        seed=explore_seed,
        device=device,
    )
    try:  # an impossible combination (e.g. ReDo on a constrained network) fails here, at start-up
        interventions = build_interventions(q_net, optimizer, cfg, obs_space, device)
    except BaseException:
        envs.close()
        raise
    buffer = ReplayBuffer(
        agent_cfg.buffer_size, obs_space, agent_cfg.obs_storage, seed=replay_seed, device=device
    )
    return DQNSetup(envs, agent, buffer, probe, interventions)


def train_off_policy(
    cfg: ExperimentConfig, run_dir: Path | None, resume_state: dict[str, Any] | None, *, quiet: bool = False
) -> TrainResult:
    """Train a DQN agent for ``cfg.total_steps`` env steps, from scratch or from ``resume_state``.

    Args:
        cfg: the resolved config.
        run_dir: the run folder; None creates a fresh one once everything is built (so a start-up
            error leaves no folder behind).
        resume_state: a checkpoint of this run to continue from.
        quiet: no progress line.
    """
    agent_cfg = cfg.agent
    assert isinstance(agent_cfg, DQNConfig)
    prepare_process(cfg)
    setup = build_dqn(cfg)
    envs, agent, buffer, probe = setup.envs, setup.agent, setup.buffer, setup.probe
    interventions = setup.interventions
    companions = Companions(cfg.seed, probe, interventions)
    episodes, probe_rng, intervention_rng = (
        companions.episodes,
        companions.probe_rng,
        companions.intervention_rng,
    )
    if run_dir is None:
        run_dir = make_run_dir(cfg)
    num_envs = cfg.env.num_envs

    # Loop state; everything here goes into the checkpoint.
    loop = _LoopState(next_target_update=agent_cfg.learning_starts + agent_cfg.target_update_every)
    if resume_state is None:
        obs, _ = envs.reset(seed=cfg.seed)
    else:
        envs.close()
        envs = restore_envs(resume_state["envs"], cfg.env, cfg.seed, cfg.nonstationary)
        obs = resume_state["obs"]
        agent.load_state_dict(resume_state["agent"])
        if resume_state["buffer"] is not None:
            buffer.load_state_dict(resume_state["buffer"])
        loop = _LoopState(**resume_state["loop"])
        companions.load_state_dict(resume_state)

    def checkpoint_state() -> dict[str, Any]:
        return {
            "config": config_to_dict(cfg),
            "global_step": loop.global_step,
            "agent": agent.state_dict(),
            "buffer": buffer.state_dict() if cfg.checkpoint.replay_buffer else None,
            "envs": envs_state(envs),
            "obs": obs,
            "loop": dataclasses.asdict(loop),
            **companions.state_dict(),
        }

    session = Session(cfg, run_dir, loop.global_step, resumed=resume_state is not None, quiet=quiet)
    logger, progress = session.logger, session.progress
    if probe is not None and resume_state is None:
        logger.layout(probe.layout())

    def measure(update_metrics: dict[str, torch.Tensor]) -> dict[str, float]:
        assert probe is not None
        idx = probe_rng.integers(0, len(buffer), size=cfg.metrics.probe_size)
        grad_norm = update_metrics.get("grad_norm")  # pre-clipping norm, when clipping is on
        return probe(
            buffer.get(idx).obs,
            ntk=probe.ntk_due(agent.updates),
            optimizer=agent.optimizer,
            grad_norm_value=None if grad_norm is None else float(grad_norm),
        )

    def intervention_probe(n: int) -> torch.Tensor:
        return buffer.get(intervention_rng.integers(0, len(buffer), size=n)).obs

    def intervene(step: int) -> None:
        switched, loop.task_switch_pending = loop.task_switch_pending, False
        for intervention in interventions:
            scalars = intervention.after_update(
                agent.updates, agent.q_net, agent.optimizer, intervention_probe, task_switched=switched
            )
            if scalars:
                logger.log(scalars, step)

    metrics: dict[str, torch.Tensor] = {}
    learning_clock: tuple[float, int] | None = None  # (time, step) when this process first updated

    def run_loop() -> int:
        nonlocal obs, metrics, learning_clock
        while loop.global_step < cfg.total_steps and not session.stop_requested:
            # ---- act and step the envs
            actions = agent.act(obs, loop.global_step)
            next_obs, rewards, terminations, truncations, infos = envs.step(actions)
            loop.global_step += num_envs
            step = loop.global_step
            # ---- store the real next observation; bootstrap through truncations only
            real_next_obs = final_observations(next_obs, infos, terminations | truncations)
            buffer.add(obs, real_next_obs, actions, rewards, terminations)
            obs = next_obs
            for scalars in episodes.record(infos):
                logger.log(scalars, step)
            if interventions and step >= agent_cfg.learning_starts and task_switched(infos):
                loop.task_switch_pending = True  # delivered with the next update
            # ---- learn
            if step >= agent_cfg.learning_starts:
                if learning_clock is None:
                    learning_clock = (time.perf_counter(), step)
                loop.update_credit += agent_cfg.replay_ratio * num_envs
                while loop.update_credit >= 1.0:
                    loop.update_credit -= 1.0
                    metrics = agent.update(buffer.sample(agent_cfg.batch_size))
                    if probe is not None and (probe.due(agent.updates) or probe.ntk_due(agent.updates)):
                        logger.log(measure(metrics), step)
                    if interventions:  # after the metrics: they see the network the update produced
                        intervene(step)
                if step >= loop.next_target_update:
                    agent.update_target()
                    loop.next_target_update += agent_cfg.target_update_every
            # ---- log and checkpoint
            if session.log_cadence.due(step):
                scalars = {f"losses/{k}": float(v) for k, v in metrics.items()}
                scalars |= {
                    "charts/SPS": session.sps(step),
                    "charts/epsilon": agent.epsilon(step),
                    "charts/learning_rate": agent.optimizer.param_groups[0]["lr"],
                }
                logger.log(scalars, step)
            progress.update(step, episodes)
            if session.checkpoint_cadence.due(step):
                session.save(checkpoint_state)
        return loop.global_step

    status, _ = session.run(run_loop, checkpoint_state)
    progress.close(loop.global_step, episodes)
    envs.close()
    learning_sps = None
    if learning_clock is not None and loop.global_step > learning_clock[1]:
        learning_sps = (loop.global_step - learning_clock[1]) / (session.t_end - learning_clock[0])
    return TrainResult(
        run_dir=run_dir,
        status=status,
        global_step=loop.global_step,
        updates=agent.updates,
        recent_return=episodes.mean_return(),
        sps=(loop.global_step - session.start_step) / max(session.t_end - session.t_start, 1e-9),
        learning_sps=learning_sps,
        agent=agent,
    )


@dataclasses.dataclass
class _LoopState:
    """The DQN loop's counters (checkpointed)."""

    global_step: int = 0
    update_credit: float = 0.0  # fractional updates owed (replay_ratio)
    next_target_update: int = 0
    task_switch_pending: bool = False  # a task switch not yet handed to the interventions
