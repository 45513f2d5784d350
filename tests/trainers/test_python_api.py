"""The Python API: ``plasticrl.train(config, **overrides)`` and ``plasticrl.load(run_dir)``.

Tiny CartPole runs (a few hundred steps): what is checked is that keyword overrides reach the
resolved config, that a loaded agent holds exactly the trained network, and that ``act`` is the
greedy action, ε-greedy for DQN or a draw of π for PPO when asked to sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plasticrl
import pytest
import torch
import yaml
from plasticrl.trainers.config import ConfigError, load_config
from plasticrl.trainers.run import resolve_config

TINY = {
    "total_steps": 300,
    "agent": {"learning_starts": 50, "buffer_size": 500, "batch_size": 16},
    "metrics": {"every": 0, "ntk_every": 0},
}


def test_overrides_by_keyword_dict_and_dotted_name() -> None:
    cfg = resolve_config(
        "configs/cartpole/dqn.yaml",
        seed=4,
        optimizer__lr=3e-4,
        network={"hidden_sizes": [32, 16]},
        **{"agent.batch_size": 8, "regularizers": [{"name": "spectral", "coef": 0.01}]},
    )
    assert cfg.seed == 4 and cfg.optimizer.lr == 3e-4 and cfg.optimizer.name == "adam"  # merged
    assert cfg.network.hidden_sizes == (32, 16) and cfg.agent.batch_size == 8
    assert cfg.regularizers[0].name == "spectral" and cfg.regularizers[0].coef == 0.01
    from_dict = resolve_config({"agent": {"name": "ppo"}, "env": {"id": "CartPole-v1"}}, agent__num_steps=64)
    assert from_dict.agent.name == "ppo" and from_dict.agent.num_steps == 64
    base = load_config("configs/cartpole/dqn.yaml")
    assert resolve_config(base) is base and resolve_config(base, seed=9).seed == 9


def test_bad_keyword_overrides_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"keyword override 'optimizer.lrr=1'.*did you mean 'lr'"):
        resolve_config("configs/cartpole/dqn.yaml", optimizer__lrr=1)
    with pytest.raises(ConfigError, match=r"config dict: .*unknown key 'sede'"):
        resolve_config({"sede": 1})
    with pytest.raises(ConfigError, match="takes an ExperimentConfig, a YAML path or a dict"):
        resolve_config(42)  # type: ignore[arg-type]


def test_train_then_load_a_dqn_agent(tmp_path: Path) -> None:
    result = plasticrl.train("configs/cartpole/dqn.yaml", **TINY, logging__dir=str(tmp_path), quiet=True)
    assert result.status == "finished" and result.global_step == 300
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["total_steps"] == 300
    agent = plasticrl.load(result.run_dir)
    assert agent.global_step == 300 and agent.observation_shape == (4,)
    obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    q = result.agent.q_net(torch.as_tensor(obs)).detach()
    assert torch.allclose(agent.scores(obs), q)  # the trained weights, not a fresh network
    greedy = agent.act(obs)
    assert isinstance(greedy, np.ndarray) and greedy.tolist() == q.argmax(1).tolist()
    single = agent.act(obs[0])
    assert isinstance(single, int) and single == int(q[0].argmax())
    explored = agent.act(np.repeat(obs[:1], 400, axis=0), greedy=False, epsilon=1.0)
    assert set(explored.tolist()) == {0, 1}  # ε = 1: uniform over both actions
    assert agent.act(np.repeat(obs[:1], 50, axis=0), greedy=False, epsilon=0.0).tolist() == [single] * 50
    env = agent.make_env()
    first, _ = env.reset(seed=0)
    assert first.shape == agent.observation_shape and agent.act(first) in (0, 1)
    with pytest.raises(ValueError, match=r"shape \(3,\) does not match the run's \(4,\)"):
        agent.act(np.zeros(3, dtype=np.float32))


def test_load_a_ppo_agent_samples_from_its_policy(tmp_path: Path) -> None:
    result = plasticrl.train(
        {"agent": {"name": "ppo", "num_steps": 64}, "env": {"id": "CartPole-v1", "num_envs": 2}},
        total_steps=256,
        metrics={"every": 0, "ntk_every": 0},
        logging={"dir": str(tmp_path)},
        quiet=True,
    )
    agent = plasticrl.load(result.run_dir)
    obs = np.random.default_rng(1).normal(size=(16, 4)).astype(np.float32)
    logits = result.agent.model.policy(torch.as_tensor(obs)).detach()
    assert torch.allclose(agent.scores(obs), logits)
    assert agent.act(obs).tolist() == logits.argmax(1).tolist()
    # Sampling one observation 2000 times: the frequency of action 1 is π(1|s) within 4 σ.
    p1 = float(torch.softmax(logits[0], 0)[1])
    draws = agent.act(np.repeat(obs[:1], 2000, axis=0), greedy=False)
    assert abs(draws.mean() - p1) < 4 * np.sqrt(p1 * (1 - p1) / 2000) + 1e-9


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        plasticrl.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no checkpoint.pt in"):
        plasticrl.load(tmp_path / "empty")
