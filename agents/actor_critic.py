"""Actor-critic networks built on the network factory, and the action distributions of PPO.

Contains:
    ActionDistribution: the protocol a policy's distribution follows (``sample``, ``log_prob``,
        ``entropy``), so that a diagonal Gaussian for ``Box`` actions can join ``Categorical``.
    Categorical: the distribution over a ``Discrete`` action space, from the actor's logits.
    DiagGaussian: the distribution over a ``Box`` action space: the actor's outputs are the mean,
        a state-independent log-std is a parameter of the actor-critic.
    action_distribution: the distribution class and actor output width for an action space.
    ActorCritic: the module PPO trains; ``policy_and_value(obs)`` gives the actor's outputs and
        V(s), ``policy`` and ``value`` one of them; ``forward`` concatenates both, so the module is
        itself a network in the factory's sense and the plasticity probe, the regularizers and
        the optimizer see one model.
    SeparateActorCritic / SharedActorCritic: separate actor and critic networks (default), or one
        trunk with a policy head and a value head beside it.
    make_actor_critic: build either from a registered network factory.

Note [Heads of an actor-critic]
    The factory's own output layer is found as :mod:`plasticrl.plasticity.optimizers` finds it: the
    network's ``head_names`` if it declares them, else the last module owning a weight matrix.
    ``ActorCritic.head_names`` lists the actor's and the critic's output layers under their names
    in the actor-critic (``actor.5`` and ``critic.5`` for two ``mlp``; ``policy_head`` and
    ``value_head`` for a shared trunk), so ``param_groups`` tags both ``head`` and the isometry
    step and penalties leave both alone.

Note [Shared trunk]
    The trunk is the factory's network for the action space with its (single) head module swapped
    for ``nn.Identity``: its forward then returns the head's input, the features. The original
    head becomes ``policy_head`` and a new ``Linear(features, 1)`` the ``value_head``. This needs
    the network's output to be its head's output (true of every registered network); one that
    computes something after its head (a dueling combination) cannot share its trunk this way.
"""

from __future__ import annotations

import math
from typing import Protocol

import gymnasium as gym
import torch
from plasticrl.agents.networks import NetworkConfig, make_network, orthogonal_init_
from plasticrl.plasticity.optimizers import head_module_names
from torch import Tensor, nn

__all__ = [
    "ActionDistribution",
    "Categorical",
    "DiagGaussian",
    "action_distribution",
    "ActorCritic",
    "SeparateActorCritic",
    "SharedActorCritic",
    "make_actor_critic",
]


class ActionDistribution(Protocol):
    """A batch of action distributions π(·|s), one per row of the actor's output."""

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """One action per row, drawn from ``generator``."""
        ...

    def log_prob(self, actions: Tensor) -> Tensor:
        """Log-probabilities log π(a|s) of ``actions``, shape ``(B,)``."""
        ...

    def entropy(self) -> Tensor:
        """H(π(·|s)), shape ``(B,)``."""
        ...

    def mode(self) -> Tensor:
        """The most likely action of each row (the greedy policy)."""
        ...


