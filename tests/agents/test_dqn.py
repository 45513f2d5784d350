"""DQN: the loss against hand calculations, ε-greedy acting and target updates with a mock network.

The mock network (in the spirit of Dopamine's ``MockDQNNetwork``) is a lookup table: observation
``[i]`` gets the Q-values of row ``i``, so every number below can be checked by hand.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from plasticrl.agents.buffers import Batch
from plasticrl.agents.common import NonFiniteLossError, linear_schedule
from plasticrl.agents.dqn import DQNAgent, DQNConfig, dqn_loss
from torch import nn

# Online and target Q-tables: 4 states × 2 actions.
ONLINE_Q = [[1.0, 2.0], [3.0, 0.5], [0.0, 4.0], [5.0, -1.0]]
TARGET_Q = [[0.5, 1.5], [2.0, 6.0], [1.0, 3.0], [-2.0, 7.0]]
GAMMA = 0.5


class TableQNet(nn.Module):
    """Q(s, ·) = table[s]; the observation is ``[s]`` (float)."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.tensor(table))
        self.register_buffer("version", torch.tensor(0))  # a non-float buffer

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.table[obs[:, 0].long()]


def nets() -> tuple[TableQNet, TableQNet]:
    return TableQNet(ONLINE_Q), TableQNet(TARGET_Q)


def make_batch(rows: list[tuple[int, int, float, int, float]]) -> Batch:
    """rows of (state, action, reward, next_state, terminated)."""
    s, a, r, s2, d = zip(*rows, strict=True)
    return Batch(
        obs=torch.tensor(s, dtype=torch.float32)[:, None],
        actions=torch.tensor(a),
        rewards=torch.tensor(r, dtype=torch.float32),
        next_obs=torch.tensor(s2, dtype=torch.float32)[:, None],
        terminated=torch.tensor(d, dtype=torch.float32),
    )


# (s0, a1, r=1, s1, not terminal): target = 1 + 0.5 * max(TARGET_Q[1]) = 1 + 0.5 * 6 = 4, Q = 2, δ = -2
# (s2, a0, r=-0.5, s3, terminal):  target = -0.5 (no bootstrap),                       Q = 0, δ = 0.5
HAND_BATCH = [(0, 1, 1.0, 1, 0.0), (2, 0, -0.5, 3, 1.0)]


# ---------------------------------------------------------------------------------------------
# dqn_loss


def test_loss_hand_calculation_huber_and_mse() -> None:
    q_net, target_net = nets()
    batch = make_batch(HAND_BATCH)
    huber, metrics = dqn_loss(q_net, target_net, batch, GAMMA, loss="huber")
    # Huber(δ=-2) = |δ| - 0.5 = 1.5; Huber(0.5) = 0.5 δ² = 0.125
    assert huber.item() == pytest.approx((1.5 + 0.125) / 2)
    assert metrics["td_loss"].item() == pytest.approx(0.8125)
    assert metrics["q_values"].item() == pytest.approx((2.0 + 0.0) / 2)
    assert not metrics["td_loss"].requires_grad and not metrics["q_values"].requires_grad
    mse, _ = dqn_loss(q_net, target_net, batch, GAMMA, loss="mse")
    assert mse.item() == pytest.approx((4.0 + 0.25) / 2)


def test_loss_gradient_only_reaches_taken_actions_of_online_net() -> None:
    q_net, target_net = nets()
    loss, _ = dqn_loss(q_net, target_net, make_batch(HAND_BATCH), GAMMA, loss="mse")
    loss.backward()
    # d/dQ mean((Q - y)²) = 2 (Q - y) / N
    expected = torch.zeros(4, 2)
    expected[0, 1] = 2 * (2.0 - 4.0) / 2
    expected[2, 0] = 2 * (0.0 - (-0.5)) / 2
    assert torch.allclose(q_net.table.grad, expected)
    assert target_net.table.grad is None  # the target is a constant


def test_terminal_does_not_bootstrap_but_truncated_does() -> None:
    q_net, target_net = nets()
    # Same transition (s3, a0, r=1, s2): terminated → y = 1; truncated (terminated=0, the real
    # final observation s2 as next_obs) → y = 1 + 0.5 * max(TARGET_Q[2]) = 1 + 1.5 = 2.5. Q = 5.
    terminal, _ = dqn_loss(q_net, target_net, make_batch([(3, 0, 1.0, 2, 1.0)]), GAMMA, loss="mse")
    truncated, _ = dqn_loss(q_net, target_net, make_batch([(3, 0, 1.0, 2, 0.0)]), GAMMA, loss="mse")
    assert terminal.item() == pytest.approx((5.0 - 1.0) ** 2)
    assert truncated.item() == pytest.approx((5.0 - 2.5) ** 2)
    # the bootstrap really reads next_obs: another next state gives another target
    other, _ = dqn_loss(q_net, target_net, make_batch([(3, 0, 1.0, 0, 0.0)]), GAMMA, loss="mse")
    assert other.item() == pytest.approx((5.0 - (1.0 + 0.5 * 1.5)) ** 2)


