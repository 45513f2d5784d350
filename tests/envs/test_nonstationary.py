"""Tests for plasticrl.envs.nonstationary on a stub env: tables, errors, invariants, state, vector envs,
MinAtar."""

from __future__ import annotations

import ast
import doctest
import inspect
import pickle
import textwrap
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import plasticrl.envs.nonstationary as nonstationary
import pytest
from gymnasium.error import ResetNeeded
from gymnasium.spaces import Box, Discrete
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from plasticrl.envs.nonstationary import (
    CHANGES,
    Change,
    NonStationary,
    PermuteActions,
    PermuteObs,
    RewardScale,
    Switch,
    TaskSet,
)
from plasticrl.envs.schedules import At, Every, RandomIntervals, Schedule

NEVER = At([10**9])


class EchoEnv(gym.Env[np.ndarray, int]):
    """A GenericTestEnv-style stub that shows what the wrapper sent it.

    Observation: ``arange(size).reshape(shape) + offset + t`` as float32, where ``offset`` in
    [0, 10) is drawn from ``np_random`` at reset and ``t`` is the step within the episode; all cells
    differ, so a permutation of it can be read back. Reward: always 1.0 (the wrapper's reward is
    the scale). Info: the action received, the unpermuted observation and this env's name. The
    episode terminates after ``episode_len`` steps.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        shape: tuple[int, ...] = (2, 3, 4),
        n_actions: int = 4,
        start: int = 0,
        episode_len: int = 1000,
        name: str = "echo",
    ) -> None:
        self.observation_space = Box(0.0, 10_000.0, shape, np.float32)
        self.action_space = Discrete(n_actions, start=start)
        self.episode_len, self.name = episode_len, name
        self._base = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
        self._offset, self._t = 0, 0

    def _obs(self) -> np.ndarray:
        return self._base + np.float32(self._offset + self._t)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._offset, self._t = int(self.np_random.integers(10)), 0
        obs = self._obs()
        return obs, {"obs": obs.copy(), "name": self.name}

    def step(self, action: int):
        self._t += 1
        obs = self._obs()
        info = {"action": int(action), "obs": obs.copy(), "name": self.name}
        return obs, 1.0, self._t >= self.episode_len, False, info


def run(env: gym.Env, n_steps: int, seed: int = 0, actions: Callable[[int], int] = lambda i: 0) -> list[dict]:
    """Reset, then step ``n_steps`` times (resetting after every episode end); one record per step.

    ``task`` is the task of the step as a caller tracks it from the announcements (Note [Task
    announcements]): the last ``task_id`` announced by a reset (or a step). It is checked against
    the wrapper's ``task_id`` (the ground truth) on every step, and so are the infos against the
    contract: a reset announces exactly when it switches (or is the first), a step's ``task_id``
    only repeats the reset's, ``task_switched`` never comes with a step.
    """
    _, info = env.reset(seed=seed)
    task = info.get("task_id", getattr(env, "task_id", None))  # known already if not announced
    records = []
    for i in range(n_steps):
        obs, reward, terminated, truncated, info = env.step(actions(i))
        assert "task_switched" not in info and info.get("task_id", task) == task
        if isinstance(env, NonStationary):
            assert env.task_id == task
        records.append(
            dict(obs=obs, reward=reward, terminated=terminated, truncated=truncated, info=info, task=task)
        )
        if terminated or truncated:
            _, reset_info = env.reset()
            records[-1]["reset_info"] = reset_info
            if isinstance(env, NonStationary):
                switched = env.task_id != task
                assert reset_info.get("task_switched", False) == switched
                assert ("task_id" in reset_info) == switched
                assert env.task_id == reset_info.get("task_id", task)
            task = reset_info.get("task_id", task)
    return records


def read_perm(obs: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """The flat permutation p with obs.flat == raw.flat[p] (raw is arange + constant)."""
    return (obs.reshape(-1) - raw.reshape(-1)[0]).astype(np.intp)


# ---------------------------------------------------------------------------------------------
# Expectation table: schedule × on × episode length × steps → task of every step.
# reward_scale with scales (1, 2, 3) cycling, so task id = number of active changes mod 3 and
# the stub's reward 1.0 comes back as the active scale: the table checks the id *and* the effect.

SCALES = (1.0, 2.0, 3.0)
# (schedule, on, clock_scale, episode_len, expected task id of steps 1..n, steps that truncate)
TASK_TABLE = [
    (Every(3), "step", 1, 1000, [0, 0, 0, 1, 1, 1, 2, 2, 2, 0], [3, 6, 9]),
    (Every(3), "episode", 1, 4, [0] * 4 + [1] * 4 + [2] * 4, []),
    (At([2, 7]), "step", 1, 1000, [0, 0, 1, 1, 1, 1, 1, 2, 2, 2], [2, 7]),
    (At([2, 7]), "episode", 1, 5, [0] * 5 + [1] * 5 + [2] * 2, []),
    # Two or three changes due within one episode apply as the last of them.
    (Every(1), "episode", 1, 2, [0, 0, 2, 2, 1, 1, 0, 0], []),
    (RandomIntervals(4, 4), "step", 1, 1000, [0, 0, 0, 0, 1, 1, 1, 1, 2], [4, 8]),
    # A coarse clock (a vector env of 2): changes due at lifetime 3, 6, 9, 12 → steps 2, 3, 5, 6.
    (Every(3), "step", 2, 1000, [0, 0, 1, 2, 2, 0, 1], [2, 3, 5, 6]),
    # Clock of 5 with changes every 2: several changes due per step; every step truncates.
    (Every(2), "step", 5, 1000, [0, 2, 2, 1], [1, 2, 3, 4]),
    (NEVER, "step", 1, 3, [0] * 7, []),
]


@pytest.mark.parametrize("schedule, on, clock_scale, episode_len, expected, truncating", TASK_TABLE)
def test_task_table(
    schedule: Schedule,
    on: str,
    clock_scale: int,
    episode_len: int,
    expected: list[int],
    truncating: list[int],
) -> None:
    env = NonStationary(
        EchoEnv(episode_len=episode_len),
        RewardScale(SCALES),
        schedule,
        on=on,
        seed=0,
        clock_scale=clock_scale,
    )
    records = run(env, len(expected))
    assert [r["task"] for r in records] == expected
    assert [r["reward"] for r in records] == [SCALES[i] for i in expected]
    assert [i + 1 for i, r in enumerate(records) if r["truncated"]] == truncating
    assert env.lifetime_step == clock_scale * len(expected)


def test_task_switched_announces_a_new_task_on_reset_only() -> None:
    env = NonStationary(EchoEnv(), RewardScale(SCALES), Every(2), on="step", seed=0)
    _, info = env.reset(seed=0)
    assert info == {"obs": info["obs"], "name": "echo", "task_id": 0, "task_switched": False}
    steps = [env.step(0) for _ in range(2)]
    assert ["task_switched" in s[4] for s in steps] == [False, False]  # resets only
    assert [s[4].get("task_id") for s in steps] == [0, None]  # the first step repeats the task
    assert env.task_id == 0  # the truncating step still ran task 0
    _, info = env.reset()
    assert (info["task_id"], info["task_switched"]) == (1, True)
    _, info = env.reset()  # a reset without a new change: same task, nothing announced
    assert "task_id" not in info and "task_switched" not in info and env.task_id == 1


def test_changes_that_lead_back_to_the_same_task_do_not_announce_a_switch() -> None:
    # Two changes per 2-step episode over two scales: every episode runs scale index 0 again.
    env = NonStationary(EchoEnv(episode_len=2), RewardScale(), Every(1), seed=0)
    records = run(env, 6)
    assert [r["reward"] for r in records] == [1.0] * 6
    assert [set(r["reset_info"]) for r in records if "reset_info" in r] == [{"obs", "name"}] * 3
    assert env.get_state()["num_changes"] == 6


def test_immediate_change_truncates_and_demands_reset() -> None:
    env = NonStationary(EchoEnv(), PermuteObs(), At([3]), on="step", seed=0)
    env.reset(seed=0)
    for _ in range(2):
        obs, _, _, truncated, info = env.step(0)
        assert not truncated and np.array_equal(obs, info["obs"])
    obs, _, terminated, truncated, info = env.step(0)
    assert (terminated, truncated) == (False, True)
    assert np.array_equal(obs, info["obs"])  # the old task's (identity) observation
    with pytest.raises(ResetNeeded, match="the task changed"):
        env.step(0)
    obs, info = env.reset()
    assert info["task_switched"] and not np.array_equal(obs, info["obs"])  # now permuted
    assert np.array_equal(np.sort(obs, axis=None), np.sort(info["obs"], axis=None))


def test_change_at_a_natural_termination_does_not_add_truncation() -> None:
    env = NonStationary(EchoEnv(episode_len=3), RewardScale(), At([3]), on="step", seed=0)
    records = run(env, 3)
    assert (records[-1]["terminated"], records[-1]["truncated"]) == (True, False)
    assert records[-1]["reset_info"]["task_id"] == 1


# ---------------------------------------------------------------------------------------------
# Change kinds.


@pytest.mark.parametrize("layout", ["chw", "hwc"])
@pytest.mark.parametrize("mode", ["all", "spatial", "channels"])
def test_permute_obs_is_a_bijection_fixed_between_changes(mode: str, layout: str) -> None:
    shape = (3, 4, 5) if layout == "chw" else (4, 5, 3)
    env = NonStationary(EchoEnv(shape=shape), PermuteObs(mode, layout), Every(4), on="step", seed=1)
    records = run(env, 12)
    perms = [read_perm(r["obs"], r["info"]["obs"]) for r in records]
    size = int(np.prod(shape))
    for perm in perms:
        assert np.array_equal(np.sort(perm), np.arange(size))  # a bijection on cells
    # Fixed within a task, different across tasks; the identity before the first change.
    for first in (0, 4, 8):
        assert all(np.array_equal(perms[first], p) for p in perms[first : first + 4])
    assert np.array_equal(perms[0], np.arange(size))
    assert not np.array_equal(perms[4], perms[0]) and not np.array_equal(perms[8], perms[4])
    # The structure the mode promises, on a (channels, positions) view of the flat indices.
    grid = np.arange(size).reshape(shape)
    grid = grid.reshape(3, -1) if layout == "chw" else grid.reshape(-1, 3).T
    for perm in perms[4], perms[8]:
        moved = perm.reshape(shape)
        moved = moved.reshape(3, -1) if layout == "chw" else moved.reshape(-1, 3).T
        if mode == "spatial":  # one position permutation shared by all channels
            sigma = np.searchsorted(grid[0], moved[0])
            assert np.array_equal(moved, grid[:, sigma])
        elif mode == "channels":  # whole channels move
            sigma = [int(np.flatnonzero(grid[:, 0] == moved[c, 0])[0]) for c in range(3)]
            assert np.array_equal(moved, grid[sigma, :]) and sorted(sigma) == [0, 1, 2]


def test_permute_obs_widens_bounds_over_exchanged_cells() -> None:
    stub = EchoEnv(shape=(2, 1, 3))
    low = np.array([[[0, 1, 2]], [[-5, -4, -3]]], np.float32)
    stub.observation_space = Box(low, low + 10, (2, 1, 3), np.float32)
    spatial = NonStationary(stub, PermuteObs("spatial"), NEVER, seed=0).observation_space
    assert spatial.low.tolist() == [[[0, 0, 0]], [[-5, -5, -5]]]
    assert spatial.high.tolist() == [[[12, 12, 12]], [[7, 7, 7]]]
    channels = NonStationary(stub, PermuteObs("channels"), NEVER, seed=0).observation_space
    assert channels.low.tolist() == [[[-5, -4, -3]], [[-5, -4, -3]]]
    everything = NonStationary(stub, PermuteObs("all"), NEVER, seed=0).observation_space
    assert np.all(everything.low == -5) and np.all(everything.high == 12)
    uniform = EchoEnv()
    assert NonStationary(uniform, PermuteObs(), NEVER, seed=0).observation_space is uniform.observation_space


def test_permute_obs_warns_on_a_channel_last_looking_shape() -> None:
    with pytest.warns(UserWarning, match=r"shape \(10, 2, 2\) looks channel-last"):
        NonStationary(EchoEnv(shape=(10, 2, 2)), PermuteObs("channels"), NEVER, seed=0)


@pytest.mark.parametrize("start", [0, 3])
def test_permute_actions_maps_each_action_through_one_permutation(start: int) -> None:
    env = NonStationary(EchoEnv(n_actions=5, start=start), PermuteActions(), At([1, 7]), on="step", seed=0)
    env.reset(seed=0)
    assert env.step(start + 2)[4]["action"] == start + 2  # task 0: the identity
    env.reset()
    sent = [env.step(start + a)[4]["action"] for a in range(5)]
    assert sorted(sent) == list(range(start, start + 5)) and sent != list(range(start, start + 5))
    again = [env.step(start + a)[4]["action"] for a in range(1)]
    assert again == sent[:1]  # the 7th step: still the same permutation until the change


def test_reward_scale_default_flips_the_sign() -> None:
    env = NonStationary(EchoEnv(), RewardScale(), Every(2), on="step", seed=0)
    assert [r["reward"] for r in run(env, 6)] == [1.0, 1.0, -1.0, -1.0, 1.0, 1.0]


@pytest.mark.parametrize("change", [Switch("random"), RewardScale(SCALES, "random")], ids=repr)
def test_random_order_always_moves_to_another_task(change: Change) -> None:
    stub = TaskSet([lambda: EchoEnv(name="a"), lambda: EchoEnv(name="b"), lambda: EchoEnv(name="c")])
    env = NonStationary(
        stub if isinstance(change, Switch) else EchoEnv(), change, Every(1), on="step", seed=5
    )
    ids = [r["task"] for r in run(env, 60)]
    assert all(a != b for a, b in zip(ids, ids[1:], strict=False))
    assert set(ids) == {0, 1, 2}
    assert ids != [i % 3 for i in range(60)]


def two_task_set() -> TaskSet:
    return TaskSet(
        [
            lambda: EchoEnv(shape=(2, 3, 4), n_actions=4, name="a"),
            lambda: EchoEnv(shape=(3, 3, 2), n_actions=6, name="b"),
        ]
    )


def test_switch_pads_observations_and_wraps_actions() -> None:
    env = NonStationary(two_task_set(), Switch(), Every(3), on="step", seed=0)
    high = np.full((3, 3, 4), 10_000.0, np.float32)
    high[2, :, 2:] = 0.0  # neither task fills these cells: always 0
    assert env.observation_space == Box(0.0, high, (3, 3, 4), np.float32)
    assert env.action_space == Discrete(6)
    records = run(env, 7, actions=lambda i: 5)
    assert [r["info"]["name"] for r in records] == ["a"] * 3 + ["b"] * 3 + ["a"]
    assert [r["task"] for r in records] == [0, 0, 0, 1, 1, 1, 0]
    assert [r["info"]["action"] for r in records] == [1] * 3 + [5] * 3 + [1]  # 5 % 4 on task a
    for r in records:
        obs, raw = r["obs"], r["info"]["obs"]
        region = tuple(slice(0, d) for d in raw.shape)
        assert obs.shape == (3, 3, 4) and np.array_equal(obs[region], raw)
        rest = obs.copy()
        rest[region] = 0
        assert not rest.any()


def test_task_set_seeds_every_task_from_one_seed() -> None:
    def offsets(seed: int) -> list[float]:
        tasks = TaskSet([lambda: EchoEnv(name="a"), lambda: EchoEnv(name="b")])
        out = [tasks.reset(seed=seed)[0].flat[0]]
        tasks.select(1)
        out.append(tasks.reset()[0].flat[0])
        tasks.select(0)
        out.append(tasks.reset()[0].flat[0])
        return out

    assert offsets(3) == offsets(3)
    assert offsets(3) != offsets(4)


def test_task_set_requires_reset_after_select() -> None:
    tasks = two_task_set()
    tasks.reset(seed=0)
    tasks.select(1)
    with pytest.raises(ResetNeeded):
        tasks.step(0)
    with pytest.raises(ValueError, match=r"task index must be in \[0, 2\), got 2"):
        tasks.select(2)


def test_changes_registry() -> None:
    assert CHANGES.names() == [
        "dynamics",
        "obs_noise",
        "permute_actions",
        "permute_obs",
        "reward_scale",
        "switch",
    ]
    assert isinstance(CHANGES.get("permute_obs")(mode="spatial"), PermuteObs)
    assert (
        repr(CHANGES.get("reward_scale")(scales=[1, -2])) == "RewardScale(scales=(1.0, -2.0), order='cycle')"
    )


# ---------------------------------------------------------------------------------------------
# Invariants.


def make_all_kinds(
    seed: int = 0, on: str = "episode", schedule: Schedule | None = None
) -> list[NonStationary]:
    schedule = schedule or RandomIntervals(1, 6)
    short: dict[str, Any] = dict(episode_len=5)
    tasks = [
        lambda: EchoEnv(shape=(2, 3, 4), **short),
        lambda: EchoEnv(shape=(3, 3, 2), n_actions=6, **short),
    ]
    return [
        NonStationary(
            TaskSet(tasks),
            Switch(),
            schedule,
            on=on,
            seed=seed,
        ),
        NonStationary(EchoEnv(**short), PermuteObs(), schedule, on=on, seed=seed),
        NonStationary(EchoEnv(**short), PermuteObs("spatial"), schedule, on=on, seed=seed),
        NonStationary(EchoEnv(**short), PermuteObs("channels"), schedule, on=on, seed=seed),
        NonStationary(EchoEnv(**short), PermuteActions(), schedule, on=on, seed=seed),
        NonStationary(EchoEnv(**short), RewardScale(), schedule, on=on, seed=seed),
    ]


@pytest.mark.parametrize("on", ["episode", "step"])
@pytest.mark.parametrize("index", range(6))
def test_spaces_fixed_and_obs_inside_them(index: int, on: str) -> None:
    env = make_all_kinds(on=on)[index]
    observation_space, action_space = env.observation_space, env.action_space
    env.action_space.seed(0)
    records = run(env, 60, actions=lambda i: int(env.action_space.sample()))
    assert len({r["task"] for r in records}) >= 2  # the test saw several tasks
    for r in records:
        assert r["obs"] in env.observation_space
        assert isinstance(r["task"], int)
        if "task_id" in r.get("reset_info", {}):
            assert isinstance(r["reset_info"]["task_id"], int)
            assert isinstance(r["reset_info"]["task_switched"], bool)
    assert env.observation_space is observation_space and env.action_space is action_space


# check_env warns about the wrapper itself, and about the cells of the padded two-task set that
# neither task fills (their bounds are [0, 0], exactly what they hold).
@pytest.mark.filterwarnings("ignore:.*is different from the unwrapped version")
@pytest.mark.filterwarnings("ignore:.*maximum and minimum values are equal")
@pytest.mark.parametrize("index", range(6))
def test_check_env_passes(index: int) -> None:
    env = make_all_kinds(schedule=At([1]))[index]
    env.reset(seed=0)
    env.step(env.action_space.sample())  # make the first change due: check_env runs task 1
    check_env(env, skip_render_check=True)
    assert env.task_id == 1


@pytest.mark.filterwarnings("ignore:.*maximum and minimum values are equal")
def test_check_env_passes_on_task_set() -> None:
    check_env(two_task_set(), skip_render_check=True)


# ---------------------------------------------------------------------------------------------
# Determinism and lifetime state.


def trace(env: gym.Env, n_steps: int = 60, seed: int = 0) -> list[tuple]:
    return [
        (r["task"], r["reward"], r["truncated"], r["obs"].tobytes(), r["info"].get("action"))
        for r in run(env, n_steps, seed=seed, actions=lambda i: i % 4)
    ]


@pytest.mark.parametrize("index", range(6))
def test_same_seed_same_sequence(index: int) -> None:
    first, second = make_all_kinds(seed=7)[index], make_all_kinds(seed=7)[index]
    assert trace(first) == trace(second)
    other = make_all_kinds(seed=8)[index]
    assert [t[0] for t in trace(other)] != [t[0] for t in trace(make_all_kinds(seed=7)[index])]


def test_first_reset_seeds_the_task_generator_when_seed_is_none() -> None:
    def build(seed: int | None) -> NonStationary:
        return NonStationary(EchoEnv(episode_len=5), PermuteObs(), RandomIntervals(1, 6), seed=seed)

    assert trace(build(None), seed=11) == trace(build(11), seed=11)
    env = build(None)
    with pytest.raises(RuntimeError, match="no state before the first reset"):
        env.get_state()
    env.reset(seed=11)
    state = env.get_state()
    env.reset(seed=12)  # later seeds reseed the env, never the task generator
    assert env.get_state() == state


def plain(value: Any) -> bool:
    """Whether ``value`` is built from Python scalars, strings, lists and dicts only."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain(v) for v in value)
    return value is None or type(value) in (int, float, bool, str)


