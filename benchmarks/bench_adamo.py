"""Per-step cost of AdamO against torch.optim.Adam on the MinAtar reference DQN parameters.

Run:  python benchmarks/bench_adamo.py [--steps 200] [--rounds 5] [--threads 1 2]

Network: Conv2d(4, 16, 3) → ReLU → Linear(1024, 128) → ReLU → Linear(128, 6) (the MinAtar reference
DQN on Breakout), grouped by ``param_groups`` so the conv kernel and the 128×1024 matrix take the
isometry step and the head and biases do not. For each ``torch.set_num_threads`` setting, three
measures, each the median over rounds of the mean over ``--steps`` calls, all variants interleaved
round by round in one process so that machine noise hits them alike:

    step     ``optimizer.step()`` alone on fixed gradients;
    update   a full DQN update: Huber TD loss on a batch of 32, backward, step;
    iter     a trainer iteration: MinAtar env step, greedy action, replay sample, update.

Each measure is reported as wall time and as CPU time of the calling (trainer) thread. They agree
on an idle machine; when other processes compete for the cores, wall time also counts the time
the trainer thread waited for a core, and the thread's CPU time is the load-independent cost of
the critical path (for the prefetch variant it excludes the background ∇R, which needs the
second core to be free to come for free).

The prefetch variant only pays in ``update``/``iter``, where its background ∇R overlaps the
forward/backward; in ``step`` it waits for its own result. A first table times ways of computing
∇R of the 128×1024 matrix (Note [Fast isometry gradient] in plasticity/isometry.py).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from plasticrl.plasticity.adamo import AdamO
from plasticrl.plasticity.isometry import isometry_grad
from plasticrl.plasticity.optimizers import param_groups
from torch import nn

BATCH, N_ACTIONS, GAMMA, LR = 32, 6, 0.99, 2.5e-4


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 16, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(1024, 128),
        nn.ReLU(),
        nn.Linear(128, N_ACTIONS),
    )


OptFactory = Callable[[list[dict]], torch.optim.Optimizer]
# name: (factory, the Adam it is compared with). "adam fused" is plasticrl's default `adam`.
VARIANTS: dict[str, tuple[OptFactory, str]] = {
    "adam": (lambda g: torch.optim.Adam(g, lr=LR, foreach=False), "adam"),
    "adam fused": (lambda g: torch.optim.Adam(g, lr=LR, fused=True), "adam fused"),
    "adam foreach": (lambda g: torch.optim.Adam(g, lr=LR, foreach=True), "adam foreach"),
    "adamo single-tensor": (lambda g: AdamO(g, lr=LR, foreach=False), "adam"),
    "adamo foreach": (lambda g: AdamO(g, lr=LR, foreach=True), "adam foreach"),
    "adamo fused": (lambda g: AdamO(g, lr=LR, fused=True), "adam fused"),
    "adamo fused iso_every=4 (≈)": (lambda g: AdamO(g, lr=LR, fused=True, iso_every=4), "adam fused"),
    "adamo fused prefetch": (lambda g: AdamO(g, lr=LR, fused=True, iso_prefetch=True), "adam fused"),
}


def time_it(fn: Callable[[], object], steps: int) -> tuple[float, float]:
    """Mean wall seconds and calling-thread CPU seconds per call (after 10 warm-up calls)."""
    for _ in range(10):
        fn()
    start, start_cpu = time.perf_counter(), time.thread_time()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps, (time.thread_time() - start_cpu) / steps


class Harness:
    """One variant: its own copy of the network, target network, optimizer and env."""

    def __init__(self, factory: OptFactory, replay: torch.Tensor) -> None:
        from minatar import Environment

        self.net = make_net()
        self.target = copy.deepcopy(self.net)
        self.opt = factory(param_groups(self.net))
        self.replay = replay
        self.env = Environment("breakout", sticky_action_prob=0.1)
        self.env.seed(0)
        self.env.reset()
        self.rng = np.random.default_rng(0)
        self.net(replay[:BATCH]).sum().backward()  # gradients for `step`

    def update(self) -> None:
        idx = torch.from_numpy(self.rng.integers(0, len(self.replay) - 1, BATCH))
        obs, next_obs = self.replay[idx], self.replay[idx + 1]
        actions = idx % N_ACTIONS
        rewards, dones = (idx % 3 == 0).float(), (idx % 97 == 0).float()
        with torch.no_grad():
            td_target = rewards + GAMMA * (1 - dones) * self.target(next_obs).max(dim=1).values
        q = self.net(obs).gather(1, actions[:, None]).squeeze(1)
        loss = nn.functional.smooth_l1_loss(q, td_target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def iteration(self) -> None:
        obs = torch.from_numpy(self.env.state()).permute(2, 0, 1)[None].float()
        with torch.no_grad():
            action = int(self.net(obs).argmax())
        _, done = self.env.act(action)
        if done:
            self.env.reset()
        self.update()


def bench_grad_variants(steps: int) -> None:
    torch.manual_seed(0)
    w = torch.randn(128, 1024) / 32
    eye = torch.eye(128)

    def naive() -> torch.Tensor:
        return 4 * (w @ w.T - eye) @ w

    def symmetric_gram() -> torch.Tensor:
        gram = torch.empty(128, 128)
        torch.mm(w[:64], w.T, out=gram[:64])
        torch.mm(w[64:], w[64:].T, out=gram[64:, 64:])
        gram[64:, :64] = gram[:64, 64:].T
        return torch.addmm(w, gram, w, beta=-4.0, alpha=4.0)

    for name, fn in [
        ("naive 4(WWᵀ−I)W", naive),
        ("isometry_grad (addmm)", lambda: isometry_grad(w)),
        ("symmetric Gram + addmm", symmetric_gram),
    ]:
        print(f"  ∇R 128×1024  {name:<26} {time_it(fn, steps)[0] * 1e6:8.1f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="calls per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median reported)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    replay = (torch.rand(5000, 4, 10, 10) < 0.1).float()
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"torch.set_num_threads({threads}); torch {torch.__version__}")
        bench_grad_variants(args.steps)
        harnesses = {name: Harness(f, replay) for name, (f, _) in VARIANTS.items()}
        measures = {
            "step": lambda h: h.opt.step,
            "update": lambda h: h.update,
            "iter": lambda h: h.iteration,
        }
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for measure, get_fn in measures.items():
                for name, h in harnesses.items():
                    times.setdefault((measure, name), []).append(time_it(get_fn(h), args.steps))
        columns = [(m, kind) for m in measures for kind in ("wall", "cpu")]
        print(f"  {'variant':<30}" + "".join(f"{m + ' ' + k + ' µs':>16}{'×':>6}" for m, k in columns))
        for name in VARIANTS:
            row = f"  {name:<30}"
            for measure, kind in columns:
                col = 0 if kind == "wall" else 1
                t = statistics.median(x[col] for x in times[measure, name])
                base = statistics.median(x[col] for x in times[measure, VARIANTS[name][1]])
                row += f"{t * 1e6:16.1f}{t / base:6.2f}"
            print(row)
        print()


if __name__ == "__main__":
    main()
