"""PPO with Box actions: the diagonal Gaussian, clipping at the env boundary, training and resuming."""

from __future__ import annotations

import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from plasticrl.agents.actor_critic import DiagGaussian, action_distribution, make_actor_critic
from plasticrl.agents.networks import NetworkConfig
from plasticrl.envs.make import ClipAction, EnvConfig, make_env
from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, load_checkpoint
from plasticrl.trainers.config import load_config
from plasticrl.trainers.run import resume, train

from tests.trainers.test_on_policy import assert_agents_equal

CONTROL = Path(__file__).resolve().parents[2] / "configs" / "control"
PENDULUM = CONTROL / "ppo_pendulum.yaml"
BOX = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)


def test_gaussian_log_prob_and_entropy_by_hand() -> None:
    mean = torch.tensor([[0.5, -1.0], [0.0, 0.0]])
    log_std = torch.tensor([math.log(2.0), math.log(0.5)])
    dist = DiagGaussian(mean, log_std)
    a = torch.tensor([[1.5, -1.0], [3.0, 0.25]])
    # N(a; mu, sigma) = exp(-(a - mu)^2 / (2 sigma^2)) / (sigma sqrt(2 pi)), product over dimensions
    by_hand = []
    for row, mu in zip(a.tolist(), mean.tolist(), strict=True):
        p = 1.0
        for x, m, s in zip(row, mu, (2.0, 0.5), strict=True):
            p *= math.exp(-((x - m) ** 2) / (2 * s * s)) / (s * math.sqrt(2 * math.pi))
        by_hand.append(math.log(p))
    torch.testing.assert_close(dist.log_prob(a), torch.tensor(by_hand))
    h = sum(0.5 * math.log(2 * math.pi * math.e * s * s) for s in (2.0, 0.5))
    torch.testing.assert_close(dist.entropy(), torch.tensor([h, h]))
    torch.testing.assert_close(dist.mode(), mean)
    ref = torch.distributions.Normal(mean, log_std.exp())
    torch.testing.assert_close(dist.log_prob(a), ref.log_prob(a).sum(-1))


def test_gaussian_samples_follow_the_generator_and_the_distribution() -> None:
    mean, log_std = torch.full((20000, 2), 1.0), torch.tensor([0.0, math.log(3.0)])
    a = DiagGaussian(mean, log_std).sample(torch.Generator().manual_seed(0))
    b = DiagGaussian(mean, log_std).sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a.mean(0), torch.tensor([1.0, 1.0]), atol=0.06, rtol=0)
    torch.testing.assert_close(a.std(0), torch.tensor([1.0, 3.0]), atol=0.06, rtol=0)


def test_box_actor_critic_has_a_state_independent_log_std_and_discrete_has_none() -> None:
    obs = gym.spaces.Box(-1, 1, (3,), np.float32)
    assert action_distribution(BOX) == (DiagGaussian, 2)
    model = make_actor_critic(obs, BOX, NetworkConfig(hidden_sizes=(8,)))
    assert model.log_std.shape == (2,) and bool((model.log_std == 0).all())
    assert model.policy(torch.zeros(5, 3)).shape == (5, 2)  # the mean
    discrete = make_actor_critic(obs, gym.spaces.Discrete(2), NetworkConfig(hidden_sizes=(8,)))
    assert not hasattr(discrete, "log_std")
    assert "log_std" not in discrete.state_dict()
    with pytest.raises(ValueError, match="PPO supports Discrete and 1-D Box action spaces"):
        action_distribution(gym.spaces.Box(-1, 1, (2, 2)))


def test_actions_are_clipped_at_the_env_boundary_only() -> None:
    env = make_env(EnvConfig(id="Pendulum-v1", wrappers=("ClipAction",)))
    assert isinstance(env, ClipAction)
    assert env.action(np.array([5.0], np.float32)).tolist() == [2.0]
    assert env.action(np.array([-0.5], np.float32)).tolist() == [-0.5]
    import pickle

    pickle.dumps(env)
    with pytest.raises(ValueError, match="ClipAction needs a Box action space"):
        make_env(EnvConfig(id="CartPole-v1", wrappers=("ClipAction",)))