@pytest.mark.parametrize("on", ["episode", "step"])
@pytest.mark.parametrize("index", range(6))
def test_get_state_set_state_continues_the_same_sequence(index: int, on: str) -> None:
    original = make_all_kinds(seed=3, on=on)[index]
    run(original, 23)
    state = original.get_state()
    assert plain(state)
    assert state["lifetime_step"] == 23 and state["num_changes"] >= 3
    restored = make_all_kinds(seed=99, on=on)[index]  # another seed: the state must override it
    restored.set_state(pickle.loads(pickle.dumps(state)))
    with pytest.raises(ResetNeeded):
        restored.step(0)
    assert trace(restored, seed=5) == trace(original, seed=5)
    assert restored.get_state() == original.get_state()


@pytest.mark.parametrize("on", ["episode", "step"])
@pytest.mark.parametrize("index", range(6))
def test_pickled_wrapper_continues_mid_episode(index: int, on: str) -> None:
    """The trainer's checkpoints pickle the whole vector env and continue without a reset."""

    def steps(env: gym.Env, n: int) -> list[tuple]:
        out = []
        for i in range(n):
            obs, reward, terminated, truncated, info = env.step(i % 4)
            announced = info.get("task_id")
            out.append((obs.tobytes(), reward, terminated, truncated, announced, info.get("action")))
            if terminated or truncated:
                out.append(env.reset()[1].get("task_id"))
        return out

    original = make_all_kinds(seed=3, on=on)[index]
    run(original, 17)
    copy = pickle.loads(pickle.dumps(original))
    assert steps(copy, 40) == steps(original, 40)
    assert copy.get_state() == original.get_state()


