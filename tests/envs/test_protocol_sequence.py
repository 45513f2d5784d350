"""The AdamO protocol's task sequence, computed by hand from the seed: games reshuffled every cycle
(the first too), a fresh channel permutation for every (game, cycle), the first task included."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from plasticrl.envs.make import build_sub_env
from plasticrl.trainers.config import load_config

pytest.importorskip("minatar")

PRESET = Path(__file__).resolve().parents[2] / "configs/minatar/ppo_continual.yaml"
SALT = 0x7A5C  # the wrapper's task-generator salt (Note [Task randomness] in plasticrl.envs.nonstationary)
GAMES, CHANNELS = 4, 10


def hand_sequence(seed: int, tasks: int) -> list[tuple[int, tuple[int, ...]]]:
    """(game, channel permutation) of the first ``tasks`` tasks, drawing as the docs say.

    The task generator is ``default_rng([seed, SALT])``. Start: the first cycle's order (a
    permutation of the games), then task 0's permutation. Each change: the next game of the cycle
    (a new cycle: its first game uniform over the games other than the last one, the others in a
    uniformly random order), then a fresh permutation of the 10 channels: ``rng.permutation(10)``,
    drawn again while it is the identity or the previous task's.
    """
    rng = np.random.default_rng([seed, SALT])

    def fresh(previous: tuple[int, ...]) -> tuple[int, ...]:
        while True:
            perm = tuple(int(c) for c in rng.permutation(CHANNELS))
            if perm not in (previous, tuple(range(CHANNELS))):
                return perm

    order = [int(g) for g in rng.permutation(GAMES)]
    position = 0
    out = [(order[0], fresh(tuple(range(CHANNELS))))]
    while len(out) < tasks:
        if position + 1 < GAMES:
            position += 1
        else:
            last = order[-1]
            other = int(rng.integers(GAMES - 1))
            start = other + (other >= last)
            rest = [g for g in range(GAMES) if g != start]
            order = [start, *(rest[int(i)] for i in rng.permutation(GAMES - 1))]
            position = 0
        out.append((order[position], fresh(out[-1][1])))
    return out


def _wrapper(seed: int, every: int):  # noqa: ANN202
    cfg = load_config(PRESET, [f"seed={seed}", "env.num_envs=1", f"nonstationary.every={every}"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_sub_env(cfg.env, cfg.seed, 0, cfg.nonstationary)


def _played(env, steps: int, rng: np.random.Generator) -> list[tuple[int, tuple[int, ...]]]:  # noqa: ANN001
    """Step ``env`` with random actions; (game, permutation) of every task it started."""
    env.reset(seed=0)
    first = (int(env.unwrapped.index), tuple(env.get_state()["params"][1][1]))
    return [first, *_played_after(env, steps, rng)]


@pytest.mark.parametrize("seed", [26, 29])
def test_the_sequence_equals_the_hand_computed_one_across_cycles_and_a_resume(seed: int) -> None:
    every = 40
    env = _wrapper(seed, every)
    rng = np.random.default_rng(1)
    first = _played(env, 6 * every, rng)  # 6 changes: into the second cycle
    blob = pickle.dumps(env)  # a checkpoint mid-run
    rest = _played_after(pickle.loads(blob), 7 * every, np.random.default_rng(2))
    uninterrupted = _played_after(env, 7 * every, np.random.default_rng(2))
    assert rest == uninterrupted  # the resumed wrapper continues the same sequence
    seen = first + rest
    expected = hand_sequence(seed, len(seen))
    assert seen == expected and len(seen) >= 12  # three cycles
    for cycle in range(len(seen) // GAMES):
        assert sorted(g for g, _ in seen[cycle * GAMES : (cycle + 1) * GAMES]) == list(range(GAMES))
    assert len({perm for _, perm in seen}) == len(seen)  # a fresh permutation per (game, cycle)
    assert seen[0][1] != tuple(range(CHANNELS))  # the first task is permuted too


def _played_after(env, steps: int, rng: np.random.Generator) -> list[tuple[int, tuple[int, ...]]]:  # noqa: ANN001
    """As :func:`_played`, continuing a started env (no seeded reset)."""
    seen = []
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(int(rng.integers(6)))
        if terminated or truncated:
            _, info = env.reset()
            if info.get("task_switched"):
                assert info["game"] == env.unwrapped.index
                seen.append((int(info["game"]), tuple(env.get_state()["params"][1][1])))
    return seen


def test_the_first_game_differs_between_seeds() -> None:
    firsts = []
    for seed in range(26, 34):
        env = _wrapper(seed, 40)
        env.reset(seed=0)
        firsts.append(int(env.unwrapped.index))
    assert firsts == [hand_sequence(seed, 1)[0][0] for seed in range(26, 34)]
    assert len(set(firsts)) >= 2  # the protocol's 8 seeds do not all start with one game