def test_agent_keeps_the_unclipped_sample_and_its_log_prob(runs_dir: Path) -> None:
    cfg = load_config(
        PENDULUM,
        [
            "total_steps=64",
            "agent.num_steps=16",
            "agent.num_minibatches=2",
            "agent.update_epochs=1",
            "logging.progress=false",
            "checkpoint.every=0",
            f"logging.dir={runs_dir}",
        ],
    )
    agent = train(cfg, quiet=True).agent
    with torch.no_grad():
        agent.model.log_std.fill_(math.log(5.0))  # wide: most samples fall outside [-2, 2]
    obs = torch.zeros(256, 3)
    actions, log_probs = agent.act(obs)
    assert actions.shape == (256, 1) and bool((actions.abs() > 2.0).any())
    mean = agent.model.policy(obs).detach()
    torch.testing.assert_close(log_probs, DiagGaussian(mean, agent.model.log_std.detach()).log_prob(actions))


SHORT = (
    "optimizer.lr_schedule=constant",  # an extended run would re-plan a linear schedule
    "total_steps=512",
    "env.num_envs=2",
    "agent.num_steps=64",
    "agent.num_minibatches=4",
    "agent.update_epochs=2",
    "metrics.every=1",
    "metrics.probe_size=32",
    "metrics.ntk_every=2",
    "metrics.ntk_probe_size=4",
    "logging.every=128",
    "logging.progress=false",
    "checkpoint.every=0",
)


@pytest.mark.parametrize("extra", [(), ("agent.shared_trunk=true", "optimizer.name=adamo")])
def test_ppo_on_pendulum_runs_and_resumes_bit_exact(runs_dir: Path, extra: tuple[str, ...]) -> None:
    def cfg(*more: str):
        return load_config(PENDULUM, [*SHORT, *extra, f"logging.dir={runs_dir}", *more])

    full = train(cfg("logging.name=full"), quiet=True)
    assert full.status == "finished" and full.updates == 4
    half = train(cfg("logging.name=half", "total_steps=256"), quiet=True)
    resumed = resume(half.run_dir, ["total_steps=512"], quiet=True)
    assert resumed.global_step == 512
    assert_agents_equal(full.agent, resumed.agent)
    a = load_checkpoint(full.run_dir / CHECKPOINT_NAME)
    b = load_checkpoint(resumed.run_dir / CHECKPOINT_NAME)
    np.testing.assert_array_equal(a["obs"], b["obs"])
    torch.testing.assert_close(a["agent"]["model"]["log_std"], b["agent"]["model"]["log_std"], rtol=0, atol=0)
    assert not torch.equal(a["agent"]["model"]["log_std"], torch.zeros(1))  # it was trained


@pytest.mark.slow
def test_ppo_learns_pendulum(runs_dir: Path) -> None:
    from tests.trainers.test_training import episodic_returns

    result = train(
        load_config(PENDULUM, ["total_steps=150000", f"logging.dir={runs_dir}", "logging.progress=false"]),
        quiet=True,
    )
    returns = [r for _, r in episodic_returns(result.run_dir)]
    assert np.mean(returns[:20]) < -900  # a random policy
    assert np.mean(returns[-20:]) > -400


def test_mujoco_preset_with_normalisation_wrappers_resumes_bit_exact(runs_dir: Path, monkeypatch) -> None:
    pytest.importorskip("mujoco")
    monkeypatch.chdir(runs_dir)  # MuJoCo writes MUJOCO_LOG.TXT into the working directory

    def cfg(*more: str):
        extra = [*SHORT, "env.num_envs=1", "agent.num_steps=128", f"logging.dir={runs_dir}", *more]
        return load_config(CONTROL / "ppo_halfcheetah.yaml", extra)

    full = train(cfg("logging.name=full"), quiet=True)
    half = train(cfg("logging.name=half", "total_steps=256"), quiet=True)
    resumed = resume(half.run_dir, ["total_steps=512"], quiet=True)
    assert_agents_equal(full.agent, resumed.agent)  # the running obs/reward statistics travelled too
    assert full.agent.model.log_std.shape == (6,)


def test_mujoco_envs_unpickle_mid_episode_where_they_were(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("mujoco")
    import pickle

    from plasticrl.envs.make import MujocoState

    monkeypatch.chdir(tmp_path)
    env = make_env(EnvConfig(id="Hopper-v5"))
    assert isinstance(env, MujocoState)
    env.reset(seed=3)
    for _ in range(7):
        env.step(np.full(3, 0.4, np.float32))
    copy = pickle.loads(pickle.dumps(env))  # gymnasium's own pickle would restart the episode
    for _ in range(5):
        a, b = env.step(np.full(3, -0.2, np.float32)), copy.step(np.full(3, -0.2, np.float32))
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:4] == b[1:4]
    np.testing.assert_array_equal(env.reset()[0], copy.reset()[0])  # the reset noise generator too