def test_set_state_reports_whether_the_first_reset_switches() -> None:
    original = NonStationary(EchoEnv(), RewardScale(SCALES), Every(3), seed=0)
    run(original, 4)  # change due at 3, episode still running task 0
    restored = NonStationary(EchoEnv(), RewardScale(SCALES), Every(3), seed=0)
    restored.set_state(original.get_state())
    assert restored.reset()[1]["task_switched"] == original.reset()[1]["task_switched"] is True


def good_state() -> dict[str, Any]:
    env = NonStationary(EchoEnv(), PermuteObs(), Every(2), seed=0)
    run(env, 5)
    return env.get_state()


STATE_ERRORS = [
    (lambda s: {k: v for k, v in s.items() if k != "rng"}, "must have keys"),
    (lambda s: {**s, "change": "switch"}, "for change 'switch' cannot be loaded .* for change 'permute_obs'"),
    (lambda s: {**s, "format": 2}, "state of format 2"),
    (lambda s: {**s, "lifetime_step": -1}, "bad counters"),
    (lambda s: {**s, "next_change": 0}, "bad counters"),
    (lambda s: {**s, "params": [0] * 24}, r"permutation of range\(24\)"),
    (lambda s: {**s, "params": list(range(23))}, r"permutation of range\(24\)"),
    (lambda s: {**s, "rng": {"bit_generator": "MT19937"}}, "must be a PCG64 state dict"),
]