class Categorical:
    """π(a|s) = softmax(logits)_a over ``Discrete(n)`` actions.

    Leaner than ``torch.distributions.Categorical`` (no argument validation, no broadcasting
    machinery): one ``log_softmax`` at construction, everything else reads it.

    Example:
        >>> import math
        >>> dist = Categorical(torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]]))
        >>> dist.log_prob(torch.tensor([0, 1])).exp()
        tensor([0.5000, 0.7500])
        >>> round(float(dist.entropy()[0]), 4) == round(math.log(2.0), 4)
        True
    """

    def __init__(self, logits: Tensor) -> None:
        self.log_probs = logits.log_softmax(-1)  # log π(·|s), normalised

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Actions ``(B,)`` (int64) by the Gumbel-max trick: argmax_a log π(a|s) + G_a, G_a ~ Gumbel.

        With E_a ~ Exp(1), −log E_a is Gumbel-distributed; on CPU this is about twice as fast as
        ``torch.multinomial`` for the few actions of an RL batch.
        """
        noise = torch.empty_like(self.log_probs).exponential_(generator=generator)
        return (self.log_probs - noise.log()).argmax(-1)

    def log_prob(self, actions: Tensor) -> Tensor:
        """Log-probabilities log π(a|s), ``(B,)``."""
        return self.log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> Tensor:
        """H = −Σ_a π(a|s) log π(a|s), ``(B,)``."""
        return -(self.log_probs.exp() * self.log_probs).sum(-1)

    def mode(self) -> Tensor:
        """argmax_a π(a|s), ``(B,)`` (int64)."""
        return self.log_probs.argmax(-1)


_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class DiagGaussian:
    """π(a|s) = N(μ(s), diag σ²) over ``Box`` actions, σ = exp(log_std) state-independent.

    The actor's outputs are the mean; ``log_std`` is one parameter vector of the actor-critic
    (:attr:`ActorCritic.log_std`), as in CleanRL's ``ppo_continuous_action``. Samples are not
    clipped: the env clips them (``env.wrappers: [ClipAction]``) and PPO's ratio uses the log-
    probability of the unclipped sample.

    Example:
        >>> dist = DiagGaussian(torch.zeros(1, 2), torch.zeros(2))
        >>> round(float(dist.log_prob(torch.zeros(1, 2))[0]), 4) == round(-math.log(2 * math.pi), 4)
        True
    """

    def __init__(self, mean: Tensor, log_std: Tensor) -> None:
        self.mean = mean
        self.log_std = log_std.expand_as(mean)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Actions ``(B, d)`` (float32): μ + σ·ε, ε ~ N(0, I) from ``generator``."""
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.log_std.exp() * noise

    def log_prob(self, actions: Tensor) -> Tensor:
        """Log-probabilities log π(a|s) = Σ_i −(a_i − μ_i)²/(2σ_i²) − log σ_i − ½ log 2π, ``(B,)``."""
        z = (actions - self.mean) * (-self.log_std).exp()
        return (-0.5 * z.square() - self.log_std - _LOG_SQRT_2PI).sum(-1)

    def entropy(self) -> Tensor:
        """H = Σ_i ½ + ½ log 2π + log σ_i, ``(B,)``."""
        return (0.5 + _LOG_SQRT_2PI + self.log_std).sum(-1)

    def mode(self) -> Tensor:
        """μ(s), ``(B, d)``."""
        return self.mean


def action_distribution(action_space: gym.Space) -> tuple[type[Categorical] | type[DiagGaussian], int]:
    """The distribution class for ``action_space`` and how many outputs the actor needs.

    ``Discrete(n)``: :class:`Categorical` over n logits. ``Box`` of shape ``(d,)``:
    :class:`DiagGaussian`, the actor's d outputs are the mean.

    Raises:
        ValueError: any other action space, naming the supported ones.
    """
    if isinstance(action_space, gym.spaces.Discrete):
        return Categorical, int(action_space.n)
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return DiagGaussian, int(action_space.shape[0])
    raise ValueError(f"PPO supports Discrete and 1-D Box action spaces, got {action_space}")


def _outputs(n: int) -> gym.spaces.Discrete:
    # Factories size their output layer from a Discrete space: this asks for n outputs.
    return gym.spaces.Discrete(n)


