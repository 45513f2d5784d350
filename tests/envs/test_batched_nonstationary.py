"""The batched MinAtar under non-stationarity: the sub-envs' task sequence, applied to every env at once."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
import torch
from plasticrl.envs.batched_minatar import BatchedMinAtar
from plasticrl.envs.batched_minatar.nonstationary import BatchedNonStationary
from plasticrl.envs.gather import gather
from plasticrl.envs.make import EnvConfig, NonStationaryConfig
from plasticrl.envs.vector import make_vector_env, task_state

PROTOCOL = {
    "kind": ("switch", "permute_obs"),
    "every": 400,
    "on": "step",
    "tasks": ("breakout", "asterix", "space_invaders", "freeway"),
    "pad_to": (10, 10, 10),
    "options": {
        "switch": {"order": "shuffle", "first_cycle": "shuffled"},
        "permute_obs": {"mode": "channels", "first_task": "random"},
    },
}
ANNOUNCED = ("task_id", "task_switched", "game")


def _configs(num_envs: int, vector: str, **ns: object) -> tuple[EnvConfig, NonStationaryConfig]:
    env = EnvConfig(id="breakout", num_envs=num_envs, vector=vector)  # type: ignore[arg-type]
    return env, NonStationaryConfig(**{**PROTOCOL, **ns})  # type: ignore[arg-type]


def _make(seed: int, num_envs: int, vector: str, **ns: object) -> gym.vector.VectorEnv:
    env_cfg, ns_cfg = _configs(num_envs, vector, **ns)
    return make_vector_env(env_cfg, seed, ns_cfg)


def _news(infos: dict) -> dict:
    """Sub-env 0's announcements in one step's infos (what the loops read)."""
    return {k: int(infos[k][0]) for k in ANNOUNCED if k in infos and infos[f"_{k}"][0]}


def test_task_sequence_equals_the_sync_vector_env() -> None:
    """Same seed: the same tasks, games and permutations at the same steps as NonStationary sub-envs."""
    n, seed = 8, 26
    batched = _make(seed, n, "batched")
    sync = _make(seed, n, "sync")
    info_b, info_s = batched.reset(seed=seed)[1], sync.reset(seed=seed)[1]
    assert _news(info_b) == _news(info_s) == {"task_id": 0, "task_switched": 0, "game": _news(info_s)["game"]}
    rng = np.random.default_rng(0)
    changes = 0
    for step in range(1, 260):  # 2080 env steps: changes at 400, 800, 1200, 1600, 2000
        actions = rng.integers(6, size=n)
        _, _, term_b, trunc_b, info_b = batched.step(actions)
        _, _, term_s, trunc_s, info_s = sync.step(actions)
        assert _news(info_b) == _news(info_s), step
        if step * n % 400 == 0:  # every episode ends at a change, in both
            changes += 1
            assert (term_b | trunc_b).all() and (term_s | trunc_s).all()
            assert _news(info_b)["task_switched"] == 1
    assert changes == 5
    assert task_state(batched) == task_state(sync)  # the lifetime state a checkpoint or evaluation reads


def test_observations_actions_and_rewards_follow_the_clock() -> None:
    """The batched env returns the plain game through the clock's gather, action table and reward scale."""
    n, seed = 6, 3
    env_cfg = EnvConfig(id="asterix", num_envs=n, vector="batched")  # type: ignore[arg-type]
    ns = NonStationaryConfig(
        kind=("permute_obs", "permute_actions", "reward_scale"),  # type: ignore[arg-type]
        every=600,
        on="step",
        options={"permute_obs": {"first_task": "random"}, "reward_scale": {"scales": [2.0, -1.0]}},
    )
    envs = make_vector_env(env_cfg, seed, ns).env  # inside the episode statistics
    assert isinstance(envs, BatchedNonStationary)
    plain = BatchedMinAtar("asterix", n, seed=seed)
    obs, _ = envs.reset(seed=seed)
    plain_obs, _ = plain.reset(seed=seed)
    rng = np.random.default_rng(1)
    for task in range(2):
        index, lut, scale = envs.clock.transforms[:3]
        assert index is not None and (lut is not None) == (task == 1)
        table = np.arange(6) if lut is None else np.asarray(lut)
        for _ in range(99):  # 594 env steps: within the task
            np.testing.assert_array_equal(obs, np.stack([gather(o, index) for o in plain_obs]))
            actions = rng.integers(6, size=n)
            obs, reward, term, trunc, _ = envs.step(actions)
            plain_obs, plain_reward, plain_term, plain_trunc, _ = plain.step(table[actions])
            np.testing.assert_array_equal(reward, (1.0 if scale is None else scale) * plain_reward)
            np.testing.assert_array_equal(term, plain_term)
            np.testing.assert_array_equal(trunc, plain_trunc)
        obs, _, term, trunc, infos = envs.step(np.zeros(n, dtype=np.int64))  # step 100: the change
        assert (term | trunc).all() and infos["task_switched"].all()
        new = envs.clock.transforms
        assert not np.array_equal(new.obs_index, index) and new.reward_scale != scale
        plain = pickle.loads(pickle.dumps(envs.base))  # the games as they are now, without the task
        plain.set_observation_gather(None)
        plain.set_action_table(None)
        plain_obs = plain.raw_observation().numpy().transpose(0, 3, 1, 2).astype(np.float32)  # (N, C, 10, 10)


