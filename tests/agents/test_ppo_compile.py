"""``agent.compile``: the compiled minibatch loss, and the eager fallback when compiling fails."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from plasticrl.agents.actor_critic import make_actor_critic
from plasticrl.agents.networks import NetworkConfig
from plasticrl.agents.ppo import PPOAgent, PPOConfig
from plasticrl.agents.rollout import RolloutBatch


def _agent(compile: bool) -> tuple[PPOAgent, RolloutBatch]:
    torch.manual_seed(0)
    obs_space, act_space = gym.spaces.Box(0.0, 1.0, (8,), np.float32), gym.spaces.Discrete(3)
    model = make_actor_critic(obs_space, act_space, NetworkConfig(hidden_sizes=(16, 16)))
    agent = PPOAgent(
        model,
        torch.optim.Adam(model.parameters(), lr=1e-3),
        PPOConfig(num_minibatches=2, update_epochs=2, compile=compile),
        act_space,
    )
    g = torch.Generator().manual_seed(1)
    n = 64
    batch = RolloutBatch(
        torch.rand(n, 8, generator=g),
        torch.randint(0, 3, (n,), generator=g),
        -torch.rand(n, generator=g),
        torch.randn(n, generator=g),
        torch.randn(n, generator=g),
        torch.randn(n, generator=g),
    )
    return agent, batch


def test_a_failed_compile_warns_once_and_trains_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fn: object, **kwargs: object) -> object:
        def fail(*args: object) -> object:
            raise RuntimeError("no C++ compiler")

        return fail

    monkeypatch.setattr(torch, "compile", broken)
    agent, batch = _agent(compile=True)
    reference, _ = _agent(compile=False)
    with pytest.warns(RuntimeWarning, match="agent.compile: torch.compile failed .*no C\\+\\+ compiler"):
        agent.update(batch)
    reference.update(batch)
    for a, b in zip(agent.model.parameters(), reference.model.parameters(), strict=True):
        assert torch.equal(a, b)  # the fallback is the eager update, step for step


@pytest.mark.slow
def test_compiled_update_matches_the_eager_one() -> None:
    """Compiled and eager losses agree to float32 rounding; after one update the weights too."""
    compiled, batch = _agent(compile=True)
    eager, _ = _agent(compile=False)
    loss_c, metrics_c = compiled._loss(batch)
    loss_e, metrics_e = eager._loss(batch)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for key in metrics_e:
        torch.testing.assert_close(metrics_c[key], metrics_e[key], rtol=1e-5, atol=1e-6)
    compiled.update(batch)
    eager.update(batch)
    for a, b in zip(compiled.model.parameters(), eager.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_run_resumes_bit_exactly(tmp_path) -> None:
    """The default compile mode builds the same kernels each time: resumed equals uninterrupted."""
    import plasticrl
    from plasticrl.trainers.run import resume

    from tests.conftest import PROTOCOL_PRESET, SMALL_PROTOCOL

    preset = PROTOCOL_PRESET
    small = {**SMALL_PROTOCOL, "logging__dir": str(tmp_path)}
    straight = plasticrl.train(str(preset), total_steps=1024, logging__name="straight", **small)
    half = plasticrl.train(str(preset), total_steps=512, logging__name="half", **small)
    resumed = resume(half.run_dir, ["total_steps=1024"], quiet=True)
    assert resumed.global_step == straight.global_step == 1024
    a, b = straight.agent.model.state_dict(), resumed.agent.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
