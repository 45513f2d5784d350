"""Env steps/s: the real ``minatar`` package (N envs stepped in Python) vs the batched MinAtar.

    python benchmarks/batched_minatar.py [--num-envs 2048] [--seconds 3] [--device cpu|cuda]
        [--games breakout,freeway,...] [--threads 1]

Per game, in the same process: ``package`` steps N ``minatar.Environment`` objects one by one
(random actions, a reset after each episode end: what a sync vector env does, without
gymnasium's own overhead, so the package's figure is an upper bound for the sync vector env);
``batched`` steps ``BatchedMinAtar`` (torch source, same-step autoreset) with numpy actions in
and numpy observations out (the drop-in path); ``batched-tensors`` keeps actions and
observations as tensors on the device (the GPU path). Each figure is the best of 3 rounds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from minatar import Environment
from plasticrl.envs.batched_minatar import GAMES, BatchedMinAtar


def _package(game: str, num_envs: int, seconds: float) -> float:
    envs = [Environment(game) for _ in range(num_envs)]
    for i, env in enumerate(envs):
        env.seed(i)
        env.reset()
    rng = np.random.default_rng(0)
    best = 0.0
    for _ in range(3):
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            actions = rng.integers(6, size=num_envs)
            for env, a in zip(envs, actions, strict=True):
                _, done = env.act(int(a))
                env.state()
                if done:
                    env.reset()
            steps += num_envs
        best = max(best, steps / (time.perf_counter() - start))
    return best


def _batched(game: str, num_envs: int, seconds: float, device: str, tensors: bool) -> float:
    envs = BatchedMinAtar(game, num_envs, device=device, seed=0, tensors=tensors)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    gen = torch.Generator(device=device).manual_seed(0)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    best = 0.0
    for _ in range(3):
        steps = 0
        sync()
        start = time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            for _ in range(10):
                if tensors:
                    actions = torch.randint(6, (num_envs,), device=device, generator=gen)
                else:
                    actions = rng.integers(6, size=num_envs)
                envs.step(actions)
            sync()
            steps += 10 * num_envs
        best = max(best, steps / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-envs", type=int, default=2048)
    parser.add_argument(
        "--package-envs", type=int, default=None, help="N for the package (default: --num-envs)"
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--games", default="breakout,freeway,asterix,space_invaders,seaquest")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_pkg = args.package_envs or args.num_envs
    print(f"N={args.num_envs} (package N={n_pkg}), device={args.device}, torch threads={args.threads}")
    print(f"{'game':<15} {'package':>12} {'batched':>12} {'x':>6} {'batched-tensors':>16} {'x':>6}")
    for game in args.games.split(","):
        if game not in GAMES:
            raise SystemExit(f"unknown game {game!r}")
        try:
            b = _batched(game, args.num_envs, args.seconds, args.device, tensors=False)
            t = _batched(game, args.num_envs, args.seconds, args.device, tensors=True)
        except NotImplementedError as exc:
            print(f"{game:<15} skipped: {exc}")
            continue
        p = _package(game, n_pkg, args.seconds)
        print(f"{game:<15} {p:>12,.0f} {b:>12,.0f} {b / p:>6.1f} {t:>16,.0f} {t / p:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
