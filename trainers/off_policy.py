"""The off-policy training loop (DQN): act, step, store, update, log, checkpoint.

Contains:
    build_dqn: env, network, optimizer, regularizers, agent and replay buffer from a config.
    train_off_policy: the loop, reading top to bottom like CleanRL's ``dqn.py`` main block.

The loop owns the logger and the checkpoints; the agent only returns metric dicts. Each iteration
is one vector-env step (``num_envs`` env steps); ``global_step`` counts env steps.
"""

from __future__ import annotations

import collections
import math
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.buffers import ReplayBuffer
from agents.common import NonFiniteLossError
from agents.dqn import DQNAgent, DQNConfig
from agents.networks import make_network
from envs.make import final_observations, make_vector_env
from plasticity.optimizers import make_optimizer, param_groups
from plasticity.regularizers import make_regularizers
from trainers.checkpoint import CHECKPOINT_NAME, save_checkpoint
from trainers.config import ExperimentConfig, config_to_dict
from trainers.interrupt import GracefulInterrupt
from trainers.logging import TensorBoardLogger, config_markdown
from trainers.progress import Progress
from trainers.run import TrainResult, make_lr_scheduler, make_run_dir
from trainers.seeding import rng_state, seed_everything, set_rng_state

__all__ = ["DQNSetup", "build_dqn", "train_off_policy"]


@dataclass
class DQNSetup:
    """Everything a DQN run is made of."""

    envs: gym.vector.VectorEnv
    agent: DQNAgent
    buffer: ReplayBuffer