def test_pickle_continues_exactly() -> None:
    """A checkpoint (a pickle of the vector env) continues the games and the schedule exactly."""
    envs = _make(5, 4, "batched", every=200)
    envs.reset(seed=5)
    rng = np.random.default_rng(2)
    for _ in range(30):
        envs.step(rng.integers(6, size=4))
    clone = pickle.loads(pickle.dumps(envs))
    for _ in range(120):  # across several changes
        actions = rng.integers(6, size=4)
        a, b = envs.step(actions), clone.step(actions)
        for x, y in zip(a[:4], b[:4], strict=True):
            np.testing.assert_array_equal(x, y)
        assert _news(a[4]) == _news(b[4])


def test_tensors_mode_keeps_tensors() -> None:
    env_cfg, ns = _configs(4, "batched", every=80)
    env_cfg = EnvConfig(id="breakout", num_envs=4, vector="batched", kwargs={"tensors": True})  # type: ignore[arg-type]
    envs = make_vector_env(env_cfg, 0, ns)
    obs, _ = envs.reset(seed=0)
    assert torch.is_tensor(obs) and obs.shape == (4, 10, 10, 10)
    for _ in range(20):
        obs, reward, term, trunc, infos = envs.step(torch.zeros(4, dtype=torch.int64))
        assert torch.is_tensor(obs) and torch.is_tensor(reward) and torch.is_tensor(term)
    assert (term | trunc).all() and infos["_episode"].all()  # step 20 = 80 env steps: the change


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"on": "episode"}, "nonstationary.on=step"), ({"kind": ("obs_noise",), "tasks": ()}, "obs_noise")],
)
def test_refuses_what_cannot_be_batched(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _make(0, 2, "batched", **overrides)


@pytest.mark.parametrize("kind", [None, ("switch", "permute_obs")])
def test_vector_env_contract(kind: tuple[str, ...] | None) -> None:
    """What gymnasium's env checker asks of an env, asked of the vector env (it has no vector checker)."""
    n = 5
    env_cfg, ns = _configs(n, "batched", every=100)
    envs = make_vector_env(env_cfg, 7, ns if kind else None)
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    assert envs.num_envs == n and envs.observation_space.shape == (n, *envs.single_observation_space.shape)
    obs, info = envs.reset(seed=7)
    again, _ = envs.reset(seed=7)
    np.testing.assert_array_equal(obs, again)  # reset(seed) is deterministic
    assert envs.observation_space.contains(obs) and isinstance(info, dict)
    envs.action_space.seed(0)
    for _ in range(60):
        obs, reward, term, trunc, infos = envs.step(envs.action_space.sample())
        assert envs.observation_space.contains(obs)
        assert reward.shape == term.shape == trunc.shape == (n,)
        assert reward.dtype == np.float64 and term.dtype == trunc.dtype == np.bool_
        if "_final_obs" in infos:
            done = infos["_final_obs"]
            np.testing.assert_array_equal(done, term | trunc)
            assert envs.single_observation_space.contains(infos["final_obs"][np.flatnonzero(done)[0]])
        if "_episode" in infos:
            assert (infos["episode"]["l"][infos["_episode"]] > 0).all()


@pytest.mark.parametrize("mode", ["channels", "spatial", "all"])
def test_plane_reordering_equals_the_generic_gather(mode: str) -> None:
    """A channel permutation with padding is built by reordering planes; it equals its gather."""
    from plasticrl.envs.changes import fresh_permutation

    plain = BatchedMinAtar("space_invaders", 4, channels=10, seed=1)
    permuted = BatchedMinAtar("space_invaders", 4, channels=10, seed=1)
    rng = np.random.default_rng(0)
    grid = np.arange(1000).reshape(10, 10, 10)
    if mode == "channels":
        index = grid[fresh_permutation(10, None, rng)]
        index[7:] = 1000  # and three zero planes
    elif mode == "spatial":
        index = grid.reshape(10, 100)[:, fresh_permutation(100, None, rng)].reshape(10, 10, 10)
    else:
        index = fresh_permutation(1000, None, rng).reshape(10, 10, 10)
    permuted.set_observation_gather(index)
    assert (permuted._plane_order is not None) == (mode == "channels")
    a, b = plain.reset(seed=1)[0], permuted.reset(seed=1)[0]
    for _ in range(30):
        np.testing.assert_array_equal(b, np.stack([gather(o, index) for o in a]))
        actions = rng.integers(6, size=4)
        a, b = plain.step(actions)[0], permuted.step(actions)[0]
