"""A "new" permutation is a real change: never the identity, never the previous one (issue 17)."""

from __future__ import annotations

from contextlib import nullcontext

import gymnasium as gym
import numpy as np
import pytest
from plasticrl.envs.changes import PermuteActions, PermuteObs, fresh_permutation


def _chain(change: object, first: np.ndarray, n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = [first]
    for _ in range(n):
        out.append(change.next(out[-1], rng))  # type: ignore[attr-defined]
    return out


def test_cartpole_action_permutation_changes_every_time() -> None:
    change = PermuteActions()
    change.bind(gym.make("CartPole-v1"))
    perms = _chain(change, change.first(), 50)
    for previous, new in zip(perms, perms[1:], strict=False):
        assert not np.array_equal(previous, new)
    assert all(np.array_equal(p, [1, 0]) for p in perms[1::2])  # two actions: swap, identity, swap, ...


@pytest.mark.parametrize("mode", ["channels", "spatial", "all"])
def test_observation_permutations_never_identity_nor_previous(mode: str) -> None:
    env = gym.make("CartPole-v1")
    env.observation_space = gym.spaces.Box(0, 1, (3, 1, 2), np.float32)  # 3 channels, 2 positions
    change = PermuteObs(mode=mode)
    # 3 channels > 2 positions: the channel-last heuristic of the per-axis modes fires
    heuristic = pytest.warns(UserWarning, match="looks channel-last") if mode != "all" else nullcontext()
    with heuristic:
        change.bind(env)
    perms = _chain(change, change.first(), 300, seed=1)
    identity = np.arange(len(perms[0]))
    for previous, new in zip(perms, perms[1:], strict=False):
        assert not np.array_equal(previous, new)
        if len(identity) > 2:
            assert not np.array_equal(new, identity)


def test_fresh_permutation_keeps_the_plain_stream_when_the_draw_is_a_change() -> None:
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    previous = np.arange(10)
    for _ in range(20):
        plain = b.permutation(10)
        new = fresh_permutation(10, previous, a)
        assert np.array_equal(new, plain)  # 10! draws: never a repeat here, so no redraw
        previous = new
    assert np.array_equal(fresh_permutation(1, None, a), [0])
