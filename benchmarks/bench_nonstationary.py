"""Step throughput of a MinAtar game, raw and under NonStationary, in one process.

Run:  python benchmarks/bench_nonstationary.py [--game breakout] [--with GAME,...] [--steps 20000]
                                               [--rounds 15] [--num-envs 8] [--clock cpu|wall]

Variants, all built by ``plasticrl.envs.make`` (channel-first float32 with a time limit: what the trainer
steps):
    raw            the game alone
    raw_padded     reference, no wrapper: the game with its observation zero-padded to the most
                   channels among the ``--with`` games (folded into the conversion), i.e. the
                   observation that switch must deliver (Breakout in the five-game cycle of
                   configs/minatar/dqn_cycle.yaml: 4 channels of 10)
    raw_permuted   reference, no wrapper: the game with a random permutation of all cells installed
                   in its conversion, the observation work of permute_obs without the wrapper
    bookkeeping    NonStationary with reward_scale at scale 1: the clock and the announcements only
    permute_obs    NonStationary with an active (non-identity) permutation of all cells, folded
                   into the MinAtar conversion (plasticrl.envs.nonstationary, Note [Folded observation
                   gather])
    switch         NonStationary over TaskSet([game, *with games]) while on the game: zero-padding
                   to the most channels (folded likewise), steps sent straight to the game (Note
                   [Step fast path])
Two tables: one env stepped directly, and ``plasticrl.envs.vector.make_vector_env``'s SyncVectorEnv
(same-step autoreset, episode statistics) of ``--num-envs`` sub-envs, each wrapped as the trainer
wraps them. Variants are timed in interleaved rounds (in a shuffled order each round) on one
seeded action sequence, with the garbage collector off. Each table shows per variant its
fastest round (the least disturbed by other processes) and two overheads, each the median over
rounds of the ratio to a reference timed in the same round (robust to drift between rounds):
"vs raw", and "own", the wrapper's own cost: relative to the unwrapped env that does the same
observation work (raw_padded for switch, raw_permuted for permute_obs, raw for bookkeeping). The
clock
is this thread's CPU time by default, which time slices lost to other processes do not
inflate; ``--clock wall`` times wall-clock instead (the same on a quiet machine).
"""

from __future__ import annotations

import argparse
import functools
import gc
import time
import warnings
from collections.abc import Callable

import gymnasium as gym
import numpy as np
from plasticrl.envs.make import EnvConfig, MinAtarObservation, make_env
from plasticrl.envs.nonstationary import NonStationary, PermuteObs, RewardScale, Switch, TaskSet
from plasticrl.envs.schedules import At, Schedule

NEVER = At([10**12])


def vector_env(cfg: EnvConfig, wrap: Callable[[gym.Env], gym.Env] | None) -> gym.vector.VectorEnv:
    """What ``plasticrl.envs.vector.make_vector_env`` builds, with ``wrap`` in place of the configured
    wrapper."""

    def sub_env(index: int) -> gym.Env:
        env = make_env(cfg)
        env = env if wrap is None else wrap(env)
        env.action_space.seed(index)
        return env

    fns = [functools.partial(sub_env, i) for i in range(cfg.num_envs)]
    envs = gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    return gym.wrappers.vector.RecordEpisodeStatistics(envs)


def wrappers(game: str, others: list[str], num_envs: int) -> dict[str, Callable[[gym.Env], gym.Env] | None]:
    """Each variant as ``wrap(env) -> env`` applied to the raw game env."""
    make = functools.partial(make_env, EnvConfig(id=game))
    common = dict(seed=0, clock_scale=num_envs, autoreset_mode="SameStep" if num_envs > 1 else None)

    def wrap(change_schedule_on: tuple) -> Callable[[gym.Env], gym.Env]:
        change, schedule, on = change_schedule_on
        return lambda env: NonStationary(env, change, schedule, on=on, **common)

    def switch(env: gym.Env) -> gym.Env:
        # The trainer's way: task 0 is the env it built, the others come from its builder.
        return NonStationary(TaskSet([lambda: env, *others], make_task=make), Switch(), NEVER, **common)

    def padded(env: gym.Env) -> gym.Env:
        # What TaskSet installs in the game for the switch variant, without any wrapper.
        assert isinstance(env, MinAtarObservation)
        channels = max(int(make(other).observation_space.shape[0]) for other in others)
        size = int(np.prod(env.observation_space.shape))
        index = np.full((max(channels, env.observation_space.shape[0]), 10, 10), size)
        index.reshape(-1)[:size] = np.arange(size)
        env.set_observation_gather(index)
        return env

    def permuted(env: gym.Env) -> gym.Env:
        # What permute_obs installs in the game, without the wrapper (another permutation: the
        # cost of a gather does not depend on which).
        assert isinstance(env, MinAtarObservation)
        shape = env.observation_space.shape
        env.set_observation_gather(np.random.default_rng(0).permutation(int(np.prod(shape))).reshape(shape))
        return env

    # permute_obs: At(num_envs) with on="step" truncates the first step; every later episode is
    # permuted (time_steps takes that step before timing).
    first: Schedule = At([num_envs])
    return {
        "raw": None,
        "raw_padded": padded,
        "raw_permuted": permuted,
        "bookkeeping": wrap((RewardScale(), NEVER, "episode")),
        "permute_obs": wrap((PermuteObs(), first, "step")),
        "switch": switch,
    }


