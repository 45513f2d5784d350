"""DQN throughput on MinAtar Breakout: learning steps/s against the bound of its parts.

Measures, in one process:
  * t_env    — one env step (vector env of 1, random actions), alone;
  * t_act    — one ε-greedy action at the learning-phase ε (batch-1 forward), alone;
  * t_update — one replay sample + gradient update (batch 32), alone;
  * the bound 1 / (t_env + t_act + t_update);
  * the real training loop (plasticrl.trainers.off_policy) in its learning phase, env steps/s,
and prints the ratio. Both are measured ``--rounds`` times, alternating, and the fastest round of
each counts (the one least disturbed by other processes on a shared machine). The learning phase
is measured at the final ε (``agent.eps_decay_steps=1``), where most of a run is spent: ~90 % of
actions are greedy forwards; plasticity metrics are off (see STEADY_STATE).

Run:  python benchmarks/throughput_dqn_minatar.py [--steps N] [--rounds R] [key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from plasticrl.trainers.config import load_config
from plasticrl.trainers.off_policy import build_off_policy, train_off_policy

DEFAULT_CONFIG = "configs/minatar/dqn_breakout.yaml"
# The final ε; plasticity metrics off: they are not one of the three parts of the bound, cost
# ~0.4 % of a run at their default cadence (benchmarks/bench_metrics.py), and their one-time set-up
# (~0.2 s) would be over-weighted in a window of a few thousand steps. Overridable on the command line.
STEADY_STATE = ["agent.eps_decay_steps=1", "metrics.every=0", "metrics.ntk_every=0"]


def per_call_ms(fn, n: int, warmup: int = 100) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def measure_parts(cfg, n: int) -> dict[str, float]:
    """Per-call milliseconds of an env step, an ε-greedy act and a sample+update, each alone."""
    torch.set_num_threads(cfg.torch_threads or torch.get_num_threads())
    setup = build_off_policy(cfg)
    envs, agent, buffer = setup.envs, setup.agent, setup.buffer
    obs, _ = envs.reset(seed=cfg.seed)
    for _ in range(cfg.agent.learning_starts):
        actions = envs.action_space.sample()
        next_obs, rewards, term, trunc, _ = envs.step(actions)
        buffer.add(obs, next_obs, actions, rewards, term)
        obs = next_obs
    step = cfg.agent.learning_starts + n  # ε as in the measured learning phase
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
        return float(result.learning_sps)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--steps", type=int, default=5000, help="learning-phase env steps measured")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, [*STEADY_STATE, *args.overrides])
    parts: dict[str, float] = {}
    sps = 0.0
    for _ in range(args.rounds):
        for key, value in measure_parts(cfg, args.steps).items():
            parts[key] = min(parts.get(key, float("inf")), value)
        sps = max(sps, measure_loop(cfg, args.steps))
    bound = 1e3 / sum(parts.values())
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