@pytest.mark.parametrize("corrupt, message", STATE_ERRORS, ids=[m for _, m in STATE_ERRORS])
def test_set_state_rejects_bad_state(corrupt: Callable[[dict], dict], message: str) -> None:
    env = NonStationary(EchoEnv(), PermuteObs(), Every(2), seed=0)
    with pytest.raises(ValueError, match=message):
        env.set_state(corrupt(good_state()))


# ---------------------------------------------------------------------------------------------
# Vector envs: one wrapper per sub-env, clock_scale = num_envs, the same seed.

# Two sub-envs with episodes of 2 and 3 steps, reward_scale (1, 2, 3), a change every 4 global
# steps (due at vector steps 2, 4, 6, 8). Rows: the reward of each sub-env at vector steps 1..8,
# i.e. the scale of the task each sub-env ran; 0 marks a NEXT_STEP autoreset step.
VECTOR_TABLE = [
    (AutoresetMode.SAME_STEP, "episode", [[1, 1, 2, 2, 3, 3, 1, 1], [1, 1, 1, 2, 2, 2, 1, 1]]),
    (AutoresetMode.SAME_STEP, "step", [[1, 1, 2, 2, 3, 3, 1, 1], [1, 1, 2, 2, 3, 3, 1, 1]]),
    (AutoresetMode.NEXT_STEP, "episode", [[1, 1, 0, 2, 2, 0, 1, 1], [1, 1, 1, 0, 3, 3, 3, 0]]),
    (AutoresetMode.NEXT_STEP, "step", [[1, 1, 0, 2, 0, 3, 0, 1], [1, 1, 0, 2, 0, 3, 0, 1]]),
]


