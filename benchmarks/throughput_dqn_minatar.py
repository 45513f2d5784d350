"""DQN throughput on MinAtar Breakout: learning steps/s against the bound of its parts.

Measures, in one process:
  * t_env    — one env step (vector env of 1, random actions), alone;
  * t_act    — one ε-greedy action at the learning-phase ε (batch-1 forward), alone;
  * t_update — one replay sample + gradient update (batch 32), alone;
  * the bound 1 / (t_env + t_act + t_update);
  * the real training loop (trainers.off_policy) in its learning phase, env steps/s,
and prints the ratio. Run:  python benchmarks/throughput_dqn_minatar.py [--steps N] [key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from trainers.config import load_config
from trainers.off_policy import build_dqn, train_off_policy

DEFAULT_CONFIG = "configs/minatar/dqn_breakout.yaml"


def per_call_ms(fn, n: int, warmup: int = 100) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def measure_parts(cfg, n: int) -> dict[str, float]:
    torch.set_num_threads(cfg.torch_threads or torch.get_num_threads())
    setup = build_dqn(cfg)
    envs, agent, buffer = setup.envs, setup.agent, setup.buffer
    obs, _ = envs.reset(seed=cfg.seed)
    for _ in range(cfg.agent.learning_starts):
        actions = envs.action_space.sample()
        next_obs, rewards, term, trunc, _ = envs.step(actions)
        buffer.add(obs, next_obs, actions, rewards, term)
        obs = next_obs
    step = cfg.agent.learning_starts + n  # ε as in the measured learning phase (eps_end with --steady)
    state = {"obs": obs}

    def env_step() -> None:
        state["obs"] = envs.step(envs.action_space.sample())[0]

    def act() -> None:
        agent.act(state["obs"], step)

    def update() -> None:
        agent.update(buffer.sample(cfg.agent.batch_size))

    parts = {
        "t_env": per_call_ms(env_step, 3 * n),
        "t_act": per_call_ms(act, 3 * n),
        "t_update": per_call_ms(update, n),
    }
    envs.close()
    return parts


def measure_loop(cfg, n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        overrides = {
            "total_steps": cfg.agent.learning_starts + n,
        }
        from dataclasses import replace

        run_cfg = replace(
            cfg,
            total_steps=overrides["total_steps"],
            logging=replace(cfg.logging, dir=tmp, progress=False),
            checkpoint=replace(cfg.checkpoint, every=0, replay_buffer=False),
        )
        from pathlib import Path

        result = train_off_policy(run_cfg, Path(tmp), None, quiet=True)
        return float(result["learning_sps"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--steps", type=int, default=3000, help="learning-phase env steps measured")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    parts = measure_parts(cfg, args.steps)
    bound = 1e3 / sum(parts.values())
    sps = measure_loop(cfg, args.steps)
    print(
        f"config: {args.config} {' '.join(args.overrides)} | torch threads {cfg.torch_threads} | "
        f"optimizer {cfg.optimizer.name}"
    )
    print("  ".join(f"{k}={v:.3f} ms" for k, v in parts.items()))
    print(f"bound 1/(t_env+t_act+t_update) = {bound:.0f} env steps/s")
    print(f"learning loop                  = {sps:.0f} env steps/s  ({sps / bound:.1%} of the bound)")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
