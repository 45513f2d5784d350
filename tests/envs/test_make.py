"""Env construction: ids, aliases, MinAtar, ``module:Factory``, autoreset and pickling (envs/make.py)."""

from __future__ import annotations

import copy as copy_module
import pickle
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.spaces import Box
from plasticrl.envs.make import (
    ENV_ALIASES,
    MINATAR_TIME_LIMIT,
    EnvConfig,
    make_env,
    resolve_env_id,
)
from plasticrl.envs.nonstationary import gather, supports_gather
from plasticrl.envs.vector import final_observations, make_vector_env


class TinyEnv(gym.Env[np.ndarray, int]):
    """Observation ``[t, episode]``; terminates after ``length`` steps (``length + seed`` if seeded).

    The reset observation is ``[0, episode]`` and the terminal one ``[length, episode]``, so a
    stored transition shows whether its next observation is the terminal or the reset one.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, length: int = 3, reward: float = 1.0) -> None:
        self.length = length
        self.reward = reward
        self.observation_space = gym.spaces.Box(0.0, 1000.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0
        self.episode = -1

    def _obs(self) -> np.ndarray:
        return np.array([self.t, self.episode], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.length += seed  # sub-env i of a vector env gets seed + i: different lengths
        self.t = 0
        self.episode += 1
        return self._obs(), {}

    def step(self, action: int):
        self.t += 1
        return self._obs(), self.reward * (1 + action), self.t >= self.length, False, {}


def tiny_factory(**kwargs: Any) -> TinyEnv:
    return TinyEnv(**kwargs)


def not_an_env(**kwargs: Any) -> str:
    return "nope"


NOT_CALLABLE = 3

MINATAR_CHANNELS = {"asterix": 4, "breakout": 4, "freeway": 7, "seaquest": 10, "space_invaders": 6}


# ---------------------------------------------------------------------------------------------
# ids and aliases


def test_aliases_cover_every_minatar_game() -> None:
    assert ENV_ALIASES == {
        "asterix": "MinAtar/Asterix-v0",
        "breakout": "MinAtar/Breakout-v0",
        "freeway": "MinAtar/Freeway-v0",
        "seaquest": "MinAtar/Seaquest-v0",
        "space_invaders": "MinAtar/SpaceInvaders-v0",
    }


@pytest.mark.parametrize(
    ("given", "resolved"),
    [
        ("breakout", "MinAtar/Breakout-v0"),
        ("MinAtar/Breakout-v0", "MinAtar/Breakout-v0"),
        ("MinAtar/Freeway-v1", "MinAtar/Freeway-v1"),
        ("CartPole-v1", "CartPole-v1"),
        ("tests.envs.test_make:TinyEnv", "tests.envs.test_make:TinyEnv"),
    ],
)
def test_resolve_env_id(given: str, resolved: str) -> None:
    assert resolve_env_id(given) == resolved


@pytest.mark.parametrize(
    ("bad", "suggestion"),
    [
        ("CartPol-v1", "'CartPole-v1'"),
        ("brekout", "'breakout'"),
        ("MinAtar/Breakot-v0", "'MinAtar/Breakout-v0'"),
    ],
)
def test_unknown_ids_suggest_close_matches(bad: str, suggestion: str) -> None:
    with pytest.raises(ValueError) as info:
        resolve_env_id(bad)
    msg = str(info.value)
    assert msg.startswith(f"unknown env id {bad!r}; did you mean ")
    assert suggestion in msg
    assert "package.module:ClassOrFactory" in msg and "\n" not in msg


def test_unknown_id_without_close_match() -> None:
    with pytest.raises(ValueError, match=r"unknown env id 'zzzzqqqq'; use a gymnasium id"):
        make_env(EnvConfig(id="zzzzqqqq"))


# ---------------------------------------------------------------------------------------------
# MinAtar


@pytest.mark.parametrize("game", sorted(MINATAR_CHANNELS))
def test_minatar_spaces_and_default_time_limit(game: str) -> None:
    channels = MINATAR_CHANNELS[game]
    for env_id in (game, ENV_ALIASES[game]):
        env = make_env(EnvConfig(id=env_id))
        assert env.observation_space == gym.spaces.Box(0.0, 1.0, (channels, 10, 10), np.float32)
        assert env.action_space == gym.spaces.Discrete(6)
        assert env.spec is not None and env.spec.max_episode_steps == MINATAR_TIME_LIMIT
        obs, _ = env.reset(seed=0)
        assert obs.shape == (channels, 10, 10) and obs.dtype == np.float32
        assert set(np.unique(obs)) <= {0.0, 1.0}
        # channel-first view of the game's (10, 10, C) bool state
        np.testing.assert_array_equal(obs, env.unwrapped.game.state().transpose(2, 0, 1).astype(np.float32))
        env.close()


def gather_indices(channels: int) -> dict[str, np.ndarray]:
    """Gathers over a (channels, 10, 10) observation: a permutation, padding, and both at once."""
    size = channels * 100
    rng = np.random.default_rng(0)
    padded = np.full((channels + 2, 10, 10), size)
    padded[:channels] = np.arange(size).reshape(channels, 10, 10)
    mixed = rng.integers(0, size + 1, (channels + 3, 10, 10))  # repeats and zero cells
    not_only_padding = padded.copy()
    not_only_padding[-1, 0, 0] = 0  # a padded cell repeats cell 0: a general gather
    return {
        "permutation": rng.permutation(size).reshape(channels, 10, 10),
        "padding": padded,
        "mixed": mixed,
        "not_only_padding": not_only_padding,
    }


@pytest.mark.parametrize("kind", ["permutation", "padding", "mixed", "not_only_padding"])
def test_minatar_observation_gather_is_the_reference_gather(kind: str) -> None:
    plain, gathering = make_env(EnvConfig(id="space_invaders")), make_env(EnvConfig(id="space_invaders"))
    assert supports_gather(gathering) and not supports_gather(gathering.env)  # the wrapper itself only
    index = gather_indices(6)[kind]
    gathering.set_observation_gather(index)
    # padding is zero channels in the conversion's buffer; anything else is an indexed gather
    assert (gathering._source is None) == (kind == "padding")
    space = plain.observation_space
    assert gathering.observation_space == Box(gather(space.low, index), gather(space.high, index))
    pairs = [(plain.reset(seed=3)[0], gathering.reset(seed=3)[0])]
    rng = np.random.default_rng(1)
    for action in rng.integers(0, 6, 200).tolist():
        (obs, *rest), (gathered, *gathered_rest) = plain.step(action), gathering.step(action)
        assert rest == gathered_rest
        pairs.append((obs, gathered))
        if rest[1] or rest[2]:
            pairs.append((plain.reset()[0], gathering.reset()[0]))
    for obs, gathered in pairs:
        expected = gather(obs, index)
        assert gathered in gathering.observation_space and gathered.flags.c_contiguous
        assert gathered.tobytes() == expected.tobytes() and gathered.shape == index.shape
    assert len({o.tobytes() for o, _ in pairs}) > 10  # the frames varied
    copy = pickle.loads(pickle.dumps(gathering))  # the gather is state of the env
    expected = gather(plain.step(0)[0], index).tobytes()
    assert copy.step(0)[0].tobytes() == expected == gathering.step(0)[0].tobytes()
    deep = copy_module.deepcopy(gathering)  # _frame must stay a view of the copy's own buffer
    expected = gather(plain.step(2)[0], index).tobytes()
    assert deep.step(2)[0].tobytes() == expected == gathering.step(2)[0].tobytes()
    gathering.set_observation_gather(None)
    assert gathering.step(1)[0].tobytes() == plain.step(1)[0].tobytes()
    assert gathering.observation_space == plain.observation_space


def test_minatar_observation_converts_every_frame_and_copies_convert_alike() -> None:
    """The plain conversion (through a reused buffer) returns fresh arrays, copies included."""
    env = make_env(EnvConfig(id="seaquest"))
    env.reset(seed=0)
    copies = [env, pickle.loads(pickle.dumps(env)), copy_module.deepcopy(env)]
    frames: list[list[np.ndarray]] = [[], [], []]
    for action in np.random.default_rng(0).integers(0, 6, 150).tolist():
        for out, e in zip(frames, copies, strict=True):
            obs, _, terminated, truncated, _ = e.step(action)
            state = e.unwrapped.game.state().transpose(2, 0, 1).astype(np.float32)
            assert obs.flags.c_contiguous and obs.flags.owndata and obs.tobytes() == state.tobytes()
            out.append(obs)
            if terminated or truncated:
                e.reset()
    # each observation kept its own frame (nothing aliases the buffer), and the frames varied
    assert [o.tobytes() for o in frames[0]] == [o.tobytes() for o in frames[1]]
    assert [o.tobytes() for o in frames[0]] == [o.tobytes() for o in frames[2]]
    assert len({o.tobytes() for o in frames[0]}) > 20


def test_minatar_observation_pickled_before_gathers_existed_gathers() -> None:
    env, plain = make_env(EnvConfig(id="breakout")), make_env(EnvConfig(id="breakout"))
    state = pickle.loads(pickle.dumps(env)).__dict__
    # what a checkpoint written before gathers (and the conversion buffer) holds
    for name in ("_plain_space", "_planes", "_planes_in"):
        del state[name]
    old = type(env).__new__(type(env))
    old.__setstate__(state)
    assert old.reset(seed=1)[0].tobytes() == plain.reset(seed=1)[0].tobytes()
    index = np.arange(400)[::-1].reshape(4, 10, 10)
    old.set_observation_gather(index)
    assert old.reset(seed=1)[0].tobytes() == gather(plain.reset(seed=1)[0], index).tobytes()
    old.set_observation_gather(None)
    assert old.observation_space == plain.observation_space


def test_minatar_observation_gather_rejects_bad_indices() -> None:
    env = make_env(EnvConfig(id="breakout"))
    for bad in (np.array([0, 401]), np.array([-1, 0]), np.array([0.0, 1.0]), np.array([], dtype=int)):
        with pytest.raises(ValueError, match=r"entries in \[0, 400\] \(400 picks a zero cell\)"):
            env.set_observation_gather(bad)


def test_minatar_time_limit_from_config() -> None:
    env = make_env(EnvConfig(id="freeway", max_episode_steps=5))  # Freeway never terminates early
    assert env.spec is not None and env.spec.max_episode_steps == 5
    env.reset(seed=0)
    flags = [env.step(0)[2:4] for _ in range(5)]
    assert flags == [(False, False)] * 4 + [(False, True)]  # truncated, not terminated, at step 5


def test_minatar_kwargs_pass_through() -> None:
    assert make_env(EnvConfig(id="breakout")).unwrapped.game.sticky_action_prob == 0.1  # MinAtar's default
    env = make_env(EnvConfig(id="breakout", kwargs={"sticky_action_prob": 0.0}))
    assert env.unwrapped.game.sticky_action_prob == 0.0
    env = make_env(EnvConfig(id="asterix", kwargs={"sticky_action_prob": 0.25, "difficulty_ramping": False}))
    assert env.unwrapped.game.sticky_action_prob == 0.25
    assert env.unwrapped.game.env.ramping is False


def test_rejected_kwargs_raise_value_error() -> None:
    with pytest.raises(ValueError, match=r"env.kwargs \{'bogus': 1\} rejected by 'MinAtar/Breakout-v0'"):
        make_env(EnvConfig(id="breakout", kwargs={"bogus": 1}))


def test_gymnasium_id_with_time_limit() -> None:
    env = make_env(EnvConfig(id="CartPole-v1"))
    assert env.spec.max_episode_steps == 500
    env = make_env(EnvConfig(id="CartPole-v1", max_episode_steps=4))
    assert env.spec.max_episode_steps == 4


# ---------------------------------------------------------------------------------------------
# module:Factory


@pytest.mark.parametrize("spec", ["tests.envs.test_make:TinyEnv", "tests.envs.test_make:tiny_factory"])
def test_module_factory_env(spec: str) -> None:
    env = make_env(EnvConfig(id=spec, kwargs={"length": 2, "reward": 0.5}))
    assert isinstance(env, TinyEnv)
    obs, _ = env.reset()
    assert obs.tolist() == [0.0, 0.0]
    assert env.step(1)[1:3] == (1.0, False)
    assert env.step(0)[1:3] == (0.5, True)


def test_module_factory_env_with_time_limit() -> None:
    env = make_env(EnvConfig(id="tests.envs.test_make:TinyEnv", kwargs={"length": 100}, max_episode_steps=2))
    assert isinstance(env, gym.wrappers.TimeLimit)
    env.reset()
    assert env.step(0)[2:4] == (False, False)
    assert env.step(0)[2:4] == (False, True)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.envs.test_make:not_an_env", "returned str, not a gymnasium.Env"),
        ("tests.envs.test_make:NOT_CALLABLE", "is not callable"),
        ("tests.envs.test_make:Missing", "has no attribute 'Missing'"),
        ("tests.envs.no_such_module:Env", "cannot import module"),
    ],
)
def test_bad_module_factories(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_env(EnvConfig(id=spec))


# ---------------------------------------------------------------------------------------------
# Vector envs: seeding, autoreset, pickling


def rollout(envs: gym.vector.VectorEnv, actions: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    out = []
    for a in actions:
        obs, rew, term, trunc, _ = envs.step(a)
        out.append((obs.copy(), rew.copy(), term.copy(), trunc.copy()))
    return out


def assert_same(a: list[tuple[np.ndarray, ...]], b: list[tuple[np.ndarray, ...]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            np.testing.assert_array_equal(u, v)


def test_vector_env_spaces_and_autoreset_mode() -> None:
    envs = make_vector_env(EnvConfig(id="breakout", num_envs=3), seed=0)
    assert envs.num_envs == 3
    assert envs.single_observation_space == gym.spaces.Box(0.0, 1.0, (4, 10, 10), np.float32)
    assert envs.observation_space.shape == (3, 4, 10, 10)
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    envs.close()


def test_same_seed_same_observation_stream_and_other_seed_differs() -> None:
    cfg = EnvConfig(id="breakout", num_envs=2)
    actions = np.random.default_rng(0).integers(0, 6, (150, 2))
    streams = []
    for seed in (4, 4, 5):
        envs = make_vector_env(cfg, seed)
        obs, _ = envs.reset(seed=seed)
        streams.append([(obs.copy(),)] + [(o,) for o, *_ in rollout(envs, actions)])
        envs.close()
    assert_same(streams[0], streams[1])
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(streams[0], streams[2], strict=True))


def test_action_spaces_are_seeded_per_sub_env() -> None:
    envs = make_vector_env(EnvConfig(id="breakout", num_envs=2), seed=10)
    samples = [[sub.action_space.sample() for _ in range(20)] for sub in envs.unwrapped.envs]
    expected = []
    for i in range(2):
        space = gym.spaces.Discrete(6)
        space.seed(10 + i)
        expected.append([space.sample() for _ in range(20)])
    assert samples == expected


def test_final_observations_unit() -> None:
    next_obs = np.array([[0.0], [5.0], [0.0]])
    infos = {"final_obs": np.array([np.array([9.0]), None, np.array([7.0])], dtype=object)}
    done = np.array([True, False, True])
    real = final_observations(next_obs, infos, done)
    assert real.tolist() == [[9.0], [5.0], [7.0]]
    assert next_obs.tolist() == [[0.0], [5.0], [0.0]]  # not modified in place
    none_done = np.zeros(3, bool)
    assert final_observations(next_obs, {}, none_done) is next_obs


def test_final_observations_under_same_step_autoreset() -> None:
    from plasticrl.agents.buffers import ReplayBuffer

    envs = make_vector_env(EnvConfig(id="tests.envs.test_make:TinyEnv", num_envs=2), seed=0)
    obs, _ = envs.reset(seed=0)  # sub-env 0: episodes of 3 steps, sub-env 1: of 4 steps
    buffer = ReplayBuffer(100, envs.single_observation_space)
    assert buffer.storage == "float32"
    for _ in range(12):
        next_obs, rewards, term, trunc, infos = envs.step(np.zeros(2, np.int64))
        done = term | trunc
        real = final_observations(next_obs, infos, done)
        for i in np.flatnonzero(done):
            assert next_obs[i][0] == 0.0  # already the reset observation of the next episode
        buffer.add(obs, real, np.zeros(2, np.int64), rewards, term)
        obs = next_obs
    batch = buffer.get(np.arange(len(buffer)))
    t, ep = batch.obs[:, 0], batch.obs[:, 1]
    t2, ep2 = batch.next_obs[:, 0], batch.next_obs[:, 1]
    # every stored transition is a real one: t → t + 1 in the same episode, never t → 0 (the reset obs)
    assert (t2 == t + 1).all() and (ep2 == ep).all()
    lengths = np.tile([3.0, 4.0], 12)
    assert batch.terminated.tolist() == (t2.numpy() == lengths).astype(float).tolist()
    assert batch.terminated.sum().item() == 12 // 3 + 12 // 4
    envs.close()


def test_episode_statistics_count_every_step_under_same_step_autoreset() -> None:
    envs = make_vector_env(EnvConfig(id="tests.envs.test_make:TinyEnv", num_envs=1), seed=0)
    envs.reset(seed=0)
    returns, lengths = [], []
    for _ in range(9):
        *_, infos = envs.step(np.array([1]))
        if "episode" in infos:
            returns += infos["episode"]["r"][infos["_episode"]].tolist()
            lengths += infos["episode"]["l"][infos["_episode"]].tolist()
    assert lengths == [3, 3, 3]
    assert returns == [6.0, 6.0, 6.0]  # reward 2 per step (action 1), the first step of each episode included


@pytest.mark.parametrize("env_id", ["breakout", "tests.envs.test_make:TinyEnv", "CartPole-v1"])
def test_vector_env_pickles_and_continues_identically(env_id: str) -> None:
    envs = make_vector_env(EnvConfig(id=env_id, num_envs=2), seed=1)
    envs.reset(seed=1)
    n_actions = int(envs.single_action_space.n)
    rng = np.random.default_rng(0)
    rollout(envs, rng.integers(0, n_actions, (30, 2)))
    copy = pickle.loads(pickle.dumps(envs))
    actions = rng.integers(0, n_actions, (100, 2))
    assert_same(rollout(envs, actions), rollout(copy, actions))
    # the episode statistics wrapper continued too
    np.testing.assert_array_equal(envs.episode_returns, copy.episode_returns)
    np.testing.assert_array_equal(envs.episode_lengths, copy.episode_lengths)
    envs.close()
    copy.close()