def vector_env(mode: AutoresetMode, on: str, tell_mode: bool = True) -> SyncVectorEnv:
    def sub_env(episode_len: int) -> Callable[[], gym.Env]:
        return lambda: NonStationary(
            EchoEnv(episode_len=episode_len),
            RewardScale(SCALES),
            Every(4),
            on=on,
            seed=42,
            clock_scale=2,
            autoreset_mode=mode if tell_mode else None,
        )

    return SyncVectorEnv([sub_env(2), sub_env(3)], autoreset_mode=mode)


@pytest.mark.parametrize("mode, on, expected", VECTOR_TABLE)
def test_vector_sub_envs_change_at_the_same_global_step(
    mode: AutoresetMode, on: str, expected: list[list[int]]
) -> None:
    envs = vector_env(mode, on)
    envs.reset(seed=0)
    rewards, done = [], []
    for t in range(1, 9):
        _, reward, terminated, truncated, _ = envs.step(np.zeros(2, dtype=np.int64))
        rewards.append(reward.tolist())
        done.append((terminated | truncated).tolist())
        assert envs.get_attr("lifetime_step") == (2 * t, 2 * t)  # every clock is the global step
        assert len(set(envs.call("scheduled_task_id"))) == 1
    assert np.array(rewards).T.tolist() == expected
    if on == "step":  # no sub-env carries an episode across a change
        assert all(all(done[t - 1]) for t in (2, 4, 6, 8))


def test_vector_next_step_clocks_drift_without_autoreset_mode() -> None:
    envs = vector_env(AutoresetMode.NEXT_STEP, "episode", tell_mode=False)
    envs.reset(seed=0)
    lifetimes = []
    for _ in range(8):
        envs.step(np.zeros(2, dtype=np.int64))
        lifetimes.append(envs.get_attr("lifetime_step"))
    assert lifetimes[5] == (8, 10)  # autoreset steps are not counted: the sub-envs disagree


# ---------------------------------------------------------------------------------------------
# Errors, constructor record, docstring.


def error_cases() -> list[tuple[Callable[[], Any], type[Exception], str]]:
    stub, ns = EchoEnv, NonStationary
    frozen_lake, pendulum = (lambda: gym.make("FrozenLake-v1")), (lambda: gym.make("Pendulum-v1"))
    return [
        (lambda: ns(stub(), "permute_obs", NEVER), TypeError, "change must be a Change"),
        (lambda: ns(stub(), PermuteObs(), 100), TypeError, "schedule must be a callable"),
        (lambda: ns(stub(), PermuteObs(), NEVER, on="reset"), ValueError, "on must be 'episode' or 'step'"),
        (
            lambda: ns(stub(), PermuteObs(), NEVER, seed=-1),
            ValueError,
            "seed must be None or an integer >= 0",
        ),
        (lambda: ns(stub(), PermuteObs(), NEVER, seed=1.5), ValueError, "seed must be .*, got 1.5"),
        (
            lambda: ns(stub(), PermuteObs(), NEVER, clock_scale=0),
            ValueError,
            "clock_scale must be an integer >= 1",
        ),
        (
            lambda: ns(stub(), PermuteObs(), NEVER, clock_scale=2.0),
            ValueError,
            "clock_scale must be .*, got 2.0",
        ),
        (
            lambda: ns(stub(), PermuteObs(), NEVER, autoreset_mode="x"),
            ValueError,
            "autoreset_mode must be None or in",
        ),
        (
            lambda: ns(stub(), PermuteObs(), lambda step, rng: step, seed=0),
            ValueError,
            "returned 0 after step 0",
        ),
        (lambda: ns(stub(), Switch(), NEVER), ValueError, "change 'switch' needs a TaskSet env"),
        (lambda: ns(TaskSet([stub]), Switch(), NEVER), ValueError, "change 'switch' needs at least 2 tasks"),
        (
            lambda: Switch("shufle"),
            ValueError,
            "Switch.order must be 'cycle', 'random' or 'shuffle', got 'shufle'",
        ),
        (lambda: PermuteObs("pixels"), ValueError, "PermuteObs.mode must be 'all', 'spatial' or 'channels'"),
        (lambda: PermuteObs(layout="whc"), ValueError, "PermuteObs.layout must be 'chw' or 'hwc', got 'whc'"),
        (
            lambda: ns(stub(shape=(24,)), PermuteObs("spatial"), NEVER),
            ValueError,
            r"3-d chw observation, got \(24,\)",
        ),
        (lambda: ns(frozen_lake(), PermuteObs(), NEVER), ValueError, "needs a Box observation space"),
        (lambda: ns(pendulum(), PermuteActions(), NEVER), ValueError, "needs a Discrete action space"),
        (lambda: ns(stub(n_actions=1), PermuteActions(), NEVER), ValueError, "needs a Discrete action space"),
        (lambda: RewardScale((1.0,)), ValueError, "at least two finite numbers"),
        (lambda: RewardScale((1.0, float("nan"))), ValueError, "at least two finite numbers"),
        (lambda: RewardScale("ab"), ValueError, "at least two finite numbers"),
        (lambda: TaskSet([]), ValueError, "TaskSet needs a non-empty sequence"),
        (lambda: TaskSet([lambda: "CartPole-v1"]), ValueError, "not a gymnasium.Env"),
        (lambda: TaskSet([stub, frozen_lake]), ValueError, "TaskSet pads Box observation spaces only"),
        (
            lambda: TaskSet([stub, lambda: stub(shape=(3, 4))]),
            ValueError,
            "observation spaces of one ndim and dtype",
        ),
        (lambda: TaskSet(["CartPole-v1", "Pendulum-v1"]), ValueError, "TaskSet needs Discrete action spaces"),
        (
            lambda: TaskSet([stub, lambda: stub(start=1)]),
            ValueError,
            "Discrete action spaces with one start >= 0",
        ),
    ]


