"""DQN (Mnih et al. 2015) with Double-DQN, Polyak/hard target updates and a replay ratio.

Reading order, as CleanRL's ``dqn.py``: the config, the loss (a pure function), the agent.

Contains:
    DQNConfig: the ``agent.*`` section when ``agent.name=dqn``.
    dqn_loss: TD loss of a batch, returning (loss, metrics).
    DQNAgent: holds the online and target networks, the optimizer, its schedule and the
        regularizers; ``act`` (ε-greedy) and ``update`` (one gradient step) — it never logs. It
        is an off-policy agent of :mod:`plasticrl.trainers.off_policy` (``OffPolicyAgent``): the
        loop also calls ``after_env_step`` (target-network syncs) and ``scalars`` (ε).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from plasticrl.agents.buffers import Batch, ObsStorage
from plasticrl.agents.common import NonFiniteLossError, linear_schedule
from plasticrl.agents.networks import NetworkConfig, make_network
from plasticrl.plasticity.layers import acting_cache, has_orthogonal_layers, retract_
from plasticrl.plasticity.options import ConfigError, check_ranges, in_range
from plasticrl.plasticity.regularizers import Regularizer
from torch import Tensor, nn

__all__ = ["DQNConfig", "dqn_loss", "DQNAgent"]


@dataclass(frozen=True)
class DQNConfig:
    """The ``agent`` section for DQN. Step counts are env steps summed over sub-envs."""

    name: Literal["dqn"] = "dqn"
    """Agent registry key."""
    gamma: float = field(default=0.99, metadata=in_range(0, 1))
    """Discount factor γ."""
    batch_size: int = field(default=32, metadata=in_range(1))
    """Transitions per gradient step."""
    buffer_size: int = field(default=100_000, metadata=in_range(1))
    """Replay capacity (transitions)."""
    learning_starts: int = field(default=5_000, metadata=in_range(0))
    """Env steps of pure collection before the first update."""
    replay_ratio: float = field(default=1.0, metadata=in_range(0, low_open=True))
    """Gradient updates per env step (0.25 = one update every 4 steps)."""
    target_update_every: int = field(default=1_000, metadata=in_range(1))
    """Env steps between target-network updates."""
    tau: float = field(default=1.0, metadata=in_range(0, 1, low_open=True))
    """Target update: θ⁻ ← τθ + (1−τ)θ⁻; 1.0 is a hard copy."""
    eps_start: float = field(default=1.0, metadata=in_range(0, 1))
    """ε of ε-greedy at step 0."""
    eps_end: float = field(default=0.1, metadata=in_range(0, 1))
    """Final ε."""
    eps_decay_steps: int = field(default=100_000, metadata=in_range(0))
    """Env steps over which ε decays linearly from eps_start to eps_end."""
    double_dqn: bool = False
    """Double DQN: the online net picks the next action, the target net evaluates it."""
    loss: Literal["huber", "mse"] = "huber"
    """TD loss: Huber (smooth L1, δ=1) or squared error."""
    max_grad_norm: float | None = field(default=None, metadata=in_range(0, low_open=True))
    """Clip the global gradient norm to this value; None disables clipping."""
    obs_storage: ObsStorage = "auto"
    """Replay observation storage: auto, float32, uint8 or bits (plasticrl.agents.buffers)."""

    def __post_init__(self) -> None:
        check_ranges(self, "agent")  # the in_range metadata above (plasticrl.plasticity.options)
        if self.buffer_size < self.batch_size:
            raise ConfigError(
                f"invalid agent.buffer_size: {self.buffer_size} (agent.buffer_size must be >= "
                f"agent.batch_size={self.batch_size})",
                key="agent.buffer_size",
            )


def dqn_loss(
    q_net: nn.Module,
    target_net: nn.Module,
    batch: Batch,
    gamma: float,
    *,
    double_dqn: bool = False,
    loss: str = "huber",
) -> tuple[Tensor, dict[str, Tensor]]:
    """TD(0) loss of ``batch``. Returns (loss, metrics); metrics are detached scalars.

    The target bootstraps through truncations (time limits) and not through terminations:
    ``batch.terminated`` is 1 only for a true terminal state.
    """
    q_values = q_net(batch.obs)
    q_taken = q_values.gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    with torch.no_grad():
        next_q_target = target_net(batch.next_obs)
        if double_dqn:
            next_actions = q_net(batch.next_obs).argmax(1, keepdim=True)
            next_q = next_q_target.gather(1, next_actions).squeeze(1)
        else:
            next_q = next_q_target.max(1).values
        # 1-step TD target: r + γ (1 − terminated) max_a' Q⁻(s', a')
        td_target = batch.rewards + gamma * (1.0 - batch.terminated) * next_q
    if loss == "huber":
        td_loss = F.smooth_l1_loss(q_taken, td_target)
    elif loss == "mse":
        td_loss = F.mse_loss(q_taken, td_target)
    else:
        raise ValueError(f"invalid DQN loss {loss!r}; valid: huber, mse")
    return td_loss, {"td_loss": td_loss.detach(), "q_values": q_taken.detach().mean()}


class DQNAgent:
    """An ε-greedy DQN agent: online and target networks, optimizer, optional lr schedule.

    Args:
        q_net: the online Q-network ``(B, *obs_shape) → (B, n_actions)``.
        optimizer: built over ``q_net``'s tagged parameter groups.
        cfg: the DQN section.
        n_actions: size of the discrete action space.
        regularizers: penalties added to the TD loss.
        scheduler: optional lr scheduler, stepped once per update.
        seed: seed of the exploration generator.
        device: where the networks live.
    """

    loop: ClassVar[str] = "off_policy"
    """The training loop that drives this agent (:mod:`plasticrl.trainers.off_policy`)."""

    @staticmethod
    def make_model(obs_space: gym.Space[Any], action_space: gym.Space[Any], cfg: NetworkConfig) -> nn.Module:
        """The Q-network ``(B, *obs_shape) → (B, n_actions)`` of the ``network`` section.

        Raises:
            ValueError: a non-Discrete action space.
        """
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ValueError(
                f"DQN needs a Discrete action space; got {action_space}; for continuous (Box) actions "
                "use agent.name=ppo (configs/control/ppo_pendulum.yaml)"
            )
        return make_network(obs_space, action_space, cfg)

    @classmethod
    def from_parts(
        cls,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        cfg: DQNConfig,
        action_space: gym.Space[Any],
        *,
        regularizers: Sequence[Regularizer],
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        seed: np.random.SeedSequence,
        device: torch.device,
    ) -> DQNAgent:
        """The agent over a model built by :meth:`make_model` (the off-policy loop's constructor)."""
        assert isinstance(action_space, gym.spaces.Discrete)
        return cls(
            model,
            optimizer,
            cfg,
            int(action_space.n),
            regularizers=regularizers,
            scheduler=scheduler,
            seed=seed,
            device=device,
        )

    def __init__(
        self,
        q_net: nn.Module,
        optimizer: torch.optim.Optimizer,
        cfg: DQNConfig,
        n_actions: int,
        *,
        regularizers: Sequence[Regularizer] = (),
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        seed: int | np.random.SeedSequence = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.q_net = q_net.to(self.device)
        self.target_net = copy.deepcopy(self.q_net).requires_grad_(False)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.regularizers = list(regularizers)
        self.n_actions = n_actions
        self.rng = np.random.default_rng(seed)
        self.updates = 0  # gradient steps taken
        self.next_target_update = cfg.learning_starts + cfg.target_update_every  # env step of the next sync
        # Constrained (orthogonal) layers: reuse their weights across gradient-free forwards and
        # retract their unconstrained tensors at target syncs (plasticrl.plasticity.layers). Checked once.
        self._constrained = has_orthogonal_layers(self.q_net)

    @property
    def model(self) -> nn.Module:
        """The network being trained (the online Q-network): the probe and interventions act on it."""
        return self.q_net

    def after_env_step(self, step: int) -> None:
        """Sync the target network when env step ``step`` reached the next sync (after updates)."""
        if step >= self.next_target_update:
            self.update_target()
            self.next_target_update += self.cfg.target_update_every

    def scalars(self, step: int) -> dict[str, float]:
        """What the loop logs about the agent beside its losses: ``charts/epsilon``."""
        return {"charts/epsilon": self.epsilon(step)}

    def epsilon(self, step: int) -> float:
        """ε at env step ``step`` (linear decay)."""
        return linear_schedule(self.cfg.eps_start, self.cfg.eps_end, self.cfg.eps_decay_steps, step)

    def act(self, obs: np.ndarray, step: int) -> np.ndarray:
        """ε-greedy actions for a batch of observations (one per sub-env).

        The generator is drawn from identically at every call (one uniform and one action per
        sub-env), so the exploration stream does not depend on the network's outputs.
        """
        n = obs.shape[0]
        explore = np.asarray(self.rng.random(n) < self.epsilon(step))
        actions = np.asarray(self.rng.integers(0, self.n_actions, size=n))
        if not explore.all():
            actions = np.where(explore, actions, self.greedy(obs))
        return actions

    def evaluation_actions(
        self, obs: np.ndarray, *, greedy: bool, rng: np.random.Generator, epsilon: float = 0.0
    ) -> np.ndarray:
        """Actions for evaluation episodes: greedy, or ε-greedy with ``epsilon`` drawn from ``rng``.

        ``rng`` is the evaluation's own stream, never the exploration generator, so evaluating
        leaves training bit-identical.
        """
        actions = self.greedy(obs)
        if greedy or epsilon <= 0.0:
            return actions
        explore = rng.random(len(actions)) < epsilon
        return np.where(explore, rng.integers(0, self.n_actions, size=len(actions)), actions)

    def _cache(self, net: nn.Module) -> contextlib.AbstractContextManager[None]:
        return acting_cache(net) if self._constrained else contextlib.nullcontext()

    @torch.no_grad()
    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """argmax_a Q(obs, a) for a batch of observations."""
        with self._cache(self.q_net):
            q_values = self.q_net(torch.as_tensor(obs, device=self.device, dtype=torch.float32))
        return q_values.argmax(1).cpu().numpy()

    def update(self, batch: Batch) -> dict[str, Tensor]:
        """One gradient step on ``batch``; returns detached scalar metrics.

        Raises:
            NonFiniteLossError: the loss is NaN/inf; no parameter was changed.
        """
        with self._cache(self.target_net):  # the target's weights change only at syncs
            loss, metrics = dqn_loss(
                self.q_net,
                self.target_net,
                batch,
                self.cfg.gamma,
                double_dqn=self.cfg.double_dqn,
                loss=self.cfg.loss,
            )
        for reg in self.regularizers:
            penalty = reg()
            metrics[f"reg_{reg.name}"] = penalty.detach()
            loss = loss + penalty
        if not math.isfinite(loss.item()):
            raise NonFiniteLossError(f"non-finite loss {loss.item()} at update {self.updates}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.max_grad_norm is not None:
            metrics["grad_norm"] = nn.utils.clip_grad_norm_(self.q_net.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.updates += 1
        return metrics

    @torch.no_grad()
    def update_target(self) -> None:
        """θ⁻ ← τθ + (1−τ)θ⁻ (a hard copy when τ = 1).

        Orthogonal layers are retracted first (``plasticrl.plasticity.layers.retract_``): their weights are
        unchanged, the length of their unconstrained tensors is reset.
        """
        if self._constrained:
            retract_(self.q_net)
        online = list(self.q_net.state_dict().values())
        target = list(self.target_net.state_dict().values())
        if self.cfg.tau >= 1.0:
            torch._foreach_copy_(target, online)
        else:
            floats = [(t, o) for t, o in zip(target, online, strict=True) if t.is_floating_point()]
            torch._foreach_lerp_([t for t, _ in floats], [o for _, o in floats], self.cfg.tau)

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimizer, schedule, regularizers, exploration generator and update count."""
        return {
            "q_net": self.q_net.state_dict(),
            "target_net": self.target_net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "regularizers": [reg.state_dict() for reg in self.regularizers],
            "rng": self.rng.bit_generator.state,
            "updates": self.updates,
            "next_target_update": self.next_target_update,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.q_net.load_state_dict(state["q_net"])
        self.target_net.load_state_dict(state["target_net"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        for reg, reg_state in zip(self.regularizers, state["regularizers"], strict=True):
            reg.load_state_dict(reg_state)
        self.rng.bit_generator.state = state["rng"]
        self.updates = int(state["updates"])
        if "next_target_update" in state:  # checkpoints before the agent owned it: the loop's
            self.next_target_update = int(state["next_target_update"])
