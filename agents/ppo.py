r"""PPO (Schulman et al. 2017) with GAE (Schulman et al. 2016), clipped value loss and target-KL stop.

Reading order, as CleanRL's ``ppo.py``: the config, the maths (pure functions), the agent. The
networks and action distributions are in :mod:`plasticrl.agents.actor_critic`, the rollout storage in
:mod:`plasticrl.agents.rollout`.

Contains:
    PPOConfig: the ``agent.*`` section when ``agent.name=ppo``.
    gae: advantages and returns of a rollout, with truncation bootstrapping (a pure function).
    ppo_loss: clipped surrogate + value loss − entropy bonus of a minibatch, returning (loss, metrics).
    explained_variance: 1 − Var(R − V) / Var(R), the critic's fit to its targets.
    PPOAgent: holds the actor-critic, the optimizer, its schedule, the regularizers and two
        generators; ``act`` (sample and log-prob), ``value`` and ``update`` (epochs × minibatches) — it
        never logs.

Note [Compiled loss]
    With ``agent.compile: true`` the minibatch's forward pass and loss (:meth:`PPOAgent._minibatch_loss`)
    go through ``torch.compile`` (``dynamic=False``: every minibatch of a run has one shape), so
    TorchInductor fuses the loss's elementwise operations and the activations' backward, and
    AOTAutograd compiles the backward with it. The regularizers' penalties, the gradient clipping
    and the optimizer step stay eager. On the protocol's MLPs on this project's 2-core CPU it
    made a gradient step 10-25 % faster after a compile of about 40 s (``benchmarks/
    throughput_ppo_protocol.py`` measures it); networks whose forward cannot be traced (Python
    control flow on tensor values) fall back to eager per graph break, as ``torch.compile`` does,
    and where compiling fails altogether (no C++ compiler on a CPU machine) the agent warns once
    and trains eagerly. ``mode="max-autotune-no-cudagraphs"`` was another 5-15 % faster here, but it
    picks kernels by timing them, so two runs of one seed (or a run and its resumed self) could
    round differently; the default mode compiles the same kernels every time, and it is the one used.

Learning-rate annealing is not an agent option: ``optimizer.lr_schedule: linear`` anneals over
the run's PPO updates (one per rollout) through a LambdaLR that scales every param group's own lr
(:func:`plasticrl.trainers.run.make_lr_scheduler`); the PPO presets set it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import gymnasium as gym
import numpy as np
import torch
from plasticrl.agents.actor_critic import ActorCritic, DiagGaussian, action_distribution
from plasticrl.agents.common import NonFiniteLossError
from plasticrl.agents.rollout import RolloutBatch
from plasticrl.plasticity.layers import acting_cache, has_orthogonal_layers, retract_
from plasticrl.plasticity.options import check_ranges, in_range
from plasticrl.plasticity.regularizers import Regularizer
from torch import Tensor, nn

__all__ = [
    "PPOConfig",
    "gae",
    "ppo_loss",
    "explained_variance",
    "PPOAgent",
]


@dataclass(frozen=True)
class PPOConfig:
    """The ``agent`` section for PPO. A rollout is ``num_steps × env.num_envs`` env steps."""

    name: Literal["ppo"] = "ppo"
    """Agent registry key."""
    num_steps: int = field(default=128, metadata=in_range(1))
    """Steps per sub-env per rollout (T)."""
    num_minibatches: int = field(default=4, metadata=in_range(1))
    """Minibatches the rollout is split into, per epoch."""
    update_epochs: int = field(default=4, metadata=in_range(1))
    """Passes over the rollout per update (K)."""
    gamma: float = field(default=0.99, metadata=in_range(0, 1))
    """Discount factor γ."""
    gae_lambda: float = field(default=0.95, metadata=in_range(0, 1))
    """λ of generalized advantage estimation."""
    clip_coef: float = field(default=0.2, metadata=in_range(0, low_open=True))
    """ε of the clipped surrogate: the ratio is clipped to [1 − ε, 1 + ε]."""
    clip_vloss: bool = True
    """Clip the value update to ±clip_coef around the rollout's values (PPO2's value clipping)."""
    ent_coef: float = field(default=0.01, metadata=in_range(0))
    """c₂, the entropy bonus coefficient."""
    vf_coef: float = field(default=0.5, metadata=in_range(0))
    """c₁, the value loss coefficient."""
    max_grad_norm: float | None = field(default=0.5, metadata=in_range(0, low_open=True))
    """Clip the global gradient norm to this value; None disables clipping."""
    norm_adv: bool = True
    """Normalise the advantages to zero mean and unit variance per minibatch."""
    target_kl: float | None = field(default=None, metadata=in_range(0, low_open=True))
    """Stop the update (all remaining epochs) before a gradient step whose minibatch's approx_kl
    exceeds this; None never stops early."""
    shared_trunk: bool = False
    """One network trunk with policy and value heads, instead of separate actor and critic."""
    actor_head_gain: float | None = field(default=0.01, metadata=in_range(0, low_open=True))
    """Orthogonal gain of the actor's output layer (near-uniform initial policy); None keeps the
    network's own initialisation."""
    compile: bool = False
    """Compile each minibatch's forward pass and loss (and so their backward) with
    ``torch.compile``: one compile at the first update (tens of seconds on a CPU), then faster
    gradient steps (Note [Compiled loss]). Numerically close to the eager update, not bitwise
    equal."""

    def __post_init__(self) -> None:
        check_ranges(self, "agent")


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminations: Tensor,
    truncations: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    r"""Generalized advantage estimates and returns of a rollout (Schulman et al. 2016, eq. 16).

    All inputs are ``(T, N)``: step t of sub-env i. ``next_values[t]`` is V of the **real** next
    state s'_t of step t: V(s_{t+1}) inside an episode, V(final observation) where the episode was
    truncated (Note [Autoreset] in :mod:`plasticrl.envs.make`); where it terminated it is ignored. With
    done_t = term_t ∨ trunc_t:

    .. math::
        \delta_t &= r_t + \gamma\,(1 - \mathrm{term}_t)\,V(s'_t) - V(s_t) \\
        A_t &= \delta_t + \gamma\lambda\,(1 - \mathrm{done}_t)\,A_{t+1}, \qquad A_T = 0 \\
        R_t &= A_t + V(s_t)

    A termination has no future value; a truncation bootstraps from the final observation's
    value; either cuts the recursion, so no advantage leaks across an episode boundary. The
    rollout's end only stops the sum: A_{T−1} = δ_{T−1}, which bootstraps from V(s_T).

    Returns:
        (advantages, returns), both ``(T, N)``; returns are the critic's targets (TD(λ) returns).

    Example:
        >>> r = torch.tensor([[1.0], [1.0]])
        >>> v, v_next = torch.tensor([[0.5], [0.5]]), torch.tensor([[0.5], [1.0]])
        >>> zero = torch.zeros(2, 1)
        >>> gae(r, v, v_next, zero, zero, gamma=0.5, gae_lambda=1.0)[0].squeeze(1)  # δ = 0.75, 1
        tensor([1.2500, 1.0000])
    """
    not_terminated = 1.0 - terminations.float()
    not_done = 1.0 - torch.maximum(terminations.float(), truncations.float())
    # δ_t = r_t + γ (1 − term_t) V(s'_t) − V(s_t), every step at once
    deltas = rewards + gamma * not_terminated * next_values - values
    # γλ (1 − done_t): the weight of A_{t+1} in A_t
    discounts = (gamma * gae_lambda) * not_done
    advantages = torch.empty_like(values)
    last = torch.zeros_like(values[0])  # A_T = 0
    for t in reversed(range(values.shape[0])):
        last = torch.addcmul(deltas[t], discounts[t], last)  # A_t = δ_t + γλ(1 − done_t) A_{t+1}
        advantages[t] = last
    return advantages, advantages + values  # R_t = A_t + V(s_t)