def time_steps(env: gym.Env | gym.vector.VectorEnv, actions: np.ndarray, clock: Callable[[], float]) -> float:
    """Seconds for the steps of ``actions`` (one row per step), resets included.

    The garbage collector is off while the steps run: a full collection walks every variant's
    envs (all alive in this process), a pause that would land on whichever variant runs.
    """
    env.reset(seed=0)
    env.step(actions[0])  # past the permute_obs variant's truncation; nothing for the others
    env.reset(seed=0)
    step, reset = env.step, env.reset
    vector = isinstance(env, gym.vector.VectorEnv)
    rows = actions.tolist()
    gc.collect()
    gc.disable()
    try:
        start = clock()
        for action in rows:
            _, _, terminated, truncated, _ = step(action)
            if not vector and (terminated or truncated):
                reset()
        return clock() - start
    finally:
        gc.enable()


REFERENCE = {"switch": "raw_padded", "permute_obs": "raw_permuted"}
"""The unwrapped variant that delivers the same observation; "raw" for those not listed."""


def table(
    title: str,
    envs: dict[str, gym.Env | gym.vector.VectorEnv],
    actions: np.ndarray,
    rounds: int,
    clock: Callable[[], float],
) -> None:
    times: dict[str, list[float]] = {name: [] for name in envs}
    order = np.random.default_rng(1)
    for _ in range(rounds):
        for name in order.permutation(list(envs)).tolist():
            times[name].append(time_steps(envs[name], actions, clock))

    def overhead(name: str, reference: str) -> str:
        ratios = np.array(times[name]) / np.array(times[reference])  # round by round
        return f"{100 * (np.median(ratios) - 1):+7.1f}%"

    print(title)
    print(f"  {'variant':<12} {'steps/s':>10} {'us/step':>8} {'vs raw':>8} {'own':>8}")
    for name, samples in times.items():
        t = min(samples)
        vs_raw = "" if name == "raw" else overhead(name, "raw")
        own = "" if name.startswith("raw") else overhead(name, REFERENCE.get(name, "raw"))
        print(f"  {name:<12} {actions.size / t:>10.0f} {1e6 * t / actions.size:>8.2f} {vs_raw:>8} {own:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--game", default="breakout", help="a MinAtar alias (breakout, space_invaders, ...)")
    parser.add_argument(
        "--with",
        dest="others",
        default="asterix,freeway,seaquest,space_invaders",
        help="the other games of the switch variant's task set (default: the rest of the five-game cycle)",
    )
    parser.add_argument("--steps", type=int, default=20_000, help="env steps per variant per round")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    parser.add_argument("--num-envs", type=int, default=8, help="sub-envs of the vector table (0: skip it)")
    parser.add_argument(
        "--clock", choices=["cpu", "wall"], default="cpu", help="this thread's CPU time or wall-clock time"
    )
    args = parser.parse_args()
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    others = [name for name in args.others.split(",") if name]

    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MinAtar -v0 "out of date", seaborn
        single = {
            name: (wrap or (lambda env: env))(make_env(EnvConfig(id=args.game)))
            for name, wrap in wrappers(args.game, others, 1).items()
        }
    table(
        f"MinAtar {args.game}, one env: {args.steps} steps x {args.rounds} rounds, fastest round",
        single,
        rng.integers(0, 6, size=args.steps),
        args.rounds,
        clock,
    )
    if args.num_envs > 0:
        n = args.num_envs
        cfg = EnvConfig(id=args.game, num_envs=n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vector = {name: vector_env(cfg, wrap) for name, wrap in wrappers(args.game, others, n).items()}
        table(
            f"MinAtar {args.game}, make_vector_env with {n} sub-envs: per env step",
            vector,
            rng.integers(0, 6, size=(args.steps // n, n)),
            args.rounds,
            clock,
        )


if __name__ == "__main__":
    main()
