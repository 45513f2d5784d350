"""Train from Python, then load the run and act with its policy.

:func:`plasticrl.train` takes a YAML preset's path, a dict or an ``ExperimentConfig``, with config
keys as keyword overrides (``optimizer__lr=...`` or ``optimizer={"lr": ...}``); it returns a
``TrainResult`` whose ``run_dir`` holds the events, ``config.yaml`` and ``checkpoint.pt``.
:func:`plasticrl.load` rebuilds the trained network from that folder: ``agent.act(obs)`` is the
greedy action, ``agent.act(obs, greedy=False)`` the exploring one (ε-greedy for DQN, a sample of
π for PPO), and ``agent.make_env()`` builds the env as the run saw it.

Run: ``python docs/examples/train_and_load.py`` (about ten seconds on a CPU).
"""

from __future__ import annotations

import tempfile

import numpy as np
import plasticrl
import torch


def episode_return(agent: plasticrl.TrainedAgent, env, *, greedy: bool, seed: int) -> float:  # noqa: ANN001
    """One episode of ``agent`` in ``env``."""
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(agent.act(obs, greedy=greedy))
        total += float(reward)
        done = terminated or truncated
    return total


def main() -> None:
    """A short DQN run on CartPole, loaded back and evaluated."""
    with tempfile.TemporaryDirectory() as runs:
        result = plasticrl.train(
            {"env": {"id": "CartPole-v1"}, "agent": {"name": "dqn"}},
            total_steps=4000,
            agent={"learning_starts": 500, "batch_size": 64, "buffer_size": 4000, "eps_decay_steps": 2000},
            network__hidden_sizes=[64, 64],
            optimizer__lr=1e-3,
            metrics__every=0,
            metrics__ntk_every=0,
            logging__dir=runs,
            quiet=True,
        )
        print(f"{result.status}: {result.global_step} steps in {result.run_dir.name}")
        agent = plasticrl.load(result.run_dir)
        # The loaded network is the trained one: same Q-values on the same observations.
        obs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
        trained = result.agent.q_net(torch.as_tensor(obs)).detach()
        assert torch.allclose(agent.scores(obs), trained), "load() must give the trained weights"
        env = agent.make_env()
        greedy = [episode_return(agent, env, greedy=True, seed=s) for s in range(3)]
        sampled = [episode_return(agent, env, greedy=False, seed=s) for s in range(3)]
        env.close()
        print(f"greedy returns {greedy}, sampled (epsilon={agent.config.agent.eps_end}) {sampled}")
        assert all(r >= 1 for r in greedy + sampled)

    print("ok")


if __name__ == "__main__":
    main()