@pytest.mark.parametrize("case", range(len(error_cases())))
def test_bad_arguments_raise(case: int) -> None:
    build, error, message = error_cases()[case]
    with pytest.raises(error, match=message):
        build()


def test_incompatible_dtype_is_reported_with_every_task() -> None:
    def int_obs() -> EchoEnv:
        env = EchoEnv()
        env.observation_space = Box(0, 10, (2, 3, 4), np.int64)
        return env

    with pytest.raises(
        ValueError, match=r"one ndim and dtype, got EchoEnv: Box.*float32.*, int_obs: Box.*int64"
    ):
        TaskSet([EchoEnv, int_obs])


def test_record_constructor_args_covers_every_argument() -> None:
    """Every __init__ argument but env is passed to RecordConstructorArgs.__init__, by its own name."""
    source = textwrap.dedent(inspect.getsource(NonStationary.__init__))
    init = ast.parse(source).body[0]
    assert isinstance(init, ast.FunctionDef)
    arguments = [a.arg for a in init.args.args + init.args.kwonlyargs][2:]  # drop self, env
    records = [
        node
        for node in ast.walk(init)
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("RecordConstructorArgs.__init__")
    ]
    assert len(records) == 1
    recorded = {kw.arg: ast.unparse(kw.value) for kw in records[0].keywords}
    assert recorded == {name: name for name in arguments}

    env = NonStationary(EchoEnv(), PermuteObs("spatial"), Every(3), on="step", seed=4, clock_scale=2)
    assert env._saved_kwargs == {
        "change": env._saved_kwargs["change"],
        "schedule": Every(3),
        "on": "step",
        "seed": 4,
        "clock_scale": 2,
        "autoreset_mode": None,
    }
    assert (
        repr(env._saved_kwargs["change"]) == "PermuteObs(mode='spatial', layout='chw', first_task='identity')"
    )


def test_docstring_examples_run() -> None:
    results = doctest.testmod(nonstationary, optionflags=doctest.ELLIPSIS)
    assert results.attempted >= 10 and results.failed == 0


# ---------------------------------------------------------------------------------------------
# MinAtar.


