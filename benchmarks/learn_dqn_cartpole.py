"""Learning benchmark: DQN on CartPole-v1, several seeds.

Criterion (issue 2): the mean return over the last 20 episodes reaches >= 475 within 100k env
steps, in at least 4 of 5 seeds. For each seed this prints the first env step at which the
20-episode running mean reached the threshold, and the 20-episode mean at the end of the run.

Run:  python benchmarks/learn_dqn_cartpole.py [--seeds 0 1 2 3 4] [--workers 2] [key=value ...]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainers.config import load_config
from trainers.run import train

CONFIG = "configs/cartpole/dqn.yaml"
THRESHOLD, WINDOW = 475.0, 20


def episode_curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("charts/episodic_return")
    return np.array([e.step for e in events]), np.array([e.value for e in events])


def run_seed(job: tuple[int, list[str], str]) -> dict[str, float]:
    seed, overrides, tmp = job
    cfg = load_config(CONFIG, [*overrides, f"seed={seed}"])
    cfg = replace(cfg, logging=replace(cfg.logging, dir=tmp, progress=False))
    result = train(cfg, quiet=True)
    steps, returns = episode_curve(result["run_dir"])
    running = np.convolve(returns, np.ones(WINDOW) / WINDOW, mode="valid")
    reached = np.flatnonzero(running >= THRESHOLD)
    first = int(steps[reached[0] + WINDOW - 1]) if reached.size else -1
    return {"seed": seed, "first_step": first, "final_mean": float(running[-1]), "episodes": len(returns)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, mp.get_context("spawn").Pool(args.workers) as pool:
        rows = pool.map(run_seed, [(s, args.overrides, tmp) for s in args.seeds])
    total = load_config(CONFIG, args.overrides).total_steps
    print(f"DQN CartPole-v1 ({CONFIG} {' '.join(args.overrides)}), {total} env steps")
    print("| seed | first step with 20-ep mean >= 475 | 20-ep mean at end | episodes |")
    print("|---|---|---|---|")
    for r in rows:
        first = r["first_step"] if r["first_step"] >= 0 else "never"
        print(f"| {r['seed']} | {first} | {r['final_mean']:.1f} | {r['episodes']} |")
    passed = sum(r["first_step"] >= 0 for r in rows)
    print(f"reached in {passed}/{len(rows)} seeds")


if __name__ == "__main__":
    main()