def build_dqn(cfg: ExperimentConfig) -> DQNSetup:
    """Build the vector env, Q-network, optimizer, regularizers, agent and buffer of ``cfg``."""
    agent_cfg = cfg.agent
    assert isinstance(agent_cfg, DQNConfig)
    device = torch.device(cfg.device)
    envs = make_vector_env(cfg.env, cfg.seed, cfg.nonstationary)
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    if not isinstance(act_space, gym.spaces.Discrete):
        raise ValueError(f"DQN needs a Discrete action space; {cfg.env.id!r} has {act_space}")
    q_net = make_network(obs_space, act_space, cfg.network).to(device)
    groups = param_groups(q_net, iso_head=cfg.optimizer.iso_head)
    optimizer = make_optimizer(groups, cfg.optimizer)
    regularizers = make_regularizers(q_net, groups, cfg.regularizers)
    total_updates = math.ceil(max(cfg.total_steps - agent_cfg.learning_starts, 0) * agent_cfg.replay_ratio)
    scheduler = make_lr_scheduler(optimizer, cfg.optimizer, total_updates)
    # Independent streams for exploration and replay sampling, both fixed by the run seed.
    explore_seed, replay_seed = np.random.SeedSequence(cfg.seed).spawn(2)
    agent = DQNAgent(
        q_net,
        optimizer,
        agent_cfg,
        int(act_space.n),
        regularizers=regularizers,
        scheduler=scheduler,
        seed=explore_seed,
        device=device,
    )
    buffer = ReplayBuffer(
        agent_cfg.buffer_size, obs_space, agent_cfg.obs_storage, seed=replay_seed, device=device
    )
    return DQNSetup(envs, agent, buffer)


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
    seed_everything(cfg.seed, deterministic=cfg.deterministic)
    if cfg.torch_threads is not None:
        torch.set_num_threads(cfg.torch_threads)
    setup = build_dqn(cfg)
    envs, agent, buffer = setup.envs, setup.agent, setup.buffer
    if run_dir is None:
        run_dir = make_run_dir(cfg)
    num_envs = cfg.env.num_envs

    # Loop state; everything here goes into the checkpoint.
    global_step = 0
    update_credit = 0.0  # fractional updates owed (replay_ratio)
    next_target_update = agent_cfg.learning_starts + agent_cfg.target_update_every
    recent_returns: collections.deque[float] = collections.deque(maxlen=20)
    if resume_state is None:
        obs, _ = envs.reset(seed=cfg.seed)
    else:
        envs.close()
        envs = pickle.loads(resume_state["envs"])
        obs = resume_state["obs"]
        agent.load_state_dict(resume_state["agent"])
        if resume_state["buffer"] is not None:
            buffer.load_state_dict(resume_state["buffer"])
        loop = resume_state["loop"]
        global_step, update_credit = loop["global_step"], loop["update_credit"]
        next_target_update = loop["next_target_update"]
        recent_returns.extend(loop["recent_returns"])
        set_rng_state(resume_state["rng"])

    def checkpoint_state() -> dict[str, Any]:
        return {
            "config": config_to_dict(cfg),
            "global_step": global_step,
            "agent": agent.state_dict(),
            "buffer": buffer.state_dict() if cfg.checkpoint.replay_buffer else None,
            "envs": pickle.dumps(envs),
            "obs": obs,
            "loop": {
                "global_step": global_step,
                "update_credit": update_credit,
                "next_target_update": next_target_update,
                "recent_returns": list(recent_returns),
            },
            "rng": rng_state(),
        }

    # Hide what a crashed run logged after its checkpoint; the checkpoint's own step stays.
    logger = TensorBoardLogger(run_dir, purge_step=global_step + 1 if resume_state is not None else None)
    if resume_state is None:
        flat = {key: value for key, value in _flatten(config_to_dict(cfg))}
        logger.text("hyperparameters", config_markdown(flat))
    progress = Progress(cfg.total_steps, global_step, enabled=cfg.logging.progress and not quiet)
    next_log = (global_step // cfg.logging.every + 1) * cfg.logging.every
    next_ckpt = _next_multiple(global_step, cfg.checkpoint.every)
    metrics: dict[str, torch.Tensor] = {}
    status = "finished"
    t_start = time.perf_counter()
    start_step = global_step
    learning_clock: tuple[float, int] | None = None  # (time, step) when this process first updated
    task_id: int | None = None  # sub-env 0's current task, when the env is non-stationary
    interrupt = GracefulInterrupt()
    try:
        with interrupt:
            while global_step < cfg.total_steps and not interrupt.requested:
                # ---- act and step the envs
                actions = agent.act(obs, global_step)
                next_obs, rewards, terminations, truncations, infos = envs.step(actions)
                global_step += num_envs
                # ---- store the real next observation; bootstrap through truncations only
                real_next_obs = final_observations(next_obs, infos, terminations | truncations)
                buffer.add(obs, real_next_obs, actions, rewards, terminations)
                obs = next_obs
                if "episode" in infos:
                    for scalars in _episode_scalars(infos, recent_returns):
                        logger.log(scalars, global_step)
                if "task_id" in infos:
                    task_id = int(infos["task_id"][0])
                # ---- learn
                if global_step >= agent_cfg.learning_starts:
                    if learning_clock is None:
                        learning_clock = (time.perf_counter(), global_step)
                    update_credit += agent_cfg.replay_ratio * num_envs
                    while update_credit >= 1.0:
                        update_credit -= 1.0
                        metrics = agent.update(buffer.sample(agent_cfg.batch_size))
                    if global_step >= next_target_update:
                        agent.update_target()
                        next_target_update += agent_cfg.target_update_every
                # ---- log and checkpoint
                if global_step >= next_log:
                    next_log += cfg.logging.every
                    sps = (global_step - start_step) / max(time.perf_counter() - t_start, 1e-9)
                    scalars = {f"losses/{k}": float(v) for k, v in metrics.items()}
                    scalars |= {
                        **({"env/task_id": task_id} if task_id is not None else {}),
                        "charts/SPS": sps,
                        "charts/epsilon": agent.epsilon(global_step),
                        "charts/learning_rate": agent.optimizer.param_groups[0]["lr"],
                    }
                    logger.log(scalars, global_step)
                progress.update(global_step, _mean(recent_returns), _task_text(task_id))
                if next_ckpt and global_step >= next_ckpt:
                    next_ckpt = _next_multiple(global_step, cfg.checkpoint.every)
                    save_checkpoint(checkpoint_state(), run_dir / CHECKPOINT_NAME)
        if interrupt.requested:
            status = "interrupted"
    except NonFiniteLossError as exc:
        status = f"stopped: {exc}"
        # The parameters are still the last good ones (the agent raises before stepping). Keep
        # checkpoint.pt as it was and store this state beside it for inspection.
        save_checkpoint(checkpoint_state(), run_dir / "nonfinite_stop.pt")
    finally:
        t_end = time.perf_counter()
        progress.close(global_step, _mean(recent_returns))
        logger.close()
    if not status.startswith("stopped"):
        save_checkpoint(checkpoint_state(), run_dir / CHECKPOINT_NAME)
    envs.close()
    learning_sps = None
    if learning_clock is not None and global_step > learning_clock[1]:
        learning_sps = (global_step - learning_clock[1]) / (t_end - learning_clock[0])
    return {
        "run_dir": run_dir,
        "status": status,
        "global_step": global_step,
        "updates": agent.updates,
        "recent_return": _mean(recent_returns),
        "sps": (global_step - start_step) / max(t_end - t_start, 1e-9),
        "learning_sps": learning_sps,
        "agent": agent,
    }


def _episode_scalars(
    infos: dict[str, Any], recent_returns: collections.deque[float]
) -> list[dict[str, float]]:
    """One dict of ``charts/episodic_*`` (and per-task return, ``env/task_id``) per finished episode.

    Under same-step autoreset the step's ``infos`` already describe the next episode; the finished
    episode's task is in ``infos["final_info"]["task_id"]``.
    """
    episode = infos["episode"]
    final_info = infos.get("final_info", {})
    tasks = final_info.get("task_id") if "task_id" in final_info else None
    out = []
    for i in np.flatnonzero(infos["_episode"]):
        ret = float(episode["r"][i])
        recent_returns.append(ret)
        scalars = {"charts/episodic_return": ret, "charts/episodic_length": float(episode["l"][i])}
        if tasks is not None:
            task = int(tasks[i])
            scalars[f"charts/episodic_return/task_{task}"] = ret
            scalars["env/task_id"] = float(task)
        out.append(scalars)
    return out


def _task_text(task_id: int | None) -> str:
    return "" if task_id is None else f"task {task_id}"


def _next_multiple(step: int, every: int) -> int:
    """The first multiple of ``every`` above ``step``; 0 when ``every`` is 0 (disabled)."""
    return (step // every + 1) * every if every else 0


def _mean(values: collections.deque[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _flatten(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(tree, dict) and tree:
        out: list[tuple[str, Any]] = []
        for key, value in tree.items():
            out.extend(_flatten(value, f"{prefix}{key}."))
        return out
    return [(prefix[:-1], tree)]
