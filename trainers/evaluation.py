"""A trained run's agent, outside training: load it, act with it, evaluate it, record it.

Contains:
    Evaluator: evaluation during training (``eval.every``): episodes in envs of its own on the
        task the training envs run, with a random stream of its own.
    TrainedAgent: the trained network of a run with ``act(obs, greedy=...)`` and ``make_env()``.
    load: a finished (or interrupted) run folder → a :class:`TrainedAgent` that acts on raw
        observations; ``plasticrl.load`` in Python.
    evaluate: play a run's trained policy for N episodes, optionally recording videos.
    run_eval_command: the ``plasticrl eval RUN [--episodes N] [--policy P] [--video]`` subcommand
        (its arguments are parsed in :mod:`plasticrl.trainers.cli`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from plasticrl.trainers.cadence import Cadence
from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, load_checkpoint
from plasticrl.trainers.config import ExperimentConfig, applicable_only, config_from_dict

__all__ = ["Evaluator", "TrainedAgent", "load", "evaluate", "run_eval_command"]


class Evaluator:
    """Evaluation episodes during training, on the current task, leaving training untouched.

    At env step ``s`` (``due(s)``: every ``eval.every`` steps), :meth:`run` builds ``eval.episodes``
    envs exactly as the training sub-envs are built, sets each to the non-stationarity state of
    training sub-env 0 with its schedule stopped (so the evaluation runs the task training is on,
    permutation included, and never changes it), resets them with seeds drawn from the ``eval``
    stream's child ``s`` and plays one episode in each, all envs acting in one batch (a batched
    MinAtar run plays them in one batched env instead: :meth:`_run_batched`). Nothing it
    draws comes from a training generator, and the training envs are only read, so a run is
    bit-identical with evaluation on or off; and because each evaluation's seeds depend only on
    the run seed and the step, a resumed run evaluates exactly as an uninterrupted one.

    Args:
        cfg: the resolved config (``eval``, ``env``, ``nonstationary``, ``seed``).
        start_step: the step training starts from (evaluations already done are not repeated).
    """

    def __init__(self, cfg: ExperimentConfig, start_step: int = 0) -> None:
        self.cfg = cfg
        self.cadence = Cadence(cfg.eval.every, start_step)
        self.last_step: int | None = None
        self._envs: list[Any] = []  # built at the first evaluation, reused (each reset and re-set)

    def due(self, step: int) -> bool:
        """Whether an evaluation is due at env step ``step`` (schedules the next one)."""
        return bool(self.cfg.eval.every) and self.cadence.due(step)

    def final_due(self, step: int, interrupted: bool) -> bool:
        """Whether the run's end at ``step`` needs an evaluation of its own (not when interrupted)."""
        return (
            bool(self.cfg.eval.every)
            and not interrupted
            and step >= self.cfg.total_steps
            and self.last_step != step
        )

    def run(self, agent: Any, train_envs: Any, step: int) -> dict[str, float]:
        """Play the evaluation episodes; the scalars to log at ``step``.

        Args:
            agent: the training agent; its ``evaluation_actions(obs, greedy=, rng=, ...)`` acts.
            train_envs: the training vector env (read only: sub-env 0's non-stationarity state).
            step: the env step (seeds the evaluation).
        """
        from plasticrl.envs.make import build_sub_env
        from plasticrl.envs.vector import task_state
        from plasticrl.trainers.seeding import STREAMS

        cfg, ev = self.cfg, self.cfg.eval
        self.last_step = step
        rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(STREAMS["eval"], step)))
        frozen = None
        if cfg.nonstationary.kind is not None:
            frozen = {**task_state(train_envs), "next_change": None}  # the schedule stops here
        if cfg.env.vector == "batched":
            return self._run_batched(agent, frozen, rng)
        if not self._envs:
            self._envs = [build_sub_env(cfg.env, cfg.seed, 0, cfg.nonstationary) for _ in range(ev.episodes)]
        envs = self._envs
        seeds = rng.integers(0, 2**31 - 1, size=ev.episodes)
        observations = []
        for env, seed in zip(envs, seeds, strict=True):
            if frozen is not None:
                env.set_state(frozen)
            observations.append(env.reset(seed=int(seed))[0])
        task_id = int(getattr(envs[0], "task_id", 0))  # every eval env runs the same frozen task
        game = getattr(envs[0].unwrapped, "index", None)  # a game switch's TaskSet index
        returns = np.zeros(ev.episodes)
        active = np.ones(ev.episodes, dtype=bool)
        obs = np.stack(observations)
        for _ in range(ev.max_episode_steps):
            where = np.flatnonzero(active)
            actions = agent.evaluation_actions(
                obs[where], greedy=ev.policy == "greedy", rng=rng, epsilon=ev.epsilon
            )
            for i, action in zip(where, actions, strict=True):
                next_obs, reward, terminated, truncated, _ = envs[i].step(action)
                returns[i] += float(reward)
                obs[i] = next_obs
                if terminated or truncated:
                    active[i] = False
            if not active.any():
                break
        return self._scalars(returns, task_id, game)

    def _scalars(self, returns: np.ndarray, task_id: int, game: int | None) -> dict[str, float]:
        """The logged means of one evaluation's episode returns."""
        mean = float(returns.mean())
        scalars = {"eval/episodic_return": mean, f"eval/episodic_return/task_{task_id}": mean}
        tasks = self.cfg.nonstationary.tasks
        if game is not None and tasks and self.cfg.nonstationary.kind is not None:
            scalars[f"eval/episodic_return/game_{tasks[int(game)]}"] = mean
        return scalars

    def _run_batched(
        self, agent: Any, frozen: dict[str, Any] | None, rng: np.random.Generator
    ) -> dict[str, float]:
        """:meth:`run` for a batched MinAtar run: the episodes in one batched env of ``eval.episodes`` envs.

        The same games as the training envs (the package's, in distribution), on the frozen task,
        one episode per env, seeded from the ``eval`` stream; about 50× cheaper than stepping
        ``eval.episodes`` package envs one by one, which at the protocol's 128 episodes every
        0.5M steps would cost as much time as training.
        """
        from plasticrl.envs.batched_minatar import make_batched_vector_env

        cfg, ev = self.cfg, self.cfg.eval
        if not self._envs:
            env_cfg = dataclasses.replace(cfg.env, num_envs=ev.episodes)
            self._envs = [make_batched_vector_env(env_cfg, cfg.seed, cfg.nonstationary, tensors=False)]
        envs = self._envs[0]
        clock = getattr(envs.env, "clock", None)
        if frozen is not None:  # (a kind, so the batched env has a clock)
            assert clock is not None
            clock.set_state(frozen)
        obs, _ = envs.reset(seed=int(rng.integers(0, 2**31 - 1)))
        returns = np.zeros(ev.episodes)
        active = np.ones(ev.episodes, dtype=bool)
        for _ in range(ev.max_episode_steps):
            actions = agent.evaluation_actions(obs, greedy=ev.policy == "greedy", rng=rng, epsilon=ev.epsilon)
            obs, reward, terminated, truncated, _ = envs.step(actions)
            returns += np.where(active, reward, 0.0)
            active &= ~(terminated | truncated)
            if not active.any():
                break
        if clock is None:
            return self._scalars(returns, 0, None)
        below = clock.env.unwrapped
        return self._scalars(returns, clock.task_id, getattr(below, "index", None))

    def close(self) -> None:
        """Close the evaluation envs."""
        for env in self._envs:
            env.close()
        self._envs = []


