"""PPO throughput on CartPole-v1 with CleanRL's ``ppo.py`` settings: env steps/s of the real loop,
with its time split into rollout and update, both measured in the same run.

Settings (CleanRL's defaults): 4 envs × 128 steps per rollout, 4 epochs of 4 minibatches, separate
64-64 tanh actor and critic with orthogonal init, Adam lr 2.5e-4 (eps 1e-5) annealed linearly,
GAE, clipped value loss, gradient clipping; no plasticity metrics (CleanRL has none); one torch
thread. The rollout phase is acting, env stepping, storage and GAE; the update phase is the
4 × 4 gradient steps. CleanRL's ppo.py with these settings runs at 2,900-3,300 env steps/s on the
project's 2-core machine (issue 6, measured 2026-11-21); the target is >= 4,500.

Run:  python benchmarks/throughput_ppo_cartpole.py [--steps 200000] [key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile

from plasticrl.trainers.config import load_config
from plasticrl.trainers.run import train

CLEANRL_SETTINGS = (
    "agent.name=ppo",
    "env.id=CartPole-v1",
    "env.num_envs=4",
    "agent.num_steps=128",
    "agent.update_epochs=4",
    "agent.num_minibatches=4",
    "network.name=mlp",
    "network.hidden_sizes=[64, 64]",
    "network.activation=tanh",
    "network.init=orthogonal",
    "optimizer.name=adam",
    "optimizer.lr=2.5e-4",
    "optimizer.eps=1e-5",
    "optimizer.lr_schedule=linear",
    "metrics.every=0",
    "metrics.ntk_every=0",
    "logging.every=512",  # every rollout, as CleanRL
    "logging.progress=false",
    "checkpoint.every=0",
    "torch_threads=1",
)
CLEANRL_SPS = (2900, 3300)
TARGET_SPS = 4500


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=200_000, help="env steps of the run")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [*CLEANRL_SETTINGS, f"total_steps={args.steps}", f"logging.dir={tmp}", *args.overrides]
        result = train(load_config(None, overrides), quiet=True)
    steps, sps = result.global_step, result.sps
    rollout, update = result.rollout_seconds, result.update_seconds
    total = rollout + update
    print(f"PPO CartPole-v1, 4 envs x 128 steps, 4 epochs x 4 minibatches, {steps} env steps")
    print("| phase | seconds | share | env steps/s of the phase alone |")
    print("|---|---|---|---|")
    phases = {
        "rollout (act + env step + storage + GAE)": rollout,
        f"update ({result.grad_steps} gradient steps)": update,
    }
    for name, seconds in phases.items():
        print(f"| {name} | {seconds:.2f} | {seconds / total:.0%} | {steps / seconds:,.0f} |")
    print(f"| whole loop (incl. logging) | {steps / sps:.2f} | | **{sps:,.0f}** |")
    low, high = CLEANRL_SPS
    print(
        f"env steps/s: {sps:,.0f} (CleanRL ppo.py here: {low:,}-{high:,}; target >= {TARGET_SPS:,}: "
        f"{'met' if sps >= TARGET_SPS else 'NOT met'}; {sps / high:.2f}-{sps / low:.2f}x CleanRL)"
    )


if __name__ == "__main__":
    main()
