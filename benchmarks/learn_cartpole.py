"""Learning benchmark on CartPole-v1, several seeds, for any CartPole preset (--config).

Criteria: the mean return over the last 20 episodes reaches >= 475 within 100k env steps (issue 2
for DQN, issue 6 for PPO), and is still >= 475 at the end of the run (issue 19: the preset ends
solved), each in at least 4 of 5 seeds. For each seed this prints the first env step at which the
20-episode running mean reached the threshold, the 20-episode mean at the end of the run, the
run's env steps/s and its wall time, as a markdown table.

Run:  python benchmarks/learn_cartpole.py --config configs/cartpole/dqn.yaml [--seeds 0 1 2 3 4]
          [--workers 2] [--runs-dir DIR] [key=value ...]

``--workers 1`` trains the seeds one after another in this process and prints each row as its
seed ends; ``--runs-dir`` keeps the run folders (for ``plasticrl eval``) instead of a temporary
folder.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import tempfile
import time
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


def run_seed(job: tuple[str, int, list[str], str]) -> dict[str, float | str]:
    """Train one seed of ``config`` (with ``overrides``) under folder ``tmp``; its table row."""
    config, seed, overrides, tmp = job
    cfg = load_config(config, [*overrides, f"seed={seed}"])
    cfg = replace(cfg, logging=replace(cfg.logging, dir=tmp, progress=False))
    start = time.perf_counter()
    result = train(cfg, quiet=True)
    wall = time.perf_counter() - start
    steps, returns = episode_curve(result.run_dir)
    running = np.convolve(returns, np.ones(WINDOW) / WINDOW, mode="valid")
    reached = np.flatnonzero(running >= THRESHOLD)
    return {
        "seed": seed,
        "first_step": int(steps[reached[0] + WINDOW - 1]) if reached.size else -1,
        "final_mean": float(running[-1]) if running.size else float("nan"),
        "episodes": len(returns),
        "sps": result.sps,
        "wall_s": wall,
        "run_dir": str(result.run_dir),
    }


def format_row(r: dict[str, float | str]) -> str:
    """One markdown table row of :func:`run_seed`'s result."""
    first = r["first_step"] if int(r["first_step"]) >= 0 else "never"
    return (
        f"| {r['seed']} | {first} | {float(r['final_mean']):.1f} | {r['episodes']} | "
        f"{float(r['sps']):.0f} | {float(r['wall_s']):.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="a CartPole preset, e.g. configs/cartpole/dqn.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--workers", type=int, default=2, help="1: seeds one after another, in this process")
    parser.add_argument("--runs-dir", help="keep the run folders here (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    overrides = " ".join(args.overrides)
    print(f"{cfg.agent.name.upper()} {cfg.env.id} ({args.config} {overrides}), {cfg.total_steps} env steps")
    window = f"{WINDOW}-ep mean"
    print(
        f"| seed | first step with {window} >= {THRESHOLD:g} | {window} at end | episodes | env steps/s "
        "| wall s |"
    )
    print("|---|---|---|---|---|---|", flush=True)
    with contextlib.ExitStack() as stack:
        folder = args.runs_dir or stack.enter_context(tempfile.TemporaryDirectory())
        jobs = [(args.config, s, args.overrides, folder) for s in args.seeds]
        if args.workers == 1:
            rows = []
            for job in jobs:  # sequential: each row as soon as its seed ends
                rows.append(run_seed(job))
                print(format_row(rows[-1]), flush=True)
        else:
            with mp.get_context("spawn").Pool(args.workers) as pool:
                rows = pool.map(run_seed, jobs)
            for r in rows:
                print(format_row(r))
    reached = sum(int(r["first_step"]) >= 0 for r in rows)
    solved = sum(float(r["final_mean"]) >= THRESHOLD for r in rows)
    n = len(rows)
    print(f"reached in {reached}/{n} seeds, ends >= {THRESHOLD:g} in {solved}/{n} (criteria: >= 4 of 5)")
    if args.runs_dir:
        for r in rows:
            print(f"seed {r['seed']}: {r['run_dir']}")


if __name__ == "__main__":
    main()