def test_gamma_zero_and_one() -> None:
    q_net, target_net = nets()
    batch = make_batch([(0, 1, 1.0, 1, 0.0)])
    assert dqn_loss(q_net, target_net, batch, 0.0, loss="mse")[0].item() == pytest.approx((2.0 - 1.0) ** 2)
    assert dqn_loss(q_net, target_net, batch, 1.0, loss="mse")[0].item() == pytest.approx((2.0 - 7.0) ** 2)


def test_double_dqn_online_argmax_target_value() -> None:
    q_net, target_net = nets()
    batch = make_batch(HAND_BATCH)
    # s1: online argmax is action 0 (3.0 > 0.5); the target values it at 2.0 (not its own max, 6.0)
    # → y = 1 + 0.5 * 2 = 2 = Q, δ = 0. The terminal row is unchanged (δ = 0.5).
    mse, _ = dqn_loss(q_net, target_net, batch, GAMMA, double_dqn=True, loss="mse")
    assert mse.item() == pytest.approx((0.0 + 0.25) / 2)
    huber, _ = dqn_loss(q_net, target_net, batch, GAMMA, double_dqn=True, loss="huber")
    assert huber.item() == pytest.approx((0.0 + 0.125) / 2)
    # s3: online argmax is 0, the target's own max is action 1 (7.0) → y = 0.5·(-2) vs 0.5·7
    differ = make_batch([(1, 1, 0.0, 3, 0.0)])
    assert dqn_loss(q_net, target_net, differ, GAMMA, loss="mse")[0].item() == pytest.approx((0.5 - 3.5) ** 2)
    double = dqn_loss(q_net, target_net, differ, GAMMA, double_dqn=True, loss="mse")[0].item()
    assert double == pytest.approx((0.5 + 1.0) ** 2)
    # s2: both pick action 1 → double DQN equals DQN, y = 0.5·3 = 1.5, Q(s0, a0) = 1
    agree = make_batch([(0, 0, 0.0, 2, 0.0)])
    single = dqn_loss(q_net, target_net, agree, GAMMA, loss="mse")[0].item()
    double = dqn_loss(q_net, target_net, agree, GAMMA, double_dqn=True, loss="mse")[0].item()
    assert single == double == pytest.approx((1.0 - 1.5) ** 2)


def test_unknown_loss_raises() -> None:
    q_net, target_net = nets()
    with pytest.raises(ValueError, match="invalid DQN loss 'l1'"):
        dqn_loss(q_net, target_net, make_batch(HAND_BATCH), GAMMA, loss="l1")


# ---------------------------------------------------------------------------------------------
# ε schedule and acting


def make_agent(*, lr: float = 0.1, seed: int = 0, regularizers: Any = (), **cfg: Any) -> DQNAgent:
    q_net = TableQNet(ONLINE_Q)
    optimizer = torch.optim.SGD(q_net.parameters(), lr=lr)
    defaults: dict[str, Any] = {"gamma": GAMMA, "loss": "mse", "batch_size": 2}
    return DQNAgent(q_net, optimizer, DQNConfig(**(defaults | cfg)), 2, regularizers=regularizers, seed=seed)


def with_hand_target(agent: DQNAgent) -> DQNAgent:
    """Give the agent's target network the TARGET_Q table, so HAND_BATCH's numbers apply."""
    with torch.no_grad():
        agent.target_net.table.copy_(torch.tensor(TARGET_Q))
    return agent


def test_epsilon_schedule_values() -> None:
    agent = make_agent(eps_start=1.0, eps_end=0.1, eps_decay_steps=100)
    assert [agent.epsilon(s) for s in (-5, 0, 25, 50, 100, 101, 10**6)] == pytest.approx(
        [1.0, 1.0, 0.775, 0.55, 0.1, 0.1, 0.1]
    )
    assert make_agent(eps_start=1.0, eps_end=0.2, eps_decay_steps=0).epsilon(0) == 0.2
    assert linear_schedule(0.0, 1.0, 10, 3) == pytest.approx(0.3)  # works upward too


def test_epsilon_is_exactly_eps_end_after_the_ramp() -> None:
    agent = make_agent(eps_start=1.0, eps_end=0.1, eps_decay_steps=100)
    assert agent.epsilon(100) == 0.1
    assert agent.epsilon(10**6) == 0.1


ALL_STATES = np.arange(4, dtype=np.float32)[:, None]
GREEDY = [1, 0, 1, 0]  # argmax of each ONLINE_Q row


