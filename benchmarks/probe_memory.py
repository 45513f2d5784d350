"""Peak memory and time of one plasticity probe (layer Jacobians + empirical NTK) on Atari CNNs.

For each network (default: ``nature_cnn`` and ``impala_cnn`` on ``(4, 84, 84)`` uint8 frames with
6 actions, Pong's minimal set; dense 512 and 256 as in the papers), a fresh subprocess builds the
network and a
``PlasticityProbe`` at the default probe sizes (``metrics.probe_size`` 256, ``ntk_probe_size``
64), runs one warm-up probe on a tiny batch (torch.func's one-off set-up), then measures:

  * one probe without the NTK (dormancy, ranks, layer Jacobians, weight statistics);
  * one probe with the NTK (what ``metrics.ntk_every`` adds);

and prints each one's wall time and the process's peak RSS (``ru_maxrss``) after it, the
whole process (Python, torch, the network) included, and the growth over the RSS before it.

Run:  python benchmarks/probe_memory.py [--nets nature_cnn impala_cnn] [--actions 6] [--threads 1]
      [--probe-size 256] [--ntk-probe-size 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import gymnasium as gym
import numpy as np
import torch
from plasticrl.agents import NetworkConfig, make_network
from plasticrl.plasticity.metrics import MetricsConfig
from plasticrl.plasticity.probe import PlasticityProbe

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
torch.manual_seed(0)
space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
hidden = {"nature_cnn": 512, "impala_cnn": 256}.get(args["net"], 512)  # the papers' dense layers
net_cfg = NetworkConfig(name=args["net"], hidden_sizes=(hidden,))
net = make_network(space, gym.spaces.Discrete(args["actions"]), net_cfg)
cfg = MetricsConfig(probe_size=args["probe_size"], ntk_probe_size=args["ntk_probe_size"])
probe = PlasticityProbe(net, cfg)
gen = torch.Generator().manual_seed(0)
obs = torch.randint(0, 256, (args["probe_size"], 4, 84, 84), generator=gen).float()
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
warm = PlasticityProbe(net, MetricsConfig(probe_size=2, ntk_probe_size=1))
warm(obs[:2], ntk=True)
out = {"net": args["net"], "params": sum(p.numel() for p in net.parameters()), "base_gib": peak()}
for name, ntk in (("probe", False), ("probe_ntk", True)):
    before = peak()
    t0 = time.perf_counter()
    scalars = probe(obs, ntk=ntk)
    out[name + "_s"] = time.perf_counter() - t0
    out[name + "_peak_gib"] = peak()
    out[name + "_growth_gib"] = peak() - before
    if ntk:
        out["ntk_condition_number"] = scalars["plasticity/ntk_condition_number"]
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nets", nargs="+", default=["nature_cnn", "impala_cnn"])
    parser.add_argument("--actions", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--probe-size", type=int, default=256)
    parser.add_argument("--ntk-probe-size", type=int, default=64)
    args = parser.parse_args()
    print(
        f"probe_size={args.probe_size} ntk_probe_size={args.ntk_probe_size} actions={args.actions} "
        f"threads={args.threads}; peak RSS of the whole process"
    )
    print("| network | parameters | probe: time, peak RSS | probe + NTK: time, peak RSS (growth) |")
    print("|---|---|---|---|")
    for net in args.nets:
        child = {
            "net": net,
            "actions": args.actions,
            "threads": args.threads,
            "probe_size": args.probe_size,
            "ntk_probe_size": args.ntk_probe_size,
        }
        done = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(child)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            sys.exit(f"{net}: the probe process failed:\n{done.stderr[-2000:]}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"| {net} | {r['params']:,} | {r['probe_s']:.1f} s, {r['probe_peak_gib']:.2f} GiB "
            f"| {r['probe_ntk_s']:.1f} s, {r['probe_ntk_peak_gib']:.2f} GiB "
            f"(+{r['probe_ntk_growth_gib']:.2f} GiB) |"
        )


if __name__ == "__main__":
    main()
