"""Cost of one plasticity-metrics measurement against one DQN update, to choose the cadence.

Measures, in one process, on the MinAtar reference network of a preset (default Breakout):
  * t_update — one DQN update (batch 32: online + target forward, backward, optimizer step);
  * the probe (``plasticrl.plasticity.metrics.PlasticityProbe``, probe batch 256) without and with the
    layer Jacobians, and the empirical NTK alone (probe with ``ntk=True`` minus probe);
  * the first call of each, which pays torch.func's one-time set-up;
and prints the overhead of each cadence as a share of the update time alone (the env step and
acting make the real share smaller). Observations are random bits, as MinAtar's.

Run:  python benchmarks/bench_metrics.py [--obs-channels 4] [--threads 1] [key=value ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from plasticrl.agents.buffers import Batch
from plasticrl.agents.dqn import DQNAgent
from plasticrl.agents.networks import make_network
from plasticrl.plasticity.metrics import MetricsConfig, PlasticityProbe
from plasticrl.plasticity.optimizers import make_optimizer, param_groups
from plasticrl.trainers.config import load_config

DEFAULT_CONFIG = "configs/minatar/dqn_breakout.yaml"


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def first_ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def bits(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=gen) < 0.1).float()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument(
        "--obs-channels", type=int, default=4, help="MinAtar channels (breakout 4, seaquest 10)"
    )
    parser.add_argument("--actions", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the trainer's torch_threads)")
    parser.add_argument("--updates", type=int, default=300, help="DQN updates timed")
    parser.add_argument("--repeats", type=int, default=5, help="probe calls timed (median)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    gen = torch.Generator().manual_seed(0)
    obs_shape = (args.obs_channels, 10, 10)
    obs_space = gym.spaces.Box(0, 1, obs_shape, np.float32)
    net = make_network(obs_space, gym.spaces.Discrete(args.actions), cfg.network)
    optimizer = make_optimizer(param_groups(net, iso_head=cfg.optimizer.iso_head), cfg.optimizer)
    agent = DQNAgent(net, optimizer, cfg.agent, args.actions)
    batch_size = cfg.agent.batch_size
    batch = Batch(
        obs=bits((batch_size, *obs_shape), gen),
        actions=torch.randint(0, args.actions, (batch_size,), generator=gen),
        rewards=torch.rand(batch_size, generator=gen),
        next_obs=bits((batch_size, *obs_shape), gen),
        terminated=torch.zeros(batch_size),
    )
    t_update = median_ms(lambda: agent.update(batch), args.updates, warmup=50)

    metrics = MetricsConfig()
    probe_obs = bits((metrics.probe_size, *obs_shape), gen)
    no_jac = PlasticityProbe(net, MetricsConfig(jacobian=False))
    with_jac = PlasticityProbe(net, metrics)
    first = {
        "probe, first call (torch.func set-up)": first_ms(lambda: with_jac(probe_obs)),
        "probe + NTK, first call": first_ms(lambda: with_jac(probe_obs, ntk=True)),
    }
    t_nojac = median_ms(lambda: no_jac(probe_obs, optimizer=optimizer), args.repeats)
    t_jac = median_ms(lambda: with_jac(probe_obs, optimizer=optimizer), args.repeats)
    t_with_ntk = median_ms(
        lambda: with_jac(probe_obs, optimizer=optimizer, ntk=True), max(args.repeats // 2, 1)
    )
    t_ntk = t_with_ntk - t_jac

    n_params = sum(p.numel() for p in net.parameters())
    print(
        f"config {args.config} {' '.join(args.overrides)} | network {cfg.network.name} "
        f"obs {obs_shape} |A|={args.actions} params={n_params} | optimizer {cfg.optimizer.name} | "
        f"torch threads {args.threads}"
    )
    print(
        f"probe {metrics.probe_size}, jacobian_samples {metrics.jacobian_samples}, "
        f"NTK probe {metrics.ntk_probe_size}"
    )
    rows = {
        "DQN update (batch 32)": t_update,
        "probe, no Jacobian": t_nojac,
        "probe, with Jacobian": t_jac,
        f"NTK alone (n={metrics.ntk_probe_size}, n·|A|={metrics.ntk_probe_size * args.actions})": t_ntk,
        **first,
    }
    for name, ms in rows.items():
        print(f"  {name:<42} {ms:9.2f} ms  = {ms / t_update:8.1f} updates")
    print("overhead relative to update time alone:")
    for every in (1000, 5000, 10000):
        print(
            f"  metrics.every={every:<6}  no Jacobian {t_nojac / (every * t_update):6.2%}"
            f"   with Jacobian {t_jac / (every * t_update):6.2%}"
        )
    for every in (10000, 50000, 100000):
        print(f"  metrics.ntk_every={every:<6}  NTK {t_ntk / (every * t_update):6.2%}")


if __name__ == "__main__":
    main()