class ChannelFirst(gym.ObservationWrapper):
    """(10, 10, C) bool → (C, 10, 10) float32, standing in for plasticrl.envs.make in this test."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        h, w, c = env.observation_space.shape
        self.observation_space = Box(0.0, 1.0, (c, h, w), np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(observation.transpose(2, 0, 1), dtype=np.float32)


def minatar(env_id: str) -> gym.Env:
    import minatar.gym

    if env_id not in gym.registry:
        minatar.gym.register_envs()
    return ChannelFirst(gym.make(env_id))


@pytest.mark.filterwarnings("ignore:.*is out of date")
def test_minatar_switch_pads_channels() -> None:
    tasks = TaskSet(["MinAtar/Breakout-v0", "MinAtar/SpaceInvaders-v0"], make_task=minatar)
    env = NonStationary(tasks, Switch(), Every(50), on="step", seed=0)
    assert env.observation_space.shape == (6, 10, 10) and env.action_space == Discrete(6)
    env.action_space.seed(0)
    records = run(env, 120, actions=lambda i: int(env.action_space.sample()))
    for r in records:
        assert r["obs"].shape == (6, 10, 10) and r["obs"] in env.observation_space
    ids = [r["task"] for r in records]
    assert ids[:50] == [0] * 50 and ids[50:100] == [1] * 50
    breakout = np.stack([r["obs"] for r in records[:50]])
    invaders = np.stack([r["obs"] for r in records[50:100]])
    assert not breakout[:, 4:].any() and breakout[:, :4].any()  # Breakout's 4 channels + padding
    assert invaders[:, 4:].any()  # Space Invaders fills all 6


# ---------------------------------------------------------------------------------------------
# Task announcements (Note [Task announcements]) and a trainer tracking every sub-env from them.


@pytest.mark.parametrize("on", ["episode", "step"])
@pytest.mark.parametrize("index", range(6))
def test_only_resets_and_the_first_step_announce_the_task(index: int, on: str) -> None:
    env = make_all_kinds(on=on)[index]
    records = run(env, 40)  # run() checks every announcement against env.task_id
    assert [i for i, r in enumerate(records) if "task_id" in r["info"]] == [0]
    switches = [r["reset_info"] for r in records if "task_id" in r.get("reset_info", {})]
    assert switches and all(info["task_switched"] is True for info in switches)  # run() checks the rest
    # set_state() announces again on the first step after its reset (the reset info may be dropped)
    restored = make_all_kinds(on=on)[index]
    restored.set_state(env.get_state())
    assert [i for i, r in enumerate(run(restored, 10)) if "task_id" in r["info"]] == [0]


@pytest.mark.parametrize("on", ["episode", "step"])
def test_episode_stats_track_every_sub_env_from_announcements(on: str) -> None:
    """The trainer's EpisodeStats (plasticrl.trainers.session) against the wrappers' own task_id, every
    step."""
    from plasticrl.trainers.session import EpisodeStats, task_switched

    def sub_env(episode_len: int) -> Callable[[], gym.Env]:
        return lambda: NonStationary(
            EchoEnv(episode_len=episode_len), RewardScale(SCALES), Every(6), on=on, seed=1, clock_scale=3
        )

    vector = SyncVectorEnv([sub_env(n) for n in (1, 3, 4)], autoreset_mode=AutoresetMode.SAME_STEP)
    envs = gym.wrappers.vector.RecordEpisodeStatistics(vector)
    stats = EpisodeStats()
    envs.reset(seed=0)  # its infos dropped, as the loops do: the first step announces
    logged, expected_log, episodes = [], [], 0
    for t in range(1, 31):
        running = vector.get_attr("task_id")  # what every sub-env runs during this step
        *_, infos = envs.step(np.zeros(3, dtype=np.int64))
        now = vector.get_attr("task_id")
        if t == 1 or now[0] != running[0]:
            expected_log.append((t, float(now[0])))
        scalars = stats.record(infos)
        assert stats.tasks is not None and stats.tasks.tolist() == list(now)
        assert stats.progress_text() == f"task {now[0]}"
        ended = np.flatnonzero(infos.get("_episode", np.zeros(3, bool))).tolist()
        returns = [s for s in scalars if "charts/episodic_return" in s]
        assert len(returns) == min(len(ended), 1)  # one point per step (Note [One point per step])
        if ended:
            (point,) = returns
            r = infos["episode"]["r"]
            assert point["charts/episodic_return"] == pytest.approx(np.mean([r[i] for i in ended]))
            for task in {running[i] for i in ended}:  # each task's tag: the mean of its episodes
                mine = [r[i] for i in ended if running[i] == task]
                assert point[f"charts/episodic_return/task_{task}"] == pytest.approx(np.mean(mine))
            tagged = {k for k in point if k.startswith("charts/episodic_return/task_")}
            assert tagged == {f"charts/episodic_return/task_{running[i]}" for i in ended}
        episodes += len(ended)
        logged += [(t, s["env/task_id"]) for s in scalars if "env/task_id" in s]
        assert task_switched(infos) == (t > 1 and now[0] != running[0])
    assert logged == expected_log and len(logged) >= 5 and episodes >= 40
    # a checkpoint keeps the tracking; one from before the tracking existed learns it again
    copy = EpisodeStats()
    copy.load_state_dict(stats.state_dict())
    assert copy.tasks is not None and copy.tasks.tolist() == stats.tasks.tolist()
    old = EpisodeStats()
    old.load_state_dict({"recent": [1.0], "task_id": 2})
    assert old.tasks is None and old.progress_text() == "task 2"


# ---------------------------------------------------------------------------------------------
# Folded observation gathers (Note [Folded observation gather]) and the step fast path.


def minatar_folding(env_id: str = "MinAtar/Breakout-v0") -> gym.Env:
    """The trainer's MinAtar env (plasticrl.envs.make), which implements ObservationGather."""
    from plasticrl.envs.make import EnvConfig, make_env

    return make_env(EnvConfig(id=env_id))


@pytest.mark.filterwarnings("ignore:.*is out of date")
@pytest.mark.parametrize("on", ["episode", "step"])
@pytest.mark.parametrize("mode", ["all", "spatial", "channels"])
def test_folded_permutation_equals_the_generic_path(mode: str, on: str) -> None:
    def build(make: Callable[[str], gym.Env]) -> NonStationary:
        return NonStationary(make("MinAtar/Breakout-v0"), PermuteObs(mode), Every(40), on=on, seed=2)

    folded, generic = build(minatar_folding), build(minatar)
    assert nonstationary.supports_gather(folded.env) and not nonstationary.supports_gather(generic.env)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 6, 300).tolist()
    traces = [run(env, 300, seed=4, actions=actions.__getitem__) for env in (folded, generic)]
    assert folded.get_state()["num_changes"] == 7 and len({r["task"] for r in traces[0]}) >= 5
    for a, b in zip(*traces, strict=True):
        assert a["obs"].tobytes() == b["obs"].tobytes() and a["obs"].dtype == np.float32
        assert (a["reward"], a["terminated"], a["truncated"], a["task"]) == (
            b["reward"],
            b["terminated"],
            b["truncated"],
            b["task"],
        )
        assert a.get("reset_info", {}).keys() == b.get("reset_info", {}).keys()
    # The folded wrapper does no per-step gather of its own: the env below returns permuted frames.
    assert folded._obs_index is None and folded._direct and folded.env._source is not None
    assert generic._obs_index is not None and not generic._direct


@pytest.mark.filterwarnings("ignore:.*is out of date")
def test_folded_permutation_survives_pickling_and_state() -> None:
    def build(make: Callable[[str], gym.Env] = minatar_folding, seed: int = 2) -> NonStationary:
        return NonStationary(make("MinAtar/Breakout-v0"), PermuteObs(), Every(25), on="step", seed=seed)

    def obs_stream(env: gym.Env, n: int) -> list[bytes]:
        out = []
        for i in range(n):
            obs, _, terminated, truncated, _ = env.step(i % 6)
            out.append(obs.tobytes())
            if terminated or truncated:
                out.append(env.reset()[0].tobytes())
        return out

    original = build()
    run(original, 60, seed=1)  # two changes made, mid-episode of the third task
    copy = pickle.loads(pickle.dumps(original))
    assert copy.env._source is not None and copy._forward.__self__ is copy.env
    assert obs_stream(copy, 80) == obs_stream(original, 80)  # a change at 75 included
    # set_state into fresh envs, folded and generic: the same task, frames and changes after reset
    # (not the original's frames: a MinAtar game keeps some state across resets, e.g. sticky actions)
    state = original.get_state()
    restored, generic = build(seed=9), build(minatar, seed=9)
    for env in (restored, generic):
        env.set_state(state)
    frames = [env.reset(seed=5)[0].tobytes() for env in (original, restored, generic)]
    assert frames[0] == frames[1] == frames[2]
    assert obs_stream(restored, 60) == obs_stream(generic, 60)  # changes at 150, 175, 200 included
    assert restored.get_state() == generic.get_state() and restored.get_state()["num_changes"] == 8