class TrainedAgent:
    """The trained network of a run folder, acting on the observations its env produces.

    Made by :func:`load`. Observations are what :meth:`make_env`'s env returns (a single one, or
    a batch with a leading dimension); actions come back as an ``int`` (or an array for a batch).

    Attributes:
        config: the run's resolved config.
        network: the Q-network (DQN) or the actor-critic (PPO), in eval mode.
        global_step: the env step of the checkpoint it was loaded from.
        run_dir: the run folder.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        network: torch.nn.Module,
        observation_shape: tuple[int, ...],
        *,
        global_step: int,
        run_dir: Path,
        seed: int = 0,
    ) -> None:
        self.config = config
        self.network = network.eval()
        self.observation_shape = observation_shape
        self.global_step = global_step
        self.run_dir = run_dir
        self.rng = np.random.default_rng(seed)
        self._device = next(network.parameters()).device

    def scores(self, obs: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Q-values (DQN) or policy logits (PPO) of a batch ``(B, *observation_shape)``."""
        x = torch.as_tensor(obs, dtype=torch.float32, device=self._device)
        with torch.no_grad():
            if self.config.agent.name == "ppo":
                return self.network.policy(x)  # type: ignore[operator]
            return self.network(x)

    def act(
        self, obs: np.ndarray | torch.Tensor, *, greedy: bool = True, epsilon: float | None = None
    ) -> int | np.ndarray:
        """The action(s) for ``obs``.

        Args:
            obs: one observation (``observation_shape``) or a batch of them.
            greedy: True takes the best action (argmax Q, or the policy's mode); False samples as
                the agent explores: ε-greedy for DQN (ε = ``epsilon``, default the run's
                ``agent.eps_end``), a draw from π(·|s) for PPO.
            epsilon: DQN's ε when ``greedy`` is False.

        Returns:
            An ``int`` for one observation, an int64 array for a batch.
        """
        array = np.asarray(obs.cpu() if isinstance(obs, torch.Tensor) else obs, dtype=np.float32)
        single = array.shape == self.observation_shape
        if not single and array.shape[1:] != self.observation_shape:
            raise ValueError(
                f"observation of shape {array.shape} does not match the run's {self.observation_shape}"
                " (one observation or a batch of them)"
            )
        batch = array[None] if single else array
        scores = self.scores(batch)
        if greedy:
            actions = scores.argmax(1).cpu().numpy()
        elif self.config.agent.name == "ppo":
            probs = torch.softmax(scores, 1).cpu().numpy().astype(np.float64)
            actions = np.array([self.rng.choice(p.size, p=p / p.sum()) for p in probs])
        else:
            eps = self.config.agent.eps_end if epsilon is None else epsilon  # type: ignore[attr-defined]
            actions = scores.argmax(1).cpu().numpy()
            explore = self.rng.random(len(actions)) < eps
            actions = np.where(explore, self.rng.integers(0, scores.shape[1], len(actions)), actions)
        actions = actions.astype(np.int64)
        return int(actions[0]) if single else actions

    def make_env(self, seed: int | None = None, **env_overrides: Any) -> Any:
        """One env as the run's sub-env 0 was built (non-stationarity included), to act in.

        Args:
            seed: the non-stationarity schedule's seed (default: the run's seed).
            **env_overrides: ``env`` keys to change, e.g. ``kwargs={"render_mode": "rgb_array"}``.
        """
        from plasticrl.envs.make import build_sub_env

        env_cfg = dataclasses.replace(self.config.env, num_envs=1, **env_overrides)
        return build_sub_env(
            env_cfg, self.config.seed if seed is None else seed, 0, self.config.nonstationary
        )


