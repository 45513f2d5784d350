"""Cost of the orthogonal constraint: acting forwards with and without the acting cache, and maps.

Run:  python benchmarks/bench_isometric.py [--forwards 300] [--rounds 5] [--threads 1] [--maps] [--update]

Acting table: one batch-1 forward of a MinAtar-shaped network (``(1, 4, 10, 10)``, 6 actions)
under ``torch.no_grad()``, as ``DQNAgent.greedy`` runs it:
    minatar_cnn            the plain reference network (no constraint): the floor
    isometric              isometric_minatar_cnn, every forward recomputes both orthogonal maps
    isometric+cache        the same inside ``acting_cache(net)`` (a new context per forward, as
                           a trainer would enter it once per env step): maps reused
Variants are timed in interleaved rounds; each row shows the fastest round (the least disturbed
by other processes on a shared machine), in microseconds per forward.

``--maps``: forward and forward+backward of the constrained weight alone for each map of
``plasticrl.plasticity.layers.ORTHOGONAL_MAPS`` on the shapes of the MinAtar network (Note [Default map]).

``--update``: one training update (batch 32: forward, MSE, backward, optimizer step) of
minatar_cnn with Adam and of the isometric network with AdamO, under the default ``qr`` map and
under torch's ``householder`` map; milliseconds per update.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import plasticrl.plasticity.adamo  # noqa: F401  (registers "adamo")
import torch
from plasticrl.agents.isometric import IsometricMinAtarCNN, isometric_minatar_cnn
from plasticrl.agents.networks import NetworkConfig, minatar_cnn
from plasticrl.plasticity.layers import ORTHOGONAL_MAPS, acting_cache, orthogonal_
from plasticrl.plasticity.optimizers import OptimizerConfig, make_optimizer, param_groups
from torch import nn

OBS = gym.spaces.Box(0.0, 1.0, (4, 10, 10), dtype=np.float32)
ACTIONS = gym.spaces.Discrete(6)


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def acting_variants() -> dict[str, Callable[[], object]]:
    torch.manual_seed(0)
    plain = minatar_cnn(OBS, ACTIONS, NetworkConfig())
    iso = isometric_minatar_cnn(OBS, ACTIONS, NetworkConfig(name="isometric_minatar_cnn"))
    obs = torch.rand(1, 4, 10, 10)

    def run(net: nn.Module, cache: bool) -> Callable[[], object]:
        def forward() -> object:
            with torch.no_grad():
                if cache:
                    with acting_cache(net):
                        return net(obs)
                return net(obs)

        return forward

    return {"minatar_cnn": run(plain, False), "isometric": run(iso, False), "isometric+cache": run(iso, True)}


def bench_acting(forwards: int, rounds: int) -> None:
    variants = acting_variants()
    best = {name: float("inf") for name in variants}
    for fn in variants.values():  # warm-up (and the cache's first fill)
        per_call_us(fn, 10)
    for _ in range(rounds):
        for name, fn in variants.items():
            best[name] = min(best[name], per_call_us(fn, forwards))
    floor = best["minatar_cnn"]
    print(f"{'variant':<18} {'us/forward':>11} {'x minatar_cnn':>14}")
    for name, us in best.items():
        print(f"{name:<18} {us:>11.1f} {us / floor:>14.2f}")


def bench_maps(rounds: int) -> None:
    shapes = {"fc (128, 1024)": (1024, 128), "square (128, 128)": (128, 128), "conv (16, 36)": (36, 16)}
    print(f"{'shape':<18} {'map':<11} {'fwd ms':>9} {'fwd+bwd ms':>11}")
    for label, (fan_in, fan_out) in shapes.items():
        for map_ in ORTHOGONAL_MAPS:
            torch.manual_seed(0)
            layer = orthogonal_(nn.Linear(fan_in, fan_out), map=map_)
            slow = map_ != "qr" and fan_in == 1024
            calls = 1 if slow else 20

            def forward(layer: nn.Linear = layer) -> None:
                with torch.no_grad():
                    layer.weight  # noqa: B018 (computes the map)

            def forward_backward(layer: nn.Linear = layer) -> None:
                layer.weight.sum().backward()

            fwd = min(per_call_us(forward, calls) for _ in range(rounds)) / 1e3
            fwd_bwd = min(per_call_us(forward_backward, calls) for _ in range(2 if slow else rounds)) / 1e3
            print(f"{label:<18} {map_:<11} {fwd:>9.2f} {fwd_bwd:>11.2f}", flush=True)


def bench_update(rounds: int) -> None:
    g = torch.Generator().manual_seed(0)
    obs, targets = torch.rand(32, 4, 10, 10, generator=g), torch.randn(32, 6, generator=g)
    torch.manual_seed(0)
    nets = {
        "minatar_cnn+adam": (minatar_cnn(OBS, ACTIONS, NetworkConfig()), "adam"),
        "isometric(qr)+adamo": (IsometricMinAtarCNN((4, 10, 10), 6), "adamo"),
        "isometric(householder)+adamo": (
            IsometricMinAtarCNN((4, 10, 10), 6, orthogonal_map="householder"),
            "adamo",
        ),
    }
    print(f"{'variant':<30} {'ms/update':>10}")
    for name, (net, opt_name) in nets.items():
        opt = make_optimizer(param_groups(net), OptimizerConfig(name=opt_name, lr=1e-4))

        def update(net: nn.Module = net, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad()
            ((net(obs) - targets) ** 2).mean().backward()
            opt.step()

        slow = "householder" in name
        update()
        ms = min(per_call_us(update, 2 if slow else 20) for _ in range(2 if slow else rounds)) / 1e3
        print(f"{name:<30} {ms:>10.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forwards", type=int, default=300, help="forwards per round and variant")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (fastest kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--maps", action="store_true", help="also time each orthogonal map")
    parser.add_argument("--update", action="store_true", help="also time training updates")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    bench_acting(args.forwards, args.rounds)
    if args.maps:
        bench_maps(args.rounds)
    if args.update:
        bench_update(args.rounds)


if __name__ == "__main__":
    main()
