"""Sweep throughput: total env steps/s of ``plasticrl sweep --workers N`` against one run alone.

Runs, one after the other in this process (each through the real sweep machinery: child
processes of ``python -m plasticrl.trainers.cli train``):
  * one run alone (``--workers 1``), at the config's ``torch_threads`` (1 by default);
  * one run alone with ``torch_threads=W`` (the other way to use the cores: one multi-thread run);
  * W runs at once (``--workers W``, one thread each);
and prints total env steps / wall-clock seconds for each and the ratios. Wall-clock includes each
child's start (python + torch import, ~2 s), as a user of the sweep pays it. The issue's target on
a 2-core machine: W=2 runs reach >= 1.7x the steps/s of one run.

The default workload is the permuted-Breakout Adam preset (the study's base) with learning from
step 1,000, so most of the window is the learning phase (one update per env step).

Run:  python benchmarks/bench_sweep_throughput.py [--steps N] [--workers W] [key=value ...]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import yaml
from plasticrl.trainers.experiments.sweep import execute_sweep, plan_sweep
from plasticrl.trainers.experiments.sweep_file import load_sweep

DEFAULT_CONFIG = Path("configs/minatar/dqn_permuted_adam.yaml")
OVERRIDES = ["agent.learning_starts=1000", "checkpoint.every=100000000"]


def sweep_sps(folder: Path, name: str, seeds: list[int], overrides: list[str], workers: int) -> float:
    """Total env steps / wall seconds of a sweep of ``seeds`` runs with ``workers`` at once."""
    path = folder / f"{name}.yaml"
    content = {"base": str(DEFAULT_CONFIG.resolve()), "seeds": seeds, "overrides": overrides}
    path.write_text(yaml.safe_dump({**content, "dir": str(folder / "runs")}))
    runs = plan_sweep(load_sweep(path))
    t0 = time.perf_counter()
    result = execute_sweep(runs, workers=workers, out=io.StringIO())
    wall = time.perf_counter() - t0
    if result.failed:
        raise SystemExit(f"{name}: a run failed; log: {result.failed[0][2]}")
    return sum(r.config.total_steps for r in runs) / wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20_000, help="env steps per run")
    parser.add_argument("--workers", type=int, default=2, help="runs at once (the machine's cores)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat all three; the fastest of each counts")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args()
    common = [f"total_steps={args.steps}", *OVERRIDES, *args.overrides]
    w = args.workers
    one = threads = many = 0.0
    for r in range(args.rounds):  # alternating, so a slow spell of a shared machine hits all three
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            one = max(one, sweep_sps(folder, f"one{r}", [0], common, workers=1))
            threads = max(
                threads, sweep_sps(folder, f"threads{r}", [0], [*common, f"torch_threads={w}"], workers=1)
            )
            many = max(many, sweep_sps(folder, f"many{r}", list(range(w)), common, workers=w))
    print(f"{DEFAULT_CONFIG} ({args.steps} steps per run, fastest of {args.rounds} round(s))")
    print(f"  one run, 1 thread          : {one:7.1f} env steps/s")
    print(f"  one run, {w} threads         : {threads:7.1f} env steps/s  ({threads / one:.2f}x)")
    print(
        f"  {w} runs, --workers {w}      : {many:7.1f} env steps/s  ({many / one:.2f}x one run, "
        f"{many / threads:.2f}x the {w}-thread run)"
    )


if __name__ == "__main__":
    main()
