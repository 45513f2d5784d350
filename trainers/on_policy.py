"""The on-policy training loop (PPO): rollout, GAE, update, log, checkpoint.

Contains:
    PPOSetup / build_ppo: actor-critic, optimizer, regularizers, agent, rollout storage, probe and
        interventions.
    train_on_policy: the loop, reading top to bottom like CleanRL's ``ppo.py`` main block.

The loop owns the logger and the checkpoints (through :class:`plasticrl.trainers.session.Session`); the agent
only returns metric dicts. Each iteration is one rollout of ``num_steps`` vector-env steps
(``num_steps × num_envs`` env steps, so a run ends at the first rollout boundary at or past
``total_steps``) followed by one PPO update; ``global_step`` counts env steps. Checkpoints, Ctrl-C
stops and metrics all fall between rollouts, where the rollout storage holds nothing that the
next rollout needs.

Note [Batched values]
    Acting runs the actor alone; V(s_t) of every step of a rollout comes from one critic forward
    over all ``num_steps × num_envs`` stored observations once the rollout is done (and V(s_T)
    from one more). The weights do not change during a rollout, so these are the values a
    per-step forward would give, and the per-step forward is the loop's largest cost after the
    env: on CartPole with separate 64-64 networks this makes the rollout about 20 % faster. A
    shared trunk pays one extra batched trunk forward per rollout for it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from plasticrl.agents.actor_critic import make_actor_critic
from plasticrl.agents.ppo import PPOAgent, PPOConfig, gae
from plasticrl.agents.rollout import Rollout, RolloutBatch
from plasticrl.envs.vector import envs_state, final_observations, make_vector_env, restore_envs
from plasticrl.plasticity.interventions import Intervention
from plasticrl.plasticity.probe import PlasticityProbe
from plasticrl.trainers.config import ExperimentConfig, config_to_dict
from plasticrl.trainers.learning import build_interventions, build_learning
from plasticrl.trainers.runfolder import make_run_dir
from plasticrl.trainers.session import Companions, Session, TrainResult, prepare_process, task_switched
from torch import Tensor

__all__ = ["PPOSetup", "build_ppo", "train_on_policy"]


# ---------------------------------------------------------------------------------------------
# Set-up


@dataclass
class PPOSetup:
    """Everything a PPO run is made of, besides its envs."""

    agent: PPOAgent
    rollout: Rollout
    probe: PlasticityProbe | None
    """Plasticity metrics of the whole actor-critic (actor and critic layers, tags prefixed
    ``actor.``/``critic.``); None when ``metrics.every`` and ``ntk_every`` are 0."""
    num_iterations: int
    """Rollouts (= PPO updates) that reach ``total_steps``; the horizon of the lr schedule."""
    interventions: list[Intervention] = field(default_factory=list)
    """The configured interventions, bound to the actor-critic and its optimizer."""


def build_ppo(cfg: ExperimentConfig, envs: gym.vector.VectorEnv) -> PPOSetup:
    """Build the actor-critic, optimizer, regularizers, agent, rollout storage and interventions of ``cfg``.

    Raises:
        ValueError: a rollout smaller than ``num_minibatches``, an unsupported action space, or
            interventions that cannot work with this network or optimizer.
    """
    agent_cfg = cfg.agent
    assert isinstance(agent_cfg, PPOConfig)
    device = torch.device(cfg.device)
    batch_size = agent_cfg.num_steps * cfg.env.num_envs
    if batch_size < agent_cfg.num_minibatches:
        raise ValueError(
            f"agent.num_minibatches={agent_cfg.num_minibatches} exceeds the rollout's "
            f"agent.num_steps × env.num_envs = {batch_size} samples"
        )
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    model = make_actor_critic(
        obs_space,
        act_space,
        cfg.network,
        shared_trunk=agent_cfg.shared_trunk,
        actor_head_gain=agent_cfg.actor_head_gain,
    ).to(device)
    num_iterations = math.ceil(cfg.total_steps / batch_size)
    learning = build_learning(model, cfg, num_iterations)
    agent = PPOAgent(
        model,
        learning.optimizer,
        agent_cfg,
        act_space,
        regularizers=learning.regularizers,
        scheduler=learning.scheduler,
        seed=np.random.SeedSequence(cfg.seed).spawn(1)[0],
        device=device,
    )
    rollout = Rollout(agent_cfg.num_steps, cfg.env.num_envs, obs_space, act_space, device)
    # An impossible combination (e.g. ReDo on a constrained network) fails here, at start-up.
    interventions = build_interventions(model, learning.optimizer, cfg, obs_space, device)
    return PPOSetup(agent, rollout, learning.probe, num_iterations, interventions)


# ---------------------------------------------------------------------------------------------
# The loop


def train_on_policy(
    cfg: ExperimentConfig, run_dir: Path | None, resume_state: dict[str, Any] | None, *, quiet: bool = False
) -> TrainResult:
    """Train a PPO agent for ``cfg.total_steps`` env steps, from scratch or from ``resume_state``.

    Args:
        cfg: the resolved config.
        run_dir: the run folder; None creates a fresh one once everything is built (so a start-up
            error leaves no folder behind).
        resume_state: a checkpoint of this run to continue from.
        quiet: no progress line.
    """
    agent_cfg = cfg.agent
    assert isinstance(agent_cfg, PPOConfig)
    prepare_process(cfg)
    envs = (
        make_vector_env(cfg.env, cfg.seed, cfg.nonstationary)
        if resume_state is None
        else restore_envs(resume_state["envs"], cfg.env, cfg.seed, cfg.nonstationary)
    )
    try:  # (async envs own worker processes: close them if the set-up fails)
        setup = build_ppo(cfg, envs)
        if run_dir is None:
            run_dir = make_run_dir(cfg)
    except BaseException:
        envs.close()
        raise
    agent, rollout, probe, interventions = setup.agent, setup.rollout, setup.probe, setup.interventions
    device, num_envs = agent.device, cfg.env.num_envs
    companions = Companions(cfg.seed, probe, interventions)
    episodes, probe_rng, intervention_rng = (
        companions.episodes,
        companions.probe_rng,
        companions.intervention_rng,
    )

    # Loop state; everything here goes into the checkpoint.
    global_step = 0
    if resume_state is None:
        obs, _ = envs.reset(seed=cfg.seed)
    else:
        obs = resume_state["obs"]
        global_step = int(resume_state["global_step"])
        agent.load_state_dict(resume_state["agent"])
        companions.load_state_dict(resume_state)

    def checkpoint_state() -> dict[str, Any]:
        return {
            "config": config_to_dict(cfg),
            "global_step": global_step,
            "agent": agent.state_dict(),
            "envs": envs_state(envs),
            "obs": obs,
            **companions.state_dict(),
        }

    session = Session(cfg, run_dir, global_step, resumed=resume_state is not None, quiet=quiet)
    logger, progress = session.logger, session.progress
    if probe is not None and resume_state is None:
        logger.layout(probe.layout())

    def as_tensor(array: np.ndarray) -> Tensor:
        return torch.as_tensor(array, dtype=torch.float32, device=device)  # no copy for float32 on CPU

    def measure(batch: RolloutBatch, update_metrics: dict[str, float]) -> dict[str, float]:
        assert probe is not None
        n, size = batch.obs.shape[0], cfg.metrics.probe_size
        idx = torch.as_tensor(probe_rng.choice(n, size=size, replace=size > n), device=device)
        return probe(
            batch.obs[idx],
            ntk=probe.ntk_due(agent.updates),
            optimizer=agent.optimizer,
            grad_norm_value=update_metrics.get("grad_norm"),  # mean pre-clipping norm of the update
        )

    def intervene(batch: RolloutBatch, switched: bool) -> None:
        def intervention_probe(n: int) -> Tensor:
            size = batch.obs.shape[0]
            return batch.obs[
                torch.as_tensor(intervention_rng.choice(size, size=n, replace=n > size), device=device)
            ]

        for intervention in interventions:
            scalars = intervention.after_update(
                agent.updates, agent.model, agent.optimizer, intervention_probe, task_switched=switched
            )
            if scalars:
                logger.log(scalars, global_step)

    metrics: dict[str, float] = {}
    seconds = {"rollout": 0.0, "update": 0.0}  # this process's time in each phase

    def run_loop() -> int:
        nonlocal obs, global_step, metrics
        while global_step < cfg.total_steps and not session.stop_requested:
            t_start = time.perf_counter()
            switched = False  # a task switch during this rollout, for the interventions
            # ---- rollout: num_steps steps of every sub-env, one actor forward per step
            for t in range(agent_cfg.num_steps):
                actions, log_probs = agent.act(rollout.put_obs(t, obs))
                next_obs, rewards, terminations, truncations, infos = envs.step(actions.cpu().numpy())
                global_step += num_envs
                rollout.put_step(t, actions, log_probs, rewards, terminations, truncations)
                # a truncated episode bootstraps from its final observation's value (gae)
                bootstrap = truncations & ~terminations
                if bootstrap.any():
                    final_obs = final_observations(next_obs, infos, bootstrap)[bootstrap]
                    where = torch.from_numpy(np.flatnonzero(bootstrap))
                    rollout.final_values[t, where] = agent.value(as_tensor(final_obs)).cpu()
                obs = next_obs
                for scalars in episodes.record(infos):
                    logger.log(scalars, global_step)
                switched = switched or (bool(interventions) and task_switched(infos))
            # ---- V(s_t) of the whole rollout in one critic forward (Note [Batched values]), then GAE
            values = agent.value(rollout.obs.flatten(0, 1))
            rollout.values.copy_(values.view(rollout.values.shape))
            next_values = rollout.next_values(agent.value(as_tensor(obs)))
            advantages, returns = gae(
                rollout.rewards,
                rollout.values,
                next_values,
                rollout.terminations,
                rollout.truncations,
                agent_cfg.gamma,
                agent_cfg.gae_lambda,
            )
            batch = rollout.batch(advantages, returns)
            # ---- learn: update_epochs × num_minibatches gradient steps
            t_update = time.perf_counter()
            learning_rate = agent.optimizer.param_groups[0]["lr"]  # the lr this update uses
            metrics = agent.update(batch)
            seconds["rollout"] += t_update - t_start
            seconds["update"] += time.perf_counter() - t_update
            if probe is not None and (probe.due(agent.updates) or probe.ntk_due(agent.updates)):
                logger.log(measure(batch, metrics), global_step)
            if interventions:  # after the metrics: they see the network the update produced
                intervene(batch, switched)
            # ---- log and checkpoint, between rollouts
            if session.log_cadence.due(global_step):
                scalars = {f"losses/{k}": v for k, v in metrics.items()}
                scalars |= {"charts/SPS": session.sps(global_step), "charts/learning_rate": learning_rate}
                logger.log(scalars, global_step)  # env/task_id is logged by episodes, at task changes
            progress.update(global_step, episodes)
            if session.checkpoint_cadence.due(global_step):
                session.save(checkpoint_state)
        return global_step

    status, _ = session.run(run_loop, checkpoint_state)
    progress.close(global_step, episodes)
    envs.close()
    return TrainResult(
        run_dir=run_dir,
        status=status,
        global_step=global_step,
        updates=agent.updates,
        grad_steps=agent.grad_steps,
        recent_return=episodes.mean_return(),
        sps=(global_step - session.start_step) / max(session.t_end - session.t_start, 1e-9),
        rollout_seconds=seconds["rollout"],
        update_seconds=seconds["update"],
        agent=agent,
    )
