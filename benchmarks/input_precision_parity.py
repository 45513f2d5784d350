"""Does ``network.input_precision=bfloat16`` learn as float32 does? Same seeds, both precisions, side by side.

    python benchmarks/input_precision_parity.py [--seeds 0,1,2] [--steps 1048576] [--workers 2]
        [key=value ...]

Trains MinAtar Breakout with the AdamO paper's PPO on the batched games
(``configs/minatar/ppo_protocol.yaml``, stationary, 4 channels), scaled down so that it learns in a
few minutes per run: 256 envs × 128 steps per rollout, 16 minibatches of 2048 (the protocol's
minibatch size, 64 gradient steps per rollout), ``--steps`` env steps, evaluation every quarter of
the run with 64 episodes. Each seed is trained once in float32 and once with the first layer's
products in bfloat16 (Note [Input precision] in ``plasticrl.agents.precision``), ``--workers``
one-thread runs at a time, and the script prints, per seed and precision, the mean of the last two
evaluations, then the mean difference bf16 − fp32 over seeds with its range.
Learning curves of one seed diverge between precisions as they do between two float32 runs on
different hardware (the rounding changes every later draw's consequence), so parity is a
statement about the distribution over seeds, not about any one seed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from plasticrl.trainers.experiments.plot import read_scalars

PRESET = Path(__file__).parents[1] / "configs" / "minatar" / "ppo_protocol.yaml"
SETTING = (
    "nonstationary.kind=null",
    "optimizer.reset_on_task_switch=false",
    "env.kwargs.channels=4",
    "env.num_envs=256",
    "agent.num_minibatches=16",
    "eval.episodes=64",
    "metrics.every=0",
    "metrics.ntk_every=0",
    "checkpoint.every=0",
    "logging.progress=false",
    "torch_threads=1",
)
PRECISIONS = ("float32", "bfloat16")


def run(seed: int, precision: str, args: argparse.Namespace, root: Path) -> float:
    """Train one run in a child process; the mean of its last two evaluations."""
    name = f"{precision}__s{seed}"
    overrides = [
        *SETTING,
        f"total_steps={args.steps}",
        f"eval.every={args.steps // 4}",
        f"network.input_precision={precision}",
        f"seed={seed}",
        f"logging.dir={root}",
        f"logging.name={name}",
        *args.overrides,
    ]
    subprocess.run(
        [sys.executable, "-m", "plasticrl.trainers.cli", "train", str(PRESET), *overrides, "-q"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    evals = read_scalars(root / name)["eval/episodic_return"][1]
    return float(np.mean(evals[-2:]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--steps", type=int, default=1_048_576, help="env steps per run")
    parser.add_argument("--workers", type=int, default=2, help="runs at once (one thread each)")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(s, p) for s in seeds for p in PRECISIONS]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.workers) as pool:
        results = dict(zip(jobs, pool.map(lambda job: run(*job, args, Path(tmp)), jobs), strict=True))
    print(
        f"Breakout, PPO (256 envs), {args.steps:,} env steps per run; return: mean of the last 2 evaluations"
    )
    print("| seed | float32 return | bfloat16 return |")
    print("|---:|---:|---:|")
    for s in seeds:
        print(f"| {s} | {results[(s, 'float32')]:.2f} | {results[(s, 'bfloat16')]:.2f} |")
    diff = np.array([results[(s, "bfloat16")] - results[(s, "float32")] for s in seeds])
    base = np.mean([results[(s, "float32")] for s in seeds])
    print(
        f"bf16 - fp32 over {len(seeds)} seeds: mean {diff.mean():+.2f} (range {diff.min():+.2f} to "
        f"{diff.max():+.2f}); fp32 mean return {base:.2f}"
    )


if __name__ == "__main__":
    main()
