"""DQN on Atari (``configs/atari/dqn_breakout.yaml``): env steps/s and replay bytes per transition.

Measures, in one process, with the preset's preprocessing (84x84 grey, frame skip 4, 4 stacked
uint8 frames), Nature CNN and frame replay (``obs_storage: auto`` -> ``frames``):
  * t_env    — one env step (vector env of 1, random actions), alone;
  * t_act    — one ε-greedy action at the final ε (batch-1 Nature CNN forward), alone;
  * t_update — one replay sample + gradient update (batch 32), alone;
  * the replay's observation bytes per transition: preallocated per slot (``obs_bytes /
    capacity``) and actually used by the transitions stored (frames stored once, 8 frame ids);
  * the real training loop (``plasticrl.trainers.off_policy``) in its learning phase (one update
    per 4 env steps, the preset's replay ratio), env steps/s; the fastest of ``--rounds``.
Plasticity metrics are off (their cost is ``benchmarks/probe_memory.py``'s), ε at its final value.

Run:  python benchmarks/throughput_dqn_atari.py [--steps 2000] [--rounds 1] [key=value ...]
      (about 1-2 minutes on one core; needs pip install 'plasticrl[atari]')
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from plasticrl.trainers.config import load_config
from plasticrl.trainers.off_policy import build_off_policy, train_off_policy

DEFAULT_CONFIG = "configs/atari/dqn_breakout.yaml"
STEADY_STATE = [
    "agent.eps_decay_steps=1",
    "metrics.every=0",
    "metrics.ntk_every=0",
    "agent.learning_starts=1000",
    "agent.buffer_size=20000",
]


def per_call_ms(fn, n: int, warmup: int = 20) -> float:
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e3


def measure_parts(cfg, n: int) -> tuple[dict[str, float], dict[str, float]]:
    """Per-call ms of an env step, an act and a sample+update; replay bytes per transition."""
    torch.set_num_threads(cfg.torch_threads or torch.get_num_threads())
    setup = build_off_policy(cfg)
    envs, agent, buffer = setup.envs, setup.agent, setup.buffer
    obs, _ = envs.reset(seed=cfg.seed)
    for _ in range(cfg.agent.learning_starts):
        actions = envs.action_space.sample()
        next_obs, rewards, term, trunc, _ = envs.step(actions)
        buffer.add(obs, next_obs, actions, rewards, term)
        obs = next_obs
    size = len(buffer)
    frame = int(np.prod(buffer.obs_shape[1:]))
    used = (
        buffer.frame_count * frame + size * (buffer.frame_ids.shape[1] * 8 + 8)
        if buffer.storage == "frames"
        else buffer.obs_bytes / buffer.capacity * size
    )
    sizes = {
        "preallocated bytes/slot": buffer.obs_bytes / buffer.capacity,
        "used bytes/transition": used / size,
        "float32 obs+next_obs bytes/transition": 2 * 4 * int(np.prod(buffer.obs_shape)),
    }
    step = cfg.agent.learning_starts + n
    state = {"obs": obs}

    def env_step() -> None:
        state["obs"] = envs.step(envs.action_space.sample())[0]

    def act() -> None:
        agent.act(state["obs"], step)

    def update() -> None:
        agent.update(buffer.sample(cfg.agent.batch_size))

    parts = {
        "t_env": per_call_ms(env_step, n),
        "t_act": per_call_ms(act, n),
        "t_update": per_call_ms(update, max(20, n // 8)),
    }
    envs.close()
    return parts, {"storage": buffer.storage, **sizes}  # type: ignore[dict-item]


def measure_loop(cfg, n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        run_cfg = replace(
            cfg,
            total_steps=cfg.agent.learning_starts + n,
            logging=replace(cfg.logging, dir=tmp, progress=False),
            checkpoint=replace(cfg.checkpoint, every=0, replay_buffer=False),
        )
        result = train_off_policy(run_cfg, Path(tmp), None, quiet=True)
        return float(result.learning_sps)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--steps", type=int, default=2000, help="learning-phase env steps measured")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, [*STEADY_STATE, *args.overrides])
    parts: dict[str, float] = {}
    sps = 0.0
    for _ in range(args.rounds):
        measured, sizes = measure_parts(cfg, args.steps)
        for key, value in measured.items():
            parts[key] = min(parts.get(key, float("inf")), value)
        sps = max(sps, measure_loop(cfg, args.steps))
    ratio = cfg.agent.replay_ratio
    bound = 1e3 / (parts["t_env"] + parts["t_act"] + ratio * parts["t_update"])
    print(f"config: {args.config} {' '.join(args.overrides)} | torch threads {torch.get_num_threads()}")
    print("  ".join(f"{k}={v:.2f} ms" for k, v in parts.items()))
    print(f"env alone = {1e3 / parts['t_env']:.0f} env steps/s")
    print(f"bound 1/(t_env + t_act + {ratio} t_update) = {bound:.0f} env steps/s")
    print(f"learning loop = {sps:.0f} env steps/s ({sps / bound:.0%} of the bound)")
    print(
        f"replay storage {sizes['storage']}: "
        + ", ".join(f"{k} {v:,.0f}" for k, v in sizes.items() if k != "storage")
    )


if __name__ == "__main__":
    main()