def load(run_dir: str | Path, *, checkpoint: str = CHECKPOINT_NAME, device: str = "cpu") -> TrainedAgent:
    """The trained agent of a run folder (its last checkpoint), ready to :meth:`TrainedAgent.act`.

    Example:
        ``agent = plasticrl.load("runs/<run>"); env = agent.make_env(); obs, _ = env.reset();
        obs, reward, *_ = env.step(agent.act(obs))``.

    Args:
        run_dir: a run folder written by ``plasticrl train`` (or :func:`train`).
        checkpoint: the checkpoint file inside it.
        device: where the network goes.

    Raises:
        ValueError: no such folder, no readable checkpoint, or an agent this cannot rebuild.
    """
    from plasticrl.agents.actor_critic import make_actor_critic
    from plasticrl.agents.networks import make_network
    from plasticrl.envs.make import build_sub_env

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run folder {str(run_dir)!r} not found")
    path = run_dir / checkpoint
    if not path.is_file():
        raise ValueError(f"no {checkpoint} in {str(run_dir)!r} (the run wrote no checkpoint yet)")
    state = load_checkpoint(path)
    cfg = config_from_dict(applicable_only(state["config"]))
    env = build_sub_env(dataclasses.replace(cfg.env, num_envs=1), cfg.seed, 0, cfg.nonstationary)
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    agent_state = state["agent"]
    network: torch.nn.Module
    if cfg.agent.name == "dqn":
        network = make_network(obs_space, act_space, cfg.network)
        network.load_state_dict(agent_state["q_net"])
    elif cfg.agent.name == "ppo":
        network = make_actor_critic(
            obs_space,
            act_space,
            cfg.network,
            shared_trunk=cfg.agent.shared_trunk,  # type: ignore[attr-defined]
            actor_head_gain=cfg.agent.actor_head_gain,  # type: ignore[attr-defined]
        )
        network.load_state_dict(agent_state["model"])
    else:
        raise ValueError(f"load() rebuilds dqn and ppo agents, not {cfg.agent.name!r}")
    shape = tuple(int(d) for d in obs_space.shape or ())
    return TrainedAgent(
        cfg, network.to(device), shape, global_step=int(state["global_step"]), run_dir=run_dir, seed=cfg.seed
    )


