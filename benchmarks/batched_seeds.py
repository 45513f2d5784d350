"""Does stacking seeds in one process pay? PPO update steps/s of S seeds: stacked vs separate processes.

    python benchmarks/batched_seeds.py [--seeds 2] [--threads 2] [--seconds 20] [--inputs 1000]

The update of the AdamO paper's protocol (separate actor and critic MLPs of 4 × 64 on 10 × 10 × 10
MinAtar observations, minibatches of 2048, the PPO loss, global grad-norm clipping at 0.5, fused
Adam), three ways on the same cores, each reported as aggregate seed-samples/s (minibatch rows
per second, summed over seeds):

* ``one``: one seed in this process on ``--threads`` threads (what one run does);
* ``stacked``: ``--seeds`` seeds in this process, their parameters stacked along a leading axis
  (``torch.func.stack_module_state``) and the loss and gradients of all seeds computed at once
  with ``torch.func.vmap(grad_and_value(...))``; clipping per seed, one fused Adam over the
  stacked tensors (which is exactly per-seed Adam: the update is elementwise);
* ``processes``: ``--seeds`` processes at once, one thread each, each running ``one``
  (how ``plasticrl sweep --workers N`` runs seeds side by side).

The minibatches are random data of the protocol's shapes (throughput does not depend on them).
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from plasticrl.agents.actor_critic import Categorical, make_actor_critic
from plasticrl.agents.networks import NetworkConfig
from plasticrl.agents.ppo import ppo_loss
from plasticrl.agents.rollout import RolloutBatch
from torch import Tensor

BATCH = 2048


def _model(inputs: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    space = gym.spaces.Box(0.0, 1.0, (inputs // 100, 10, 10), np.float32)
    cfg = NetworkConfig(name="mlp", hidden_sizes=(64, 64, 64, 64), init="orthogonal")
    return make_actor_critic(space, gym.spaces.Discrete(6), cfg)


def _batch(inputs: int, generator: torch.Generator, lead: tuple[int, ...] = ()) -> RolloutBatch:
    shape = (*lead, BATCH)
    return RolloutBatch(
        torch.randint(0, 2, (*shape, inputs // 100, 10, 10), generator=generator).float(),
        torch.randint(0, 6, shape, generator=generator),
        -torch.rand(shape, generator=generator) * 2,
        torch.randn(shape, generator=generator),
        torch.randn(shape, generator=generator),
        torch.randn(shape, generator=generator),
    )


def _loss(model: torch.nn.Module, mb: RolloutBatch) -> Tensor:
    logits, values = model.policy_and_value(mb.obs)  # type: ignore[operator]
    dist = Categorical(logits)
    return ppo_loss(dist.log_prob(mb.actions), dist.entropy(), values, mb, clip_coef=0.2)[0]


def _rate(step: Callable[[], None], seconds: float, samples: int) -> float:
    for _ in range(3):
        step()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        count += 1
    return samples * count / (time.perf_counter() - start)


def one(inputs: int, seconds: float) -> float:
    """Seed-samples/s of one seed's gradient steps."""
    model = _model(inputs, 0)
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=2.5e-4, eps=1e-5, fused=True)
    mb = _batch(inputs, torch.Generator().manual_seed(0))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        _loss(model, mb).backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        optimizer.step()

    return _rate(step, seconds, BATCH)


def stacked(inputs: int, seeds: int, seconds: float) -> float:
    """Seed-samples/s of ``seeds`` seeds' gradient steps, their parameters stacked (torch.func)."""
    from torch.func import functional_call, grad_and_value, stack_module_state, vmap

    models = [_model(inputs, s) for s in range(seeds)]
    params, buffers = stack_module_state(models)  # leading axis: the seed
    base = copy.deepcopy(models[0]).to("meta")
    leaves = [p for p in params.values()]
    optimizer = torch.optim.Adam(leaves, lr=2.5e-4, eps=1e-5, fused=True)
    mb = _batch(inputs, torch.Generator().manual_seed(0), (seeds,))

    def loss_of(p: dict[str, Tensor], b: dict[str, Tensor], batch: RolloutBatch) -> Tensor:
        class _Call(torch.nn.Module):
            def policy_and_value(self, obs: Tensor) -> Any:
                out = functional_call(base, (p, b), (obs,))
                return out[..., :-1], out[..., -1]

        return _loss(_Call(), batch)

    grads_and_loss = vmap(grad_and_value(loss_of), in_dims=(0, 0, 0))

    def step() -> None:
        grads, _ = grads_and_loss(params, buffers, mb)
        norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads.values()]).norm(dim=0)  # per seed
        scale = (0.5 / (norms + 1e-6)).clamp(max=1.0)
        for name, leaf in params.items():
            g = grads[name]
            leaf.grad = g * scale.view(-1, *([1] * (g.dim() - 1)))
        optimizer.step()

    return _rate(step, seconds, seeds * BATCH)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per way")
    parser.add_argument("--inputs", type=int, default=1000, help="observation size (1000: 10 channels)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(one(args.inputs, args.seconds)))
        return
    rates = {"one": one(args.inputs, args.seconds), "stacked": stacked(args.inputs, args.seeds, args.seconds)}
    command = [sys.executable, __file__, "--worker", "--threads", "1", "--seconds", str(args.seconds)]
    command += ["--inputs", str(args.inputs)]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(args.seeds)]
    rates["processes"] = sum(json.loads(c.communicate()[0].strip().splitlines()[-1]) for c in children)
    print(f"PPO update, {args.inputs} inputs, minibatch {BATCH}, {args.seeds} seeds, {args.threads} threads")
    print("| way | seed-samples/s | × one |")
    print("|---|---:|---:|")
    for way, rate in rates.items():
        label = {"one": "one seed", "stacked": f"{args.seeds} seeds stacked (torch.func)"}.get(
            way, f"{args.seeds} processes × 1 thread"
        )
        print(f"| {label} | {rate:,.0f} | {rate / rates['one']:.2f} |")


if __name__ == "__main__":
    main()