def test_act_is_greedy_at_epsilon_zero() -> None:
    agent = make_agent(eps_start=0.0, eps_end=0.0)
    for step in (0, 10, 10_000):
        assert agent.act(ALL_STATES, step).tolist() == GREEDY
    assert agent.greedy(ALL_STATES).tolist() == GREEDY


def test_act_at_epsilon_one_uses_the_generator_only() -> None:
    agent = make_agent(eps_start=1.0, eps_end=1.0, seed=5)
    mirror = np.random.default_rng(5)
    for _ in range(3):
        actions = agent.act(ALL_STATES, 0)
        mirror.random(4)
        assert actions.tolist() == mirror.integers(0, 2, size=4).tolist()


def test_act_at_epsilon_one_is_uniform() -> None:
    agent = make_agent(eps_start=1.0, eps_end=1.0, seed=1)
    obs = np.zeros((2000, 1), np.float32)  # greedy action 1 everywhere
    actions = agent.act(obs, 0)
    assert set(actions.tolist()) == {0, 1}
    assert abs(actions.mean() - 0.5) < 0.05


def test_act_mixes_exploration_and_greedy_exactly() -> None:
    agent = make_agent(eps_start=0.5, eps_end=0.5, seed=2)
    mirror = np.random.default_rng(2)
    obs = np.tile(ALL_STATES, (25, 1))
    actions = agent.act(obs, 0)
    explore = mirror.random(100) < 0.5
    random_actions = mirror.integers(0, 2, size=100)
    expected = np.where(explore, random_actions, np.tile(GREEDY, 25))
    assert actions.tolist() == expected.tolist()
    assert 0 < explore.sum() < 100


def test_generator_is_drawn_identically_regardless_of_epsilon() -> None:
    states = []
    for eps in (0.0, 0.3, 1.0):
        agent = make_agent(eps_start=eps, eps_end=eps, seed=9)
        for step in range(4):
            agent.act(ALL_STATES, step)
        states.append(agent.rng.bit_generator.state)
    assert states[0] == states[1] == states[2]


# ---------------------------------------------------------------------------------------------
# Target updates


def test_hard_target_update_copies() -> None:
    agent = make_agent(tau=1.0)
    with torch.no_grad():
        agent.q_net.table.add_(10.0)
        agent.q_net.version.fill_(3)
    assert not torch.equal(agent.target_net.table, agent.q_net.table)
    agent.update_target()
    assert torch.equal(agent.target_net.table, agent.q_net.table)
    assert agent.target_net.version.item() == 3
    with torch.no_grad():
        agent.q_net.table.add_(1.0)  # a copy, not shared storage
    assert torch.equal(agent.target_net.table, torch.tensor(ONLINE_Q) + 10.0)
    assert not agent.target_net.table.requires_grad


def test_polyak_target_update_half() -> None:
    agent = make_agent(tau=0.5)
    assert torch.equal(agent.target_net.table, torch.tensor(ONLINE_Q))  # starts as a copy
    with torch.no_grad():
        agent.q_net.table.copy_(torch.tensor(TARGET_Q))
        agent.q_net.version.fill_(7)
    agent.update_target()
    expected = 0.5 * torch.tensor(TARGET_Q) + 0.5 * torch.tensor(ONLINE_Q)
    assert torch.equal(agent.target_net.table, expected)
    agent.update_target()
    assert torch.equal(agent.target_net.table, 0.5 * torch.tensor(TARGET_Q) + 0.5 * expected)
    assert agent.target_net.version.item() == 0  # non-float buffers are not interpolated


# ---------------------------------------------------------------------------------------------
# update()


def test_update_takes_one_sgd_step() -> None:
    agent = with_hand_target(make_agent(lr=0.5))
    metrics = agent.update(make_batch(HAND_BATCH))
    assert metrics["td_loss"].item() == pytest.approx(2.125)
    expected = torch.tensor(ONLINE_Q)
    expected[0, 1] -= 0.5 * (2 * (2.0 - 4.0) / 2)  # 2.0 + 1.0
    expected[2, 0] -= 0.5 * (2 * (0.0 + 0.5) / 2)  # 0.0 - 0.25
    assert torch.allclose(agent.q_net.table, expected)
    assert torch.equal(agent.target_net.table, torch.tensor(TARGET_Q))  # untouched until update_target
    assert agent.updates == 1


