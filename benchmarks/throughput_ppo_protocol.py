"""Env steps/s of the AdamO paper's PPO protocol, beside its multiply-add bound measured in the same process.

    python benchmarks/throughput_ppo_protocol.py [--threads 2] [--iterations 3] [--device cpu|cuda]
        [--cases breakout,protocol,protocol_package,protocol_eager,protocol_bf16,breakout_bf16]
        [--processes 2] [key=value ...]

The config is ``configs/minatar/ppo_protocol.yaml`` (2048 envs × 128 steps per rollout, 4 epochs ×
128 minibatches of 2048, separate actor and critic MLPs of 4 × 64, Adam), trained by plasticrl's
own loop (``plasticrl.train``); evaluation, plasticity metrics and checkpoints are off so that
only training is timed. The cases:

* ``breakout``: Breakout alone, stationary, 4 channels (400 inputs): the config the authors'
  JAX code was timed on side by side (80-96k env steps/s on this 2-core CPU, issue 15).
* ``protocol``: the protocol itself, the 4-game permuted sequence padded to 10 channels (1000
  inputs, about twice the multiply-adds), with a task change inside the timed window.
* ``protocol_package``: the same on the real ``minatar`` package's envs (``env.vector=sync``,
  numpy observations): the reference env path.
* ``protocol_eager``: ``protocol`` with ``agent.compile=false`` (what compiling the loss buys).
* ``protocol_bf16`` / ``breakout_bf16``: ``protocol`` / ``breakout`` with
  ``network.input_precision=bfloat16``, the first layer's products in bfloat16 (what it buys on
  this machine; the bound stays the float32 one).

Each case trains ``1 + iterations`` rollouts; the first (compile, allocation) is discarded and
the others timed: an iteration is one rollout (acting, env steps, storage, values, GAE) and one
update (the 512 gradient steps), split by timing ``PPOAgent.update``. The **bound** is this
process's sgemm rate (a 4096 × 1024 × 1024 float32 matmul on the same threads and device) divided
by the config's multiply-adds per env step, counted from the network's linear layers: one actor
forward to act and one critic forward for the values (rollout), then per epoch one forward of
both and their backward (two products per layer, but none for the first layer's input gradient).
``--processes N`` adds, per case, N one-thread processes training at once (how a sweep runs
seeds side by side on the same cores) and their summed steps/s: the aggregate seed-steps/s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from plasticrl.agents.ppo import PPOAgent
from plasticrl.trainers.config import load_config
from plasticrl.trainers.run import train
from torch import nn

PRESET = Path(__file__).parents[1] / "configs" / "minatar" / "ppo_protocol.yaml"
TIMING = (
    "eval.every=0",
    "metrics.every=0",
    "metrics.ntk_every=0",
    "checkpoint.every=0",
    "logging.progress=false",
)
CASES: dict[str, tuple[str, ...]] = {
    "breakout": ("nonstationary.kind=null", "optimizer.reset_on_task_switch=false", "env.kwargs.channels=4"),
    # a task change at the end of the second timed rollout (3 x 262,144 steps)
    "protocol": ("nonstationary.every=786432",),
    "protocol_package": (
        "nonstationary.every=786432",
        "env.vector=sync",
        "env.kwargs={sticky_action_prob: 0.1, difficulty_ramping: true}",
        "agent.compile=false",
    ),
    "protocol_eager": ("nonstationary.every=786432", "agent.compile=false"),
    # the input layer's products in bfloat16 (Note [Input precision], plasticrl.agents.precision)
    "protocol_bf16": ("nonstationary.every=786432", "network.input_precision=bfloat16"),
    "breakout_bf16": (
        "nonstationary.kind=null",
        "optimizer.reset_on_task_switch=false",
        "env.kwargs.channels=4",
        "network.input_precision=bfloat16",
    ),
}
PROTOCOL_STEPS = 1_200_000_000  # 15M env steps x 4 games x 20 cycles
STUDY_RUNS = 56  # configs/studies/continual_minatar_ppo.yaml
AUTHORS_JAX = (80_000, 96_000)  # the authors' code, Breakout, this 2-core CPU (issue 15)
AUTHORS_H100 = 83_000  # the authors' own estimate per run on one H100


def sgemm_rate(device: torch.device, seconds: float = 2.0) -> float:
    """Float32 multiply-adds per second ×2 (FLOP/s) of a 4096 × 1024 × 1024 matmul."""
    a = torch.randn(4096, 1024, device=device)
    b = torch.randn(1024, 1024, device=device)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * 4096 * 1024 * 1024 * count / (time.perf_counter() - start)


def macs_per_env_step(model: nn.Module, epochs: int) -> tuple[int, int]:
    """(rollout, update) multiply-adds per env step of an actor-critic of linear layers."""

    def layers(part: nn.Module) -> list[nn.Linear]:
        return [m for m in part.modules() if isinstance(m, nn.Linear)]

    actor, critic = layers(model.actor), layers(model.critic)  # type: ignore[arg-type]
    forward = sum(m.in_features * m.out_features for m in actor + critic)
    first = actor[0].in_features * actor[0].out_features + critic[0].in_features * critic[0].out_features
    backward = 2 * forward - first  # weight and input gradients; the input needs none
    return forward, epochs * (forward + backward)


class _Stopwatch:
    """Times every ``PPOAgent.update`` and the moments they end."""

    def __init__(self) -> None:
        self.updates: list[float] = []
        self.ends: list[float] = []
        self.model: nn.Module | None = None
        self._update = PPOAgent.update

    def __enter__(self) -> _Stopwatch:
        watch = self

        def timed(agent: PPOAgent, batch: Any) -> dict[str, float]:
            start = time.perf_counter()
            out = watch._update(agent, batch)
            if agent.device.type == "cuda":
                torch.cuda.synchronize()
            end = time.perf_counter()
            watch.updates.append(end - start)
            watch.ends.append(end)
            watch.model = agent.model
            return out

        PPOAgent.update = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        PPOAgent.update = self._update  # type: ignore[method-assign]


def run_case(name: str, args: argparse.Namespace, rate: float) -> dict[str, float]:
    """Train ``1 + iterations`` rollouts of case ``name``; steady-state figures of the timed ones."""
    overrides = [*TIMING, *CASES[name], f"torch_threads={args.threads}", f"device={args.device}"]
    if args.device != "cpu" and name != "protocol_package":
        overrides.append(f"env.kwargs.device={args.device}")
    overrides += args.overrides
    cfg = load_config(PRESET, overrides)
    batch = cfg.env.num_envs * cfg.agent.num_steps  # type: ignore[union-attr]
    with tempfile.TemporaryDirectory() as tmp, _Stopwatch() as watch:
        more = [f"total_steps={batch * (1 + args.iterations)}", f"logging.dir={tmp}"]
        cfg = load_config(PRESET, overrides + more)
        train(cfg, quiet=True)
    assert watch.model is not None and len(watch.ends) == 1 + args.iterations
    rollout_macs, update_macs = macs_per_env_step(watch.model, cfg.agent.update_epochs)  # type: ignore[union-attr]
    iterations = [end - prev for prev, end in zip(watch.ends, watch.ends[1:], strict=False)]
    updates = watch.updates[1:]
    total, update = sum(iterations), sum(updates)
    bound = rate / (2 * (rollout_macs + update_macs))
    return {
        "sps": batch * len(iterations) / total,
        "rollout_sps": batch * len(iterations) / (total - update),
        "update_sps": batch * len(updates) / update,
        "bound": bound,
        "update_bound": rate / (2 * update_macs),
        "mflop": 2 * (rollout_macs + update_macs) / 1e6,
    }


def _in_processes(name: str, args: argparse.Namespace, count: int) -> list[dict[str, float]]:
    """Case ``name`` run by ``count`` processes at once, one thread each (as a sweep runs seeds)."""
    command = [sys.executable, __file__, "--worker", "--threads", "1", "--cases", name]
    command += ["--iterations", str(args.iterations), "--device", args.device, *args.overrides]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(count)]
    return [json.loads(child.communicate()[0].strip().splitlines()[-1]) for child in children]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine has 2 cores)")
    parser.add_argument("--iterations", type=int, default=3, help="timed rollouts per case after a warm-up")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the batched env runs there too)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {list(CASES)}")
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        help="also run each case in this many 1-thread processes at once and sum their steps/s",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for every case")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rate = sgemm_rate(device)
    if args.worker:  # one case, its figures as JSON (for --processes)
        print(json.dumps(run_case(args.cases, args, rate)))
        return
    print(f"sgemm: {rate / 1e9:.1f} GFLOP/s on {args.threads} thread(s), {device}")
    print(
        "| case | env steps/s | of bound | rollout steps/s | update steps/s | update of its bound "
        "| MFLOP/env step | bound steps/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.cases.split(","):
        r = run_case(name, args, rate)
        print(
            f"| {name} | {r['sps']:,.0f} | {r['sps'] / r['bound']:.2f} | {r['rollout_sps']:,.0f} "
            f"| {r['update_sps']:,.0f} | {r['update_sps'] / r['update_bound']:.2f} | {r['mflop']:.2f} "
            f"| {r['bound']:,.0f} |",
            flush=True,
        )
        if name == "protocol":
            hours = PROTOCOL_STEPS / r["sps"] / 3600
            print(
                f"  the full protocol at this rate: {hours:,.1f} h per run (1.2B env steps), "
                f"{hours * STUDY_RUNS:,.0f} h for the study's {STUDY_RUNS} runs (7 arms x 8 seeds)",
                flush=True,
            )
        if args.processes:
            runs = _in_processes(name, args, args.processes)
            total = sum(run["sps"] for run in runs)
            print(
                f"| {name}, {args.processes} processes x 1 thread | {total:,.0f} (sum) "
                f"| {total / r['bound']:.2f} | | | | | |",
                flush=True,
            )
    if device.type == "cpu":
        low, high = AUTHORS_JAX
        print(f"authors' JAX code, Breakout, this CPU (issue 15): {low:,}-{high:,} env steps/s")
    else:
        print(
            f"authors' estimate for one H100 run: {AUTHORS_H100:,} env steps/s (target {5 * AUTHORS_H100:,})"
        )


if __name__ == "__main__":
    main()