def ppo_loss(
    new_log_probs: Tensor,
    entropy: Tensor,
    new_values: Tensor,
    batch: RolloutBatch,
    *,
    clip_coef: float,
    clip_vloss: bool = True,
    ent_coef: float = 0.01,
    vf_coef: float = 0.5,
    norm_adv: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    r"""The PPO loss of a minibatch. Returns (loss, metrics); metrics are detached scalars.

    With ratio ρ = π_θ(a|s) / π_old(a|s) and advantages Â (normalised per minibatch if asked):

    .. math::
        L^{\mathrm{CLIP}} &= \mathbb{E}\big[\max(-\hat A\rho,\;
            -\hat A\,\mathrm{clip}(\rho, 1-\epsilon, 1+\epsilon))\big] \\
        L^{V} &= \tfrac12\,\mathbb{E}\big[\max\big((V_\theta - R)^2,\;
            (V_{\mathrm{old}} + \mathrm{clip}(V_\theta - V_{\mathrm{old}}, \pm\epsilon) - R)^2\big)\big] \\
        L &= L^{\mathrm{CLIP}} + c_1 L^{V} - c_2\,\mathbb{E}[H(\pi_\theta(\cdot|s))]

    (without ``clip_vloss``, L^V = ½ E[(V_θ − R)²]). Metrics: ``policy_loss``, ``value_loss``,
    ``entropy``, ``approx_kl`` = E[(ρ − 1) − log ρ] (Schulman's unbiased, non-negative
    estimator of KL[π_old ‖ π_θ]), ``old_approx_kl`` = E[−log ρ], ``clipfrac`` = P(|ρ − 1| > ε).

    Args:
        new_log_probs: log π_θ(a|s) of the minibatch's actions, ``(B,)``.
        entropy: H(π_θ(·|s)), ``(B,)``.
        new_values: V_θ(s), ``(B,)``.
        batch: the minibatch (old log-probs and values, advantages, returns).
        clip_coef: ε.
        clip_vloss: clip the value update.
        ent_coef: c₂.
        vf_coef: c₁.
        norm_adv: normalise Â to zero mean, unit variance.
    """
    log_ratio = new_log_probs - batch.log_probs
    ratio = log_ratio.exp()
    advantages = batch.advantages
    if norm_adv and advantages.numel() > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    # clipped surrogate objective (eq. 7), as a loss to minimise
    pg_loss = torch.maximum(
        -advantages * ratio, -advantages * ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef)
    ).mean()
    v_loss_unclipped = (new_values - batch.returns).square()
    if clip_vloss:
        v_clipped = batch.values + (new_values - batch.values).clamp(-clip_coef, clip_coef)
        v_loss = 0.5 * torch.maximum(v_loss_unclipped, (v_clipped - batch.returns).square()).mean()
    else:
        v_loss = 0.5 * v_loss_unclipped.mean()
    entropy_loss = entropy.mean()
    loss = pg_loss - ent_coef * entropy_loss + vf_coef * v_loss  # eq. 9, negated
    with torch.no_grad():
        metrics = {
            "policy_loss": pg_loss.detach(),
            "value_loss": v_loss.detach(),
            "entropy": entropy_loss.detach(),
            "approx_kl": ((ratio - 1.0) - log_ratio).mean(),
            "old_approx_kl": (-log_ratio).mean(),
            "clipfrac": ((ratio - 1.0).abs() > clip_coef).float().mean(),
        }
    return loss, metrics