@pytest.mark.filterwarnings("ignore:.*is out of date")
@pytest.mark.filterwarnings("ignore:.*maximum and minimum values are equal")
@pytest.mark.filterwarnings("ignore:.*is different from the unwrapped version")
def test_task_set_folds_minatar_padding_and_switch_steps_the_task_directly() -> None:
    games = ["MinAtar/Breakout-v0", "MinAtar/SpaceInvaders-v0"]
    folded_set, generic_set = TaskSet(games, make_task=minatar_folding), TaskSet(games, make_task=minatar)
    # Breakout pads itself to Space Invaders' 6 channels (in its conversion buffer: no gather)
    assert folded_set._pads == [None, None] and folded_set.tasks[0].observation_space.shape == (6, 10, 10)
    assert folded_set.tasks[0]._source is None and folded_set.tasks[0]._planes.shape == (6, 10, 10)
    assert generic_set._pads[0] is not None
    folded = NonStationary(folded_set, Switch(), Every(50), on="step", seed=0)
    generic = NonStationary(generic_set, Switch(), Every(50), on="step", seed=0)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 6, 130).tolist()
    traces = [run(env, 130, seed=3, actions=actions.__getitem__) for env in (folded, generic)]
    for a, b in zip(*traces, strict=True):
        assert a["obs"].tobytes() == b["obs"].tobytes()
        assert (a["reward"], a["truncated"], a["task"]) == (b["reward"], b["truncated"], b["task"])
    assert [r["task"] for r in traces[0]][::50] == [0, 1, 0]
    # switch steps the active task itself; through TaskSet.step where the set must pad
    assert folded._forward.__self__ is folded_set.tasks[0] and folded._direct
    assert generic._forward == generic_set.step
    check_env(folded, skip_render_check=True)
    # a TaskSet under another wrapper is stepped through that wrapper
    wrapped = NonStationary(gym.wrappers.TimeLimit(two_task_set(), 5), Switch(), Every(3), on="step", seed=0)
    run(wrapped, 7)
    assert wrapped._forward == wrapped.env.step


def test_switch_steps_a_task_that_needs_nothing_from_the_set_directly() -> None:
    same = [lambda: EchoEnv(name="a"), lambda: EchoEnv(name="b")]
    env = NonStationary(TaskSet(same), Switch(), Every(3), on="step", seed=0)
    records = run(env, 7, actions=lambda i: i % 4)
    assert [r["info"]["name"] for r in records] == ["a"] * 3 + ["b"] * 3 + ["a"]
    assert env._forward.__self__ is env.env.tasks[0]
    copy = pickle.loads(pickle.dumps(env))
    assert copy._forward.__self__ is copy.env.tasks[0]


# What NonStationary holds since Note [Step fast path]: a checkpoint from before has none of it.
NEW_ATTRIBUTES = ("_direct", "_quiet_reset", "_announce", "_next_event", "_forward", "_folded", "_gatherer")


@pytest.mark.parametrize("index", range(6))
def test_a_wrapper_pickled_before_the_fast_path_continues_on_the_generic_path(index: int) -> None:
    """Checkpoints written before Note [Step fast path] unpickle and continue identically."""
    original = make_all_kinds(seed=3, on="step")[index]
    run(original, 17)
    state = pickle.loads(pickle.dumps(original)).__dict__
    for key in NEW_ATTRIBUTES:
        del state[key]
    old = NonStationary.__new__(NonStationary)
    old.__setstate__(state)
    expected = [(r["obs"].tobytes(), r["reward"], r["truncated"]) for r in run(original, 30, seed=8)]
    records = run(old, 30, seed=8)
    assert [(r["obs"].tobytes(), r["reward"], r["truncated"]) for r in records] == expected
    assert old.get_state() == original.get_state()


def test_gather_index_checks() -> None:
    assert nonstationary.check_gather_index([0, 3, 2], 3).dtype == np.intp
    for bad in ([0, 4], [-1], [0.5], []):
        with pytest.raises(ValueError, match=r"entries in \[0, 3\]"):
            nonstationary.check_gather_index(bad, 3)
    obs = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
    out = nonstationary.gather(obs, np.array([[6, 5], [0, 6]]))
    assert out.dtype == np.float32 and out.tolist() == [[0.0, 6.0], [1.0, 0.0]]


@pytest.mark.filterwarnings("ignore:.*is out of date")
def test_a_minatar_wrapper_pickled_before_folding_folds_from_its_next_change() -> None:
    def build() -> NonStationary:
        return NonStationary(minatar_folding(), PermuteObs(), Every(20), on="step", seed=2)

    original = build()
    run(original, 30, seed=1)
    # What a checkpoint written before folding holds: the permutation applied by the wrapper.
    old_copy = pickle.loads(pickle.dumps(original))
    state = old_copy.__dict__
    state["_obs_index"], folded = state["_folded"], state["_folded"]
    state["env"].set_observation_gather(None)
    for key in NEW_ATTRIBUTES:
        del state[key]
    old = NonStationary.__new__(NonStationary)
    old.__setstate__(state)
    assert old._obs_index is folded and old.env._source is None
    expected = [(r["obs"].tobytes(), r["reward"], r["truncated"]) for r in run(original, 40, seed=8)]
    assert [(r["obs"].tobytes(), r["reward"], r["truncated"]) for r in run(old, 40, seed=8)] == expected
    assert old._obs_index is None and old.env._source is not None  # folded since the change at 40