# ----------------------------------------------------------------------------- evaluation and video


def _upscaled(env: Any, min_size: int = 160) -> Any:
    """``env`` whose ``render()`` frames are uint8 and enlarged by an integer factor to ``min_size`` px.

    MinAtar renders 10 × 10 float pixels in [0, 1]; a video of that is black (the encoder casts
    to bytes) and unreadable, so values are scaled to 0-255 and each pixel becomes a block.
    """
    import gymnasium as gym

    class UpscaledFrames(gym.Wrapper):  # type: ignore[type-arg]
        def render(self) -> Any:  # noqa: D102
            frame = self.env.render()
            if not isinstance(frame, np.ndarray) or frame.ndim != 3:
                return frame
            if frame.dtype.kind == "f":  # MinAtar renders floats in [0, 1]; encoders want bytes
                frame = (np.clip(frame, 0.0, 1.0) * 255).round().astype(np.uint8)
            factor = max(1, -(-min_size // max(frame.shape[:2])))
            return np.kron(frame, np.ones((factor, factor, 1), dtype=frame.dtype)) if factor > 1 else frame

    return UpscaledFrames(env)


def evaluate(
    run_dir: str | Path,
    *,
    episodes: int = 10,
    greedy: bool = True,
    seed: int = 0,
    video_dir: str | Path | None = None,
) -> tuple[list[float], list[Path]]:
    """Play ``episodes`` episodes of a run's trained agent; optionally record them as videos.

    Args:
        run_dir: the run folder.
        episodes: how many episodes (each reset with ``seed + i``).
        greedy: the greedy policy (True) or the exploring one (:meth:`TrainedAgent.act`).
        seed: the first episode's reset seed.
        video_dir: when given, every episode is recorded there with gymnasium's ``RecordVideo``
            (needs ``moviepy``); the env must render ``rgb_array`` frames (MinAtar, Atari,
            classic control do). Small frames are enlarged to at least 160 px.

    Returns:
        (the episodes' returns, the video files written).

    Raises:
        ValueError: a bad run folder, ``episodes < 1``, an env that does not render, or no moviepy.
    """
    import gymnasium as gym

    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    agent = load(run_dir)
    if video_dir is None:
        env = agent.make_env()
    else:
        import importlib.util

        if importlib.util.find_spec("moviepy") is None:  # RecordVideo's encoder
            raise ValueError("recording a video needs moviepy: pip install moviepy")
        kwargs = {**agent.config.env.kwargs, "render_mode": "rgb_array"}
        try:
            env = agent.make_env(kwargs=kwargs)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"env {agent.config.env.id!r} cannot render rgb_array frames: {exc}") from None
        try:
            if env.render_mode != "rgb_array":
                raise ValueError("no rgb_array render mode")
            env.reset(seed=seed)
            frame = env.render()  # a missing renderer (pygame for classic control) fails here, not mid-video
            if not isinstance(frame, np.ndarray):
                raise ValueError(f"render() returned {type(frame).__name__}")
        except (ValueError, gym.error.Error, ImportError) as exc:
            env.close()
            raise ValueError(f"env {agent.config.env.id!r} cannot render rgb_array frames: {exc}") from None
        env = gym.wrappers.RecordVideo(
            _upscaled(env),
            str(video_dir),
            episode_trigger=lambda _: True,
            name_prefix=Path(run_dir).name,
            disable_logger=True,
        )
    returns = []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(agent.act(obs, greedy=greedy))
                total += float(reward)
                done = bool(terminated or truncated)
            returns.append(total)
    finally:
        env.close()
    videos = sorted(Path(video_dir).glob("*.mp4")) if video_dir is not None else []
    return returns, videos


def run_eval_command(args: Any) -> int:
    """Run ``plasticrl eval``: print each return and their mean (and the video paths); returns 0."""
    video_dir = None
    if args.video:
        video_dir = Path(args.out) if args.out else Path(args.run_dir) / "videos"
    elif args.out:
        raise ValueError("--out is the video folder: give it with --video")
    returns, videos = evaluate(
        args.run_dir,
        episodes=args.episodes,
        greedy=args.policy == "greedy",
        seed=args.seed,
        video_dir=video_dir,
    )
    policy = "sampled" if args.policy == "sample" else "greedy"
    print(
        f"{policy} return over {len(returns)} episodes: mean {np.mean(returns):.2f}, "
        f"min {min(returns):.2f}, max {max(returns):.2f}"
    )
    for path in videos:
        print(path)
    return 0
