"""Learning benchmark on CartPole-v1, several seeds, for any CartPole preset (--config).

Criterion (issue 2 for DQN, issue 6 for PPO): the mean return over the last 20 episodes reaches >= 475
within 100k env steps, in at least 4 of 5 seeds. For each seed this prints the first env step at
which the 20-episode running mean reached the threshold, the 20-episode mean at the end of the run
and the run's env steps/s, as a markdown table.

Run:  python benchmarks/learn_cartpole.py --config configs/cartpole/dqn.yaml [--seeds 0 1 2 3 4]
          [--workers 2] [key=value ...]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from plasticrl.trainers.config import load_config
from plasticrl.trainers.run import train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

THRESHOLD, WINDOW = 475.0, 20


def episode_curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(env step, return) of every finished episode, from the run's TensorBoard events."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    events = acc.Scalars("charts/episodic_return")
    return np.array([e.step for e in events]), np.array([e.value for e in events])


def run_seed(job: tuple[str, int, list[str], str]) -> dict[str, float]:
    config, seed, overrides, tmp = job
    cfg = load_config(config, [*overrides, f"seed={seed}"])
    cfg = replace(cfg, logging=replace(cfg.logging, dir=tmp, progress=False))
    result = train(cfg, quiet=True)
    steps, returns = episode_curve(result.run_dir)
    running = np.convolve(returns, np.ones(WINDOW) / WINDOW, mode="valid")
    reached = np.flatnonzero(running >= THRESHOLD)
    return {
        "seed": seed,
        "first_step": int(steps[reached[0] + WINDOW - 1]) if reached.size else -1,
        "final_mean": float(running[-1]) if running.size else float("nan"),
        "episodes": len(returns),
        "sps": result.sps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="a CartPole preset, e.g. configs/cartpole/dqn.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    with tempfile.TemporaryDirectory() as tmp, mp.get_context("spawn").Pool(args.workers) as pool:
        rows = pool.map(run_seed, [(args.config, s, args.overrides, tmp) for s in args.seeds])
    overrides = " ".join(args.overrides)
    print(f"{cfg.agent.name.upper()} {cfg.env.id} ({args.config} {overrides}), {cfg.total_steps} env steps")
    window = f"{WINDOW}-ep mean"
    print(f"| seed | first step with {window} >= {THRESHOLD:g} | {window} at end | episodes | env steps/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        first = r["first_step"] if r["first_step"] >= 0 else "never"
        print(f"| {r['seed']} | {first} | {r['final_mean']:.1f} | {r['episodes']} | {r['sps']:.0f} |")
    passed = sum(r["first_step"] >= 0 for r in rows)
    print(f"reached in {passed}/{len(rows)} seeds (criterion: >= 4 of 5)")


if __name__ == "__main__":
    main()