def test_update_raises_on_nan_loss_and_changes_nothing() -> None:
    agent = make_agent(lr=0.5)
    before = copy.deepcopy(agent.state_dict())
    bad = make_batch([(0, 1, float("nan"), 1, 0.0)])
    with pytest.raises(NonFiniteLossError, match="non-finite loss nan at update 0"):
        agent.update(bad)
    assert torch.equal(agent.q_net.table, before["q_net"]["table"])
    assert torch.equal(agent.target_net.table, before["target_net"]["table"])
    assert agent.optimizer.state_dict() == before["optimizer"]
    assert agent.updates == 0
    inf = make_batch([(0, 1, float("inf"), 1, 0.0)])
    with pytest.raises(NonFiniteLossError):
        agent.update(inf)
    assert torch.equal(agent.q_net.table, before["q_net"]["table"])


class SumPenalty:
    """Stub regularizer: coef · Σ table (gradient ``coef`` on every entry)."""

    name = "sum"

    def __init__(self, net: TableQNet, coef: float, value: float | None = None) -> None:
        self.net, self.coef, self.value = net, coef, value
        self.calls = 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        out = self.coef * self.net.table.sum()
        return out if self.value is None else out * 0 + self.value

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = state["calls"]


def test_regularizer_penalty_is_added_to_the_loss() -> None:
    q_net = TableQNet(ONLINE_Q)
    reg = SumPenalty(q_net, coef=0.25)
    optimizer = torch.optim.SGD(q_net.parameters(), lr=0.5)
    cfg = DQNConfig(gamma=GAMMA, loss="mse", batch_size=2)
    agent = DQNAgent(q_net, optimizer, cfg, 2, regularizers=[reg])
    with_hand_target(agent)
    metrics = agent.update(make_batch(HAND_BATCH))
    assert reg.calls == 1
    assert metrics["reg_sum"].item() == pytest.approx(0.25 * sum(map(sum, ONLINE_Q)))
    assert metrics["td_loss"].item() == pytest.approx(2.125)  # the task loss alone
    expected = torch.tensor(ONLINE_Q) - 0.5 * 0.25  # penalty gradient on every entry
    expected[0, 1] -= 0.5 * -2.0
    expected[2, 0] -= 0.5 * 0.5
    assert torch.allclose(agent.q_net.table, expected)


def test_nan_penalty_raises_before_stepping() -> None:
    q_net = TableQNet(ONLINE_Q)
    nan_penalty = SumPenalty(q_net, 1.0, float("nan"))
    optimizer = torch.optim.SGD(q_net.parameters(), lr=0.5)
    agent = DQNAgent(q_net, optimizer, DQNConfig(gamma=GAMMA, batch_size=2), 2, regularizers=[nan_penalty])
    with pytest.raises(NonFiniteLossError):
        agent.update(make_batch(HAND_BATCH))
    assert torch.equal(agent.q_net.table, torch.tensor(ONLINE_Q))


def test_grad_clipping_reports_norm_and_scales_step() -> None:
    agent = with_hand_target(make_agent(lr=1.0, max_grad_norm=0.5))
    metrics = agent.update(make_batch(HAND_BATCH))
    grad_norm = (2.0**2 + 0.5**2) ** 0.5  # gradients -2 and 0.5 (mse)
    assert metrics["grad_norm"].item() == pytest.approx(grad_norm)
    expected = torch.tensor(ONLINE_Q)
    scale = 0.5 / grad_norm
    expected[0, 1] += 2.0 * scale
    expected[2, 0] -= 0.5 * scale
    assert torch.allclose(agent.q_net.table, expected, atol=1e-6)


def test_scheduler_steps_once_per_update() -> None:
    q_net = TableQNet(ONLINE_Q)
    optimizer = torch.optim.SGD(q_net.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: 1.0 / (1 + u))
    agent = DQNAgent(q_net, optimizer, DQNConfig(gamma=GAMMA, batch_size=2), 2, scheduler=scheduler)
    for _ in range(3):
        agent.update(make_batch(HAND_BATCH))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1.0 / 4)


def test_state_dict_round_trip_continues_identically() -> None:
    a = make_agent(eps_start=0.5, eps_end=0.5, seed=3)
    batch = make_batch(HAND_BATCH)
    a.update(batch)
    a.act(ALL_STATES, 0)
    b = make_agent(eps_start=0.5, eps_end=0.5, seed=99)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert b.updates == 1
    for _ in range(3):
        assert a.act(ALL_STATES, 0).tolist() == b.act(ALL_STATES, 0).tolist()
        a.update(batch)
        b.update(batch)
        a.update_target()
        b.update_target()
    assert torch.equal(a.q_net.table, b.q_net.table)
    assert torch.equal(a.target_net.table, b.target_net.table)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"gamma": 1.5}, "gamma"),
        ({"tau": 0.0}, "tau"),
        ({"batch_size": 64, "buffer_size": 32}, "buffer_size"),
        ({"eps_start": -0.1}, "eps_start"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"target_update_every": 0}, "target_update_every"),
    ],
)
def test_config_checks(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=f"invalid agent.{key}"):
        DQNConfig(**kwargs)
