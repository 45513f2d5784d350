"""Cost of a DQN update under each plasticity method, side by side in one process.

For every variant (Adam, AdamO exact, AdamO with prefetch, AdamO every 4 steps, Adam + coupled
isometry penalty, Adam + spectral regularization) on the MinAtar reference network (batch 32),
this times
  * ``update``: one replay sample + gradient update, alone;
  * ``step``:   one whole learning-phase iteration (env step + ε-greedy act + sample + update),
and prints each against Adam. Variants run in interleaved rounds (the fastest round counts: the
one least disturbed by other processes), all from the same prefilled replay buffer.

Run:  python benchmarks/update_cost_dqn.py [--rounds 7] [--updates 300] [key=value ...]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from plasticrl.trainers.config import load_config
from plasticrl.trainers.off_policy import build_off_policy

BASE = "configs/minatar/dqn_permuted_adam.yaml"
VARIANTS: dict[str, list[str]] = {
    "adam": [],
    "adamo": ["optimizer.name=adamo"],
    "adamo prefetch": ["optimizer.name=adamo", "optimizer.iso_prefetch=true"],
    "adamo every 4 (approx.)": ["optimizer.name=adamo", "optimizer.iso_every=4"],
    "adam + isometry (coupled)": ["regularizers=[{name: isometry, coef: 1.0e-2}]"],
    "adam + spectral": ["regularizers=[{name: spectral, coef: 1.0e-3}]"],
}


def build(overrides: list[str], extra: list[str]):
    cfg = load_config(BASE, [*overrides, *extra, "agent.eps_decay_steps=1"])
    setup = build_off_policy(cfg)
    envs, buffer = setup.envs, setup.buffer
    obs, _ = envs.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(5000):  # identical random prefill for every variant
        actions = rng.integers(0, 6, size=1)
        next_obs, rewards, term, trunc, _ = envs.step(actions)
        buffer.add(obs, next_obs, actions, rewards, term)
        obs = next_obs
    return cfg, setup, obs


def time_round(cfg, setup, state, n: int) -> tuple[float, float]:
    agent, buffer, envs = setup.agent, setup.buffer, setup.envs
    t0 = time.perf_counter()
    for _ in range(n):
        agent.update(buffer.sample(cfg.agent.batch_size))
    t_update = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    for _ in range(n):
        actions = agent.act(state["obs"], 10**9)
        state["obs"] = envs.step(actions)[0]
        agent.update(buffer.sample(cfg.agent.batch_size))
    t_step = (time.perf_counter() - t0) / n
    return t_update * 1e3, t_step * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--updates", type=int, default=300, help="updates per round and variant")
    parser.add_argument("overrides", nargs="*", help="applied to every variant")
    args = parser.parse_args()
    torch.set_num_threads(1)
    built = {name: build(ov, args.overrides) for name, ov in VARIANTS.items()}
    states = {name: {"obs": obs} for name, (_, _, obs) in built.items()}
    best: dict[str, list[float]] = {name: [float("inf"), float("inf")] for name in VARIANTS}
    for name, (cfg, setup, _) in built.items():  # warm-up
        time_round(cfg, setup, states[name], 50)
    for _ in range(args.rounds):
        for name, (cfg, setup, _) in built.items():
            t_update, t_step = time_round(cfg, setup, states[name], args.updates)
            best[name][0] = min(best[name][0], t_update)
            best[name][1] = min(best[name][1], t_step)
    base_update, base_step = best["adam"]
    print(f"DQN update cost, MinAtar reference network, batch 32, 1 thread ({BASE})")
    print("| variant | update ms | × adam | learning step ms | × adam |")
    print("|---|---|---|---|---|")
    for name, (t_update, t_step) in best.items():
        print(
            f"| {name} | {t_update:.3f} | {t_update / base_update:.2f} "
            f"| {t_step:.3f} | {t_step / base_step:.2f} |"
        )


if __name__ == "__main__":
    main()