class ActorCritic(nn.Module):
    """Base of the actor-critics: ``(B, *obs) → (B, n_outputs + 1)``, V(s) in the last column.

    Attributes:
        head_names: module names of the actor's and the critic's output layers (Note [Heads of an
            actor-critic]).
    """

    head_names: tuple[str, ...]
    # Box actions: a parameter ``log_std``, the state-independent log σ of DiagGaussian (registered
    # by make_actor_critic; absent for Discrete actions, so their parameters are unchanged).

    def policy_and_value(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """The actor's outputs ``(B, n_outputs)`` (logits) and V(s) ``(B,)``."""
        raise NotImplementedError

    def policy(self, obs: Tensor) -> Tensor:
        """The actor's outputs alone."""
        raise NotImplementedError

    def value(self, obs: Tensor) -> Tensor:
        """V(s) ``(B,)`` alone."""
        raise NotImplementedError

    def forward(self, obs: Tensor) -> Tensor:
        """``cat([actor outputs, V(s)], 1)``: one output tensor for metrics and the NTK."""
        policy, value = self.policy_and_value(obs)
        return torch.cat([policy, value.unsqueeze(1)], 1)


class SeparateActorCritic(ActorCritic):
    """Two networks from the same factory: ``actor`` (n_outputs) and ``critic`` (1 output)."""

    def __init__(self, actor: nn.Module, critic: nn.Module) -> None:
        super().__init__()
        self.actor = actor
        self.critic = critic
        self.head_names = tuple(f"actor.{h}" for h in head_module_names(actor)) + tuple(
            f"critic.{h}" for h in head_module_names(critic)
        )

    def policy_and_value(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Actor logits and critic value (two forwards)."""
        return self.actor(obs), self.critic(obs).squeeze(1)

    def policy(self, obs: Tensor) -> Tensor:
        """The actor alone."""
        return self.actor(obs)

    def value(self, obs: Tensor) -> Tensor:
        """The critic alone."""
        return self.critic(obs).squeeze(1)


class SharedActorCritic(ActorCritic):
    """One trunk, a policy head and a value head on the same features (Note [Shared trunk])."""

    head_names = ("policy_head", "value_head")

    def __init__(self, trunk: nn.Module, policy_head: nn.Module, value_head: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.policy_head = policy_head
        self.value_head = value_head

    def policy_and_value(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """One trunk forward, both heads."""
        features = self.trunk(obs)
        return self.policy_head(features), self.value_head(features).squeeze(1)

    def policy(self, obs: Tensor) -> Tensor:
        """Trunk and policy head."""
        return self.policy_head(self.trunk(obs))

    def value(self, obs: Tensor) -> Tensor:
        """Trunk and value head."""
        return self.value_head(self.trunk(obs)).squeeze(1)


def _split_head(net: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(trunk, head): ``net`` with its head module replaced by ``nn.Identity``, and that head."""
    heads = head_module_names(net)
    if len(heads) != 1:
        raise ValueError(
            f"a shared trunk needs a network with exactly one head module, {type(net).__name__} has {heads}"
        )
    parent_name, _, attr = heads[0].rpartition(".")
    parent = net.get_submodule(parent_name)
    head = parent.get_submodule(attr)
    setattr(parent, attr, nn.Identity())
    return net, head


def _reinit_head(head: nn.Module, gain: float) -> None:
    """Orthogonal weights with ``gain`` and zero bias, unless the head is constrained."""
    if hasattr(head, "parametrizations"):
        return  # an orthogonal constraint fixes the scale; a gain cannot apply
    orthogonal_init_(head, gain=gain)


def make_actor_critic(
    observation_space: gym.Space,
    action_space: gym.Space,
    cfg: NetworkConfig,
    *,
    shared_trunk: bool = False,
    actor_head_gain: float | None = 0.01,
) -> ActorCritic:
    """Build the actor-critic of ``cfg.name`` for the given spaces.

    Args:
        observation_space: one sub-env's observation space.
        action_space: one sub-env's action space (sets the actor's output width).
        cfg: the ``network`` section; actor, critic and trunk all come from its factory.
        shared_trunk: one trunk with two heads instead of two networks.
        actor_head_gain: re-initialise the actor's output layer orthogonally with this gain and
            zero bias, for a near-uniform initial policy (Andrychowicz et al. 2021, "What matters
            in on-policy RL", and CleanRL use 0.01); None keeps the factory's initialisation.
    """
    _, n_outputs = action_distribution(action_space)
    actor = make_network(observation_space, _outputs(n_outputs), cfg)
    if shared_trunk:
        trunk, policy_head = _split_head(actor)
        with torch.no_grad():
            probe = torch.zeros((1, *observation_space.shape), dtype=torch.float32)
            features = trunk(probe).shape[-1]
        value_head = nn.Linear(features, 1, bias=cfg.bias)
        if cfg.init == "orthogonal":
            orthogonal_init_(value_head, gain=1.0)
        model: ActorCritic = SharedActorCritic(trunk, policy_head, value_head)
    else:
        critic = make_network(observation_space, _outputs(1), cfg)
        model = SeparateActorCritic(actor, critic)
    if actor_head_gain is not None:
        _reinit_head(model.get_submodule(model.head_names[0]), actor_head_gain)
    if isinstance(action_space, gym.spaces.Box):
        model.log_std = nn.Parameter(torch.zeros(n_outputs))  # σ = 1 at the start (CleanRL)
    return model
