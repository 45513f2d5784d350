"""PPO: GAE and the clipped objective against hand calculations; the actor-critic; the agent's update.

Every expected number below is written out as the arithmetic of the formula it checks (γ = 0.9,
λ = 0.8, so γλ = 0.72, in the GAE cases).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from plasticrl.agents.actor_critic import (
    Categorical,
    DiagGaussian,
    SeparateActorCritic,
    SharedActorCritic,
    action_distribution,
    make_actor_critic,
)
from plasticrl.agents.common import NonFiniteLossError
from plasticrl.agents.networks import NetworkConfig
from plasticrl.agents.ppo import PPOAgent, PPOConfig, explained_variance, gae, ppo_loss
from plasticrl.agents.rollout import Rollout, RolloutBatch
from plasticrl.plasticity.optimizers import OptimizerConfig, make_optimizer, param_groups
from torch import nn

from tests.conftest import ConstantPenalty

GAMMA, LAM = 0.9, 0.8
OBS = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
ACTIONS = gym.spaces.Discrete(2)


def col(*values: float) -> torch.Tensor:
    """A (T, 1) rollout of one sub-env."""
    return torch.tensor(values, dtype=torch.float32).unsqueeze(1)


# ---------------------------------------------------------------------------------------------
# GAE

# One sub-env, T = 3: r = (1, 2, 3), V(s_t) = (0.5, 1.0, 1.5), V(s_3) = 2.0.
REWARDS, VALUES = (1.0, 2.0, 3.0), (0.5, 1.0, 1.5)
# δ_0 = 1 + 0.9·1.0 − 0.5 = 1.4 and δ_2 = 3 + 0.9·2.0 − 1.5 = 3.3 in every case below.
ONGOING = {  # δ_1 = 2 + 0.9·1.5 − 1.0 = 2.35
    "next_values": (1.0, 1.5, 2.0),
    "terminations": (0, 0, 0),
    "truncations": (0, 0, 0),
    "advantages": (1.4 + 0.72 * (2.35 + 0.72 * 3.3), 2.35 + 0.72 * 3.3, 3.3),
}
TERMINAL = {  # terminated at t = 1: δ_1 = 2 − 1.0 = 1 (V of the next state, 7, is ignored); A_1 = δ_1
    "next_values": (1.0, 7.0, 2.0),
    "terminations": (0, 1, 0),
    "truncations": (0, 0, 0),
    "advantages": (1.4 + 0.72 * 1.0, 1.0, 3.3),
}
TRUNCATED = {  # truncated at t = 1, final observation's value 5: δ_1 = 2 + 0.9·5 − 1.0 = 5.5; A_1 = δ_1
    "next_values": (1.0, 5.0, 2.0),
    "terminations": (0, 0, 0),
    "truncations": (0, 1, 0),
    "advantages": (1.4 + 0.72 * 5.5, 5.5, 3.3),
}
CASES = {"ongoing": ONGOING, "terminal": TERMINAL, "truncated": TRUNCATED}


@pytest.mark.parametrize("case", list(CASES))
def test_gae_hand_calculation(case: str) -> None:
    c = CASES[case]
    advantages, returns = gae(
        col(*REWARDS),
        col(*VALUES),
        col(*c["next_values"]),
        col(*c["terminations"]),
        col(*c["truncations"]),
        GAMMA,
        LAM,
    )
    torch.testing.assert_close(advantages, col(*c["advantages"]))
    torch.testing.assert_close(returns, col(*c["advantages"]) + col(*VALUES))  # R_t = A_t + V(s_t)


def test_gae_multi_env_columns_are_independent() -> None:
    cases = list(CASES.values())

    def stack(key: str) -> torch.Tensor:
        return torch.tensor([c[key] for c in cases], dtype=torch.float32).T  # (T, N = 3)

    n = len(cases)
    advantages, _ = gae(
        col(*REWARDS).expand(-1, n),
        col(*VALUES).expand(-1, n),
        stack("next_values"),
        stack("terminations"),
        stack("truncations"),
        GAMMA,
        LAM,
    )
    torch.testing.assert_close(advantages, stack("advantages"))


def test_gae_equals_the_truncated_sum_of_discounted_td_errors() -> None:
    # A_t = Σ_{l ≥ 0} (γλ)^l δ_{t+l}, the sum stopping after the first step that ends an episode.
    gen = torch.Generator().manual_seed(0)
    T, N = 20, 3
    rewards, values, next_values = (torch.randn(T, N, generator=gen) for _ in range(3))
    terminations = (torch.rand(T, N, generator=gen) < 0.15).float()
    truncations = (torch.rand(T, N, generator=gen) < 0.15).float() * (1 - terminations)
    advantages, _ = gae(rewards, values, next_values, terminations, truncations, GAMMA, LAM)
    deltas = rewards + GAMMA * (1 - terminations) * next_values - values
    expected = torch.zeros(T, N)
    for i in range(N):
        for t in range(T):
            for k in range(t, T):
                expected[t, i] += (GAMMA * LAM) ** (k - t) * deltas[k, i]
                if terminations[k, i] or truncations[k, i]:
                    break
    torch.testing.assert_close(advantages, expected)


def test_gae_with_gamma_and_lambda_one_is_the_monte_carlo_return() -> None:
    # one episode of 3 steps ending in a termination: R_t is the sum of the rewards to come
    _, returns = gae(col(1, 2, 3), col(9, 9, 9), col(9, 9, 9), col(0, 0, 1), col(0, 0, 0), 1.0, 1.0)
    torch.testing.assert_close(returns, col(6.0, 5.0, 3.0))


def test_rollout_next_values_bootstrap_only_truncations() -> None:
    rollout = Rollout(3, 2, OBS, ACTIONS)
    rollout.values[:] = torch.tensor([[0.5, 10.0], [1.0, 11.0], [1.5, 12.0]])
    # sub-env 0 truncated at t = 1; sub-env 1 truncated *and* terminated at t = 1 (a termination)
    rollout.truncations[1] = 1.0
    rollout.terminations[1, 1] = 1.0
    rollout.final_values[1] = torch.tensor([5.0, 99.0])
    next_values = rollout.next_values(torch.tensor([2.0, 13.0]))
    torch.testing.assert_close(next_values, torch.tensor([[1.0, 11.0], [5.0, 12.0], [2.0, 13.0]]))
    advantages, _ = gae(
        rollout.rewards, rollout.values, next_values, rollout.terminations, rollout.truncations, GAMMA, LAM
    )
    assert advantages[1, 1] == pytest.approx(0.0 - 11.0)  # δ_1 = r − V(s_1): no bootstrap at all


def test_rollout_put_and_flatten() -> None:
    rollout = Rollout(2, 3, OBS, ACTIONS)
    obs = np.arange(12, dtype=np.float32).reshape(3, 4)
    slot = rollout.put_obs(1, obs)
    assert slot.data_ptr() == rollout.obs[1].data_ptr()  # the agent acts on the stored tensor
    rollout.put_step(
        1,
        torch.tensor([1, 0, 1]),
        torch.tensor([-0.1, -0.2, -0.3]),
        np.array([1.0, 0.0, 2.0]),
        np.array([False, True, False]),
        np.array([True, False, False]),
    )
    batch = rollout.batch(torch.ones(2, 3), torch.zeros(2, 3))
    assert batch.obs.shape == (6, 4) and batch.actions.dtype == torch.int64
    np.testing.assert_array_equal(batch.obs[3:].numpy(), obs)  # row = t · N + i
    assert batch.actions[3:].tolist() == [1, 0, 1]
    assert rollout.terminations[1].tolist() == [0.0, 1.0, 0.0]
    assert rollout.truncations[1].tolist() == [1.0, 0.0, 0.0]
    assert rollout.rewards[1].tolist() == [1.0, 0.0, 2.0]


# ---------------------------------------------------------------------------------------------
# ppo_loss

# Three samples, ε = 0.2: ratios ρ = (1.5, 0.7, 1.1), advantages (1, −2, 0.5).
OLD_LOGP = [math.log(0.5)] * 3
NEW_LOGP = [math.log(0.75), math.log(0.35), math.log(0.55)]
ADV = [1.0, -2.0, 0.5]
OLD_V, NEW_V, RET = [1.0, 0.0, 2.0], [1.5, 0.1, 1.0], [2.0, 0.0, 1.0]
ENTROPY = [0.6, 0.7, 0.8]


def hand_batch(advantages: list[float] = ADV) -> RolloutBatch:
    t = torch.tensor
    return RolloutBatch(t([[0.0]] * 3), t([0, 1, 0]), t(OLD_LOGP), t(OLD_V), t(advantages), t(RET))


def test_ppo_loss_hand_calculation() -> None:
    new_logp = torch.tensor(NEW_LOGP, requires_grad=True)
    loss, metrics = ppo_loss(
        new_logp,
        torch.tensor(ENTROPY),
        torch.tensor(NEW_V),
        hand_batch(),
        clip_coef=0.2,
        ent_coef=0.01,
        vf_coef=0.5,
        norm_adv=False,
    )
    # max(−Aρ, −A clip(ρ)): (−1.5, −1.2) → −1.2 (clipped); (1.4, 1.6) → 1.6 (clipped); (−0.55, −0.55)
    policy_loss = (-1.2 + 1.6 - 0.55) / 3
    # unclipped (V − R)²: 0.25, 0.01, 0;
    # clipped V_old + clip(V − V_old, ±0.2) = 1.2, 0.1, 1.8 → (V − R)² = 0.64, 0.01, 0.64
    value_loss = 0.5 * (0.64 + 0.01 + 0.64) / 3
    expected = {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": 0.7,
        "approx_kl": ((0.5 - math.log(1.5)) + (-0.3 - math.log(0.7)) + (0.1 - math.log(1.1))) / 3,
        "old_approx_kl": -(math.log(1.5) + math.log(0.7) + math.log(1.1)) / 3,
        "clipfrac": 2 / 3,
    }
    assert {k: v.item() for k, v in metrics.items()} == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(policy_loss - 0.01 * 0.7 + 0.5 * value_loss, abs=1e-6)
    assert all(not v.requires_grad for v in metrics.values())
    # Only the unclipped sample moves the policy: ∂L/∂log π = −A ρ / B there, 0 where clipped.
    loss.backward()
    torch.testing.assert_close(new_logp.grad, torch.tensor([0.0, 0.0, -0.5 * 1.1 / 3]))


def test_ppo_loss_without_value_clipping_and_with_advantage_normalisation() -> None:
    args = (torch.tensor(NEW_LOGP), torch.tensor(ENTROPY), torch.tensor(NEW_V))
    _, metrics = ppo_loss(*args, hand_batch(), clip_coef=0.2, clip_vloss=False)
    assert metrics["value_loss"].item() == pytest.approx(0.5 * (0.25 + 0.01 + 0.0) / 3)
    adv = torch.tensor(ADV)
    normalised = ((adv - adv.mean()) / (adv.std() + 1e-8)).tolist()
    loss_norm, _ = ppo_loss(*args, hand_batch(), clip_coef=0.2, norm_adv=True)
    loss_pre, _ = ppo_loss(*args, hand_batch(normalised), clip_coef=0.2, norm_adv=False)
    assert loss_norm.item() == pytest.approx(loss_pre.item())


def test_explained_variance() -> None:
    returns = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(returns, returns) == 1.0
    assert explained_variance(torch.full((4,), 2.5), returns) == pytest.approx(0.0)
    assert math.isnan(explained_variance(returns, torch.ones(4)))


# ---------------------------------------------------------------------------------------------
# Distributions and actor-critics


def test_categorical_matches_torch_and_samples_its_probabilities() -> None:
    logits = torch.tensor([[0.0, 1.0, -1.0], [2.0, 2.0, 2.0]])
    ours, ref = Categorical(logits), torch.distributions.Categorical(logits=logits)
    actions = torch.tensor([1, 2])
    torch.testing.assert_close(ours.log_prob(actions), ref.log_prob(actions))
    torch.testing.assert_close(ours.entropy(), ref.entropy())
    gen = torch.Generator().manual_seed(0)
    big = Categorical(logits[:1].expand(20000, -1))
    counts = torch.bincount(big.sample(gen), minlength=3).float() / 20000
    torch.testing.assert_close(counts, ref.probs[0], atol=0.015, rtol=0)
    a = big.sample(torch.Generator().manual_seed(1))
    assert torch.equal(a, big.sample(torch.Generator().manual_seed(1)))
    assert action_distribution(ACTIONS) == (Categorical, 2)
    assert action_distribution(gym.spaces.Box(-1, 1, (2,))) == (DiagGaussian, 2)
    with pytest.raises(ValueError, match="Discrete and 1-D Box action spaces"):
        action_distribution(gym.spaces.Box(-1, 1, (2, 2)))


def test_separate_actor_critic_heads_and_groups() -> None:
    model = make_actor_critic(OBS, ACTIONS, NetworkConfig(hidden_sizes=(8, 8)))
    assert isinstance(model, SeparateActorCritic)
    assert model.head_names == ("actor.5", "critic.5")
    obs = torch.randn(5, 4)
    out = model(obs)
    assert out.shape == (5, 3)  # two logits and V(s)
    torch.testing.assert_close(out[:, :2], model.actor(obs))
    torch.testing.assert_close(out[:, 2], model.value(obs))
    groups = {g["kind"]: g["params"] for g in param_groups(model)}
    assert {id(p) for p in groups["head"]} == {id(model.actor[5].weight), id(model.critic[5].weight)}
    assert len(groups["matrix"]) == 4  # two hidden layers each
    # the actor head is re-initialised with gain 0.01: a near-uniform initial policy
    assert model.actor[5].weight.norm().item() == pytest.approx(0.01 * math.sqrt(2), rel=1e-4)
    assert torch.all(model.actor[5].bias == 0)
    kept = make_actor_critic(OBS, ACTIONS, NetworkConfig(hidden_sizes=(8, 8)), actor_head_gain=None)
    assert kept.actor[5].weight.norm() > 0.1


@pytest.mark.parametrize("name", ["mlp", "minatar_cnn", "isometric_mlp"])
def test_shared_trunk_has_two_heads_on_one_trunk(name: str) -> None:
    obs_space = gym.spaces.Box(0, 1, (4, 10, 10) if name == "minatar_cnn" else (4,), np.float32)
    cfg = NetworkConfig(name=name, hidden_sizes=(8,), channels=2, init="orthogonal")
    model = make_actor_critic(obs_space, gym.spaces.Discrete(3), cfg, shared_trunk=True)
    assert isinstance(model, SharedActorCritic)
    obs = torch.rand(6, *obs_space.shape)
    features = model.trunk(obs)
    assert features.shape == (6, 8)
    torch.testing.assert_close(model(obs)[:, :3], model.policy_head(features))
    torch.testing.assert_close(model.value(obs), model.value_head(features).squeeze(1))
    kinds = {g["kind"] for g in param_groups(model)}
    assert "head" in kinds
    head_params = next(g["params"] for g in param_groups(model) if g["kind"] == "head")
    assert any(p is model.value_head.weight for p in head_params)


class TwoHeads(nn.Module):
    head_names = ("a", "b")

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 2), nn.Linear(4, 2)


def two_heads(observation_space: gym.Space, action_space: gym.Space, cfg: NetworkConfig) -> nn.Module:
    return TwoHeads()


def test_shared_trunk_needs_a_single_head() -> None:
    cfg = NetworkConfig(name="tests.agents.test_ppo:two_heads")
    with pytest.raises(ValueError, match="exactly one head module, TwoHeads has"):
        make_actor_critic(OBS, ACTIONS, cfg, shared_trunk=True)


# ---------------------------------------------------------------------------------------------
# The agent


def make_agent(**cfg: Any) -> PPOAgent:
    torch.manual_seed(0)
    model = make_actor_critic(OBS, ACTIONS, NetworkConfig(hidden_sizes=(16,)))
    optimizer = make_optimizer(param_groups(model), OptimizerConfig(lr=1e-2))
    regularizers = cfg.pop("regularizers", ())
    defaults = {"num_minibatches": 2, "update_epochs": 2}
    return PPOAgent(
        model, optimizer, PPOConfig(**(defaults | cfg)), ACTIONS, regularizers=regularizers, seed=3
    )


def rollout_batch(agent: PPOAgent, n: int = 32) -> RolloutBatch:
    obs = torch.rand(n, 4, generator=torch.Generator().manual_seed(5))
    actions, log_probs = agent.act(obs)
    values = agent.value(obs)
    advantages = torch.linspace(-1, 1, n)
    return RolloutBatch(obs, actions, log_probs, values, advantages, values + advantages)


def test_act_samples_with_its_own_generator() -> None:
    a, b = make_agent(), make_agent()
    obs = torch.rand(64, 4)
    actions, log_probs = a.act(obs)
    assert torch.equal(actions, b.act(obs)[0])
    logits, values = a.model.policy_and_value(obs)
    torch.testing.assert_close(log_probs, Categorical(logits).log_prob(actions))
    torch.testing.assert_close(a.value(obs), values)
    torch.testing.assert_close(a.model.policy(obs), logits)
    assert not torch.equal(a.act(obs)[0], actions)  # the generator moved on


def test_update_takes_epochs_times_minibatches_steps() -> None:
    agent = make_agent(update_epochs=3, num_minibatches=4)
    batch = rollout_batch(agent)
    before = [p.clone() for p in agent.model.parameters()]
    metrics = agent.update(batch)
    assert agent.grad_steps == 12 and agent.updates == 1
    expected = {"policy_loss", "value_loss", "entropy", "approx_kl", "old_approx_kl", "clipfrac"}
    assert set(metrics) == expected | {"grad_norm", "explained_variance"}
    assert metrics["approx_kl"] >= 0
    assert any(not torch.equal(p, q) for p, q in zip(before, agent.model.parameters(), strict=True))


def test_target_kl_stops_the_whole_update() -> None:
    agent = make_agent(update_epochs=4, num_minibatches=4, target_kl=1e-6)
    agent.update(rollout_batch(agent))
    # the first step moves the policy by far more than 1e-6 nats; every later minibatch sees it
    assert agent.grad_steps == 1 and agent.updates == 1


def test_nan_penalty_raises_before_stepping() -> None:
    torch.manual_seed(0)
    agent = make_agent()
    agent.regularizers = [ConstantPenalty(agent.model, [float("nan")], "nan")]
    batch = rollout_batch(agent)
    before = {k: v.clone() for k, v in agent.model.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="non-finite loss nan at update 0"):
        agent.update(batch)
    for k, v in agent.model.state_dict().items():
        assert torch.equal(v, before[k])
    assert agent.grad_steps == 0 and not agent.optimizer.state


def test_regularizer_penalty_is_reported() -> None:
    agent = make_agent()
    agent.regularizers = [ConstantPenalty(agent.model, [0.25], "const")]
    metrics = agent.update(rollout_batch(agent))
    assert metrics["reg_const"] == pytest.approx(0.25)


def test_state_dict_round_trip_continues_identically() -> None:
    a = make_agent()
    a.update(rollout_batch(a))
    b = make_agent()
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # torch's optimizer state dict holds live tensors
    batch = rollout_batch(a)
    b_batch = rollout_batch(b)
    assert torch.equal(batch.actions, b_batch.actions)
    a.update(batch)
    b.update(b_batch)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert (a.updates, a.grad_steps) == (b.updates, b.grad_steps)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_steps": 0}, "num_steps"),
        ({"num_minibatches": 0}, "num_minibatches"),
        ({"update_epochs": 0}, "update_epochs"),
        ({"gamma": 1.5}, "gamma"),
        ({"gae_lambda": -0.1}, "gae_lambda"),
        ({"clip_coef": 0.0}, "clip_coef"),
        ({"ent_coef": -1.0}, "ent_coef"),
        ({"vf_coef": -1.0}, "vf_coef"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"target_kl": 0.0}, "target_kl"),
        ({"actor_head_gain": 0.0}, "actor_head_gain"),
    ],
)
def test_config_checks(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=f"invalid agent.{key}"):
        PPOConfig(**kwargs)