def explained_variance(values: Tensor, returns: Tensor) -> float:
    """1 − Var(R − V) / Var(R): 1 is a perfect critic, 0 no better than a constant; NaN if Var(R) = 0."""
    var_returns = returns.var()
    if var_returns.item() == 0:
        return math.nan
    return float(1.0 - (returns - values).var() / var_returns)


def _seed_int(seed: np.random.SeedSequence) -> int:
    return int(seed.generate_state(1, np.uint64)[0])


class PPOAgent:
    """A PPO agent: actor-critic, optimizer, optional lr schedule, regularizers.

    Args:
        model: the actor-critic (:func:`plasticrl.agents.actor_critic.make_actor_critic`).
        optimizer: built over ``model``'s tagged parameter groups (actor and critic together).
        cfg: the PPO section.
        action_space: one sub-env's action space (picks the distribution).
        regularizers: penalties added to every minibatch's loss.
        scheduler: optional lr scheduler, stepped once per :meth:`update`.
        seed: seeds two generators, one for actions and one for minibatch shuffling, so the
            action stream does not depend on how many gradient steps an update took.
        device: where the model lives.
    """

    loop: ClassVar[str] = "on_policy"
    """The training loop that drives this agent (:mod:`plasticrl.trainers.on_policy`)."""

    def __init__(
        self,
        model: ActorCritic,
        optimizer: torch.optim.Optimizer,
        cfg: PPOConfig,
        action_space: gym.Space,
        *,
        regularizers: Sequence[Regularizer] = (),
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        seed: int | np.random.SeedSequence = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.regularizers = list(regularizers)
        distribution, _ = action_distribution(action_space)
        if distribution is DiagGaussian:
            log_std = getattr(self.model, "log_std", None)
            if not isinstance(log_std, Tensor):
                raise ValueError("a Box action space needs an actor-critic with log_std (make_actor_critic)")
            self.distribution: Callable[[Tensor], Any] = functools.partial(DiagGaussian, log_std=log_std)
        else:
            self.distribution = distribution
        seeds = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        action_seed, shuffle_seed = seeds.spawn(2)
        self.action_generator = torch.Generator(self.device).manual_seed(_seed_int(action_seed))
        self.shuffle_generator = torch.Generator(self.device).manual_seed(_seed_int(shuffle_seed))
        self.updates = 0  # PPO updates (one per rollout)
        self.grad_steps = 0  # minibatch gradient steps
        self._params = list(self.model.parameters())
        self._constrained = has_orthogonal_layers(self.model)  # orthogonal layers: cache and retract
        self._loss: Callable[[RolloutBatch], tuple[Tensor, dict[str, Tensor]]] = self._minibatch_loss
        if cfg.compile:  # Note [Compiled loss]
            self._loss = torch.compile(self._minibatch_loss, dynamic=False)

    def _cache(self) -> contextlib.AbstractContextManager[None]:
        return acting_cache(self.model) if self._constrained else contextlib.nullcontext()

    @torch.no_grad()
    def act(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Sample a ~ π(·|s) for a batch of observations: (actions, log π(a|s)), one actor forward.

        V(s) is left to :meth:`value`, which the loop calls once per rollout on all its
        observations: the weights do not change during a rollout, and one batched critic forward
        costs about as much as two per-step ones (Note [Batched values] in ``plasticrl.trainers.on_policy``).
        """
        with self._cache():
            dist = self.distribution(self.model.policy(obs))
        actions = dist.sample(self.action_generator)
        return actions, dist.log_prob(actions)

    @torch.no_grad()
    def evaluation_actions(
        self, obs: np.ndarray, *, greedy: bool, rng: np.random.Generator, epsilon: float = 0.0
    ) -> np.ndarray:
        """Actions for evaluation episodes: π's mode (``greedy``) or a draw from π(·|s).

        ``epsilon`` (ε-greedy exploration, ``eval.epsilon``) is for value-based agents: a policy
        that samples explores by itself, so it is not used here.

        Draws come from ``rng`` (the evaluation's own stream), never from the training
        generators, so evaluating leaves training bit-identical.
        """
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        with self._cache():
            dist = self.distribution(self.model.policy(x))
        if greedy:
            return dist.mode().cpu().numpy()
        generator = torch.Generator(self.device).manual_seed(int(rng.integers(2**62)))
        return dist.sample(generator).cpu().numpy()

    @torch.no_grad()
    def value(self, obs: Tensor) -> Tensor:
        """V(s) for a batch of observations."""
        with self._cache():
            return self.model.value(obs)

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """``update_epochs`` passes over ``batch`` in ``num_minibatches`` shuffled minibatches.

        Returns the mean over the gradient steps taken of the :func:`ppo_loss` metrics (plus
        ``grad_norm``, the pre-clipping norm, and ``reg_<name>``), and ``explained_variance``.

        Raises:
            NonFiniteLossError: a minibatch loss is NaN/inf; no step was taken on it (earlier
                minibatches of this update were applied).
        """
        cfg = self.cfg
        n = batch.obs.shape[0]
        rows: list[Tensor] = []
        keys: list[str] = []
        stop = False
        for _ in range(cfg.update_epochs):
            perm = torch.randperm(n, generator=self.shuffle_generator, device=self.device)
            for idx in perm.tensor_split(cfg.num_minibatches):
                metrics = self._step(batch.index(idx))
                if metrics is None:  # the target KL was exceeded: stop the whole update
                    stop = True
                    break
                keys = list(metrics)
                rows.append(torch.stack(list(metrics.values())))
            if stop:
                break
        out = dict(zip(keys, torch.stack(rows).mean(0).tolist(), strict=True)) if rows else {}
        out["explained_variance"] = explained_variance(batch.values, batch.returns)
        if self.scheduler is not None:
            self.scheduler.step()
        if self._constrained:
            retract_(
                self.model
            )  # keep the QR map's effective lr (Note [Default map], plasticrl.plasticity.layers)
        self.updates += 1
        return out

    def _minibatch_loss(self, mb: RolloutBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """The forward pass and :func:`ppo_loss` of minibatch ``mb`` (what ``agent.compile`` compiles)."""
        cfg = self.cfg
        policy, new_values = self.model.policy_and_value(mb.obs)
        dist = self.distribution(policy)
        return ppo_loss(
            dist.log_prob(mb.actions),
            dist.entropy(),
            new_values,
            mb,
            clip_coef=cfg.clip_coef,
            clip_vloss=cfg.clip_vloss,
            ent_coef=cfg.ent_coef,
            vf_coef=cfg.vf_coef,
            norm_adv=cfg.norm_adv,
        )

    def _step(self, mb: RolloutBatch) -> dict[str, Tensor] | None:
        """One gradient step on minibatch ``mb``; None (and no step) when the target KL is exceeded."""
        cfg = self.cfg
        try:
            loss, metrics = self._loss(mb)
        except Exception as exc:  # noqa: BLE001  (agent.compile: torch.compile could not build it)
            if self._loss == self._minibatch_loss:
                raise
            warnings.warn(
                f"agent.compile: torch.compile failed ({type(exc).__name__}: {exc}); training eagerly",
                RuntimeWarning,
                stacklevel=2,
            )
            self._loss = self._minibatch_loss
            loss, metrics = self._loss(mb)  # a genuine error of the loss is raised here, eagerly
        if cfg.target_kl is not None and metrics["approx_kl"].item() > cfg.target_kl:
            return None
        for reg in self.regularizers:
            penalty = reg()
            metrics[f"reg_{reg.name}"] = penalty.detach()
            loss = loss + penalty
        if not math.isfinite(loss.item()):
            raise NonFiniteLossError(
                f"non-finite loss {loss.item()} at update {self.updates} (gradient step {self.grad_steps})"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm is not None:
            metrics["grad_norm"] = nn.utils.clip_grad_norm_(self._params, cfg.max_grad_norm)
        self.optimizer.step()
        self.grad_steps += 1
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer, schedule, regularizers, both generators and the counters."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "regularizers": [reg.state_dict() for reg in self.regularizers],
            "action_generator": self.action_generator.get_state(),
            "shuffle_generator": self.shuffle_generator.get_state(),
            "updates": self.updates,
            "grad_steps": self.grad_steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        for reg, reg_state in zip(self.regularizers, state["regularizers"], strict=True):
            reg.load_state_dict(reg_state)
        self.action_generator.set_state(state["action_generator"])
        self.shuffle_generator.set_state(state["shuffle_generator"])
        self.updates = int(state["updates"])
        self.grad_steps = int(state["grad_steps"])
