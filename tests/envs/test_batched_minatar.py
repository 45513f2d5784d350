"""The batched MinAtar against the real ``minatar`` package, step for step (envs/batched_minatar/).

How the comparison works (Note [Exact draws] in ``plasticrl.envs.batched_minatar.common``): the
reference is plasticrl's own vector env of the real package (``make_vector_env``: a
``SyncVectorEnv`` of ``MinAtarObservation(TimeLimit(minatar.gym.BaseEnv))`` with same-step
autoreset), reset with ``seed=s``, so sub-env ``i`` draws from ``RandomState(s + i)``. The batched
env uses ``source="numpy"``: one ``RandomState(s + i)`` per env, asked for the same draws in the
same order. Both get the same actions (a per-env mix of uniform and biased random policies, and
for Space Invaders and Seaquest scripted players computed from the observation, so that long
episodes, crossings, cleared waves, surfacing with divers and difficulty ramps happen), and every
step's observations, rewards, terminations, truncations, final observations and episode
statistics must be equal, and every env's difficulty ramp and last (sticky) action too, read from
the package's objects. Sticky actions are part of it: the sticky draw is the first draw of each
step in both. Two tests start both from the same hand-set state (Space Invaders' last aliens of a
wave; Seaquest at high difficulty with divers on board), which random play reaches too rarely.

The torch source (normal use) cannot equal the package's numbers; for it the reward and
episode-end rates are compared with the numpy source's within sampling error. A PPO (and, slow,
a DQN) run on the batched env ends with exactly the parameters of the same run on the sync env.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

try:  # installed as plasticrl.envs.batched_minatar once pyproject lists it; the folder imports meanwhile
    from plasticrl.envs.batched_minatar import BatchedMinAtar, TorchSource, make_batched_vector_env
except ModuleNotFoundError:  # pragma: no cover - a non-editable install without the subpackage
    pytest.skip("plasticrl.envs.batched_minatar is not installed", allow_module_level=True)
from plasticrl.envs.make import ENV_ALIASES, EnvConfig
from plasticrl.envs.vector import final_observations, make_vector_env

GAMES = ["breakout", "freeway", "asterix", "space_invaders", "seaquest"]


def _policy(game: str, num_envs: int, rng: np.random.Generator) -> np.ndarray:
    """Per-env action probabilities: uniform for even envs, a game-specific bias for odd ones."""
    bias = {
        "breakout": [0.2, 0.4, 0.0, 0.4, 0.0, 0.0],  # moves: longer rallies
        "freeway": [0.1, 0.0, 0.8, 0.0, 0.1, 0.0],  # mostly up: crossings
        "asterix": [0.6, 0.1, 0.05, 0.1, 0.05, 0.1],  # mostly still: long episodes, ramps
        "space_invaders": [0.05, 0.15, 0.0, 0.15, 0.0, 0.65],  # mostly fire: cleared waves
        "seaquest": [0.1, 0.2, 0.15, 0.2, 0.15, 0.2],
    }[game]
    probs = np.tile(np.full(6, 1 / 6), (num_envs, 1))
    probs[1::2] = bias
    return probs


def _actions(probs: np.ndarray, rng: np.random.Generator, game: str, obs: np.ndarray) -> np.ndarray:
    u = rng.random(len(probs))[:, None]
    actions = np.minimum((u > np.cumsum(probs, axis=1)).sum(axis=1), 5)
    if game == "space_invaders":  # odd envs: an aiming, dodging script (long episodes, cleared waves)
        actions[1::2] = _invaders_script(obs[1::2], rng)
    if game == "seaquest":  # odd envs: stay under, dodge, shoot, collect divers, surface with them
        actions[1::2] = _seaquest_script(obs[1::2], rng)
    return actions


def _seaquest_script(obs: np.ndarray, rng: np.random.Generator, eps: float = 0.1) -> np.ndarray:
    """Surface when divers are on board and oxygen is low (or six are); else the least risky move."""
    actions = np.zeros(len(obs), np.int64)
    for i, o in enumerate(obs):
        ys, xs = np.nonzero(o[0])
        y, x = int(ys[0]), int(xs[0])
        oxygen, divers = int(o[7, 9].sum()), int(o[8, 9].sum())
        danger = o[4] + o[5] + o[6]
        if divers >= 1 and (oxygen <= 2 or divers >= 6):
            a = 2
        elif y == 0:
            a = 4
        else:
            moves = {
                1: (y, max(0, x - 1)),
                3: (y, min(9, x + 1)),
                2: (max(0, y - 1), x),
                4: (min(8, y + 1), x),
            }
            options = [0, 1, 3, 4, 5] + ([2] if y > 1 else [])
            rng.shuffle(options)

            def risk(a: int, moves=moves, here=(y, x), danger=danger) -> float:
                yy, xx = moves.get(a, here)
                return float(danger[yy, max(0, xx - 1) : xx + 2].sum())

            a = min(options, key=risk)
        actions[i] = rng.integers(6) if rng.random() < eps else a
    return actions


def _invaders_script(obs: np.ndarray, rng: np.random.Generator, eps: float = 0.05) -> np.ndarray:
    """Fire under an alien, else move towards the nearest one; avoid cells about to be hit."""
    pos = obs[:, 0, 9].argmax(1)
    alien = obs[:, 1].any(1)
    risk = 2 * obs[:, 5, 8] + obs[:, 5, 7] + 2 * obs[:, 1, 9] + obs[:, 1, 8]  # (N, column)
    actions = np.zeros(len(obs), np.int64)
    for i, p in enumerate(pos):
        cols = np.flatnonzero(alien[i])
        if alien[i, p]:
            want = 5
        else:
            want = 0 if len(cols) == 0 else (3 if cols[np.abs(cols - p).argmin()] > p else 1)
        options = [want, 0, 1, 3]
        dest = {0: p, 5: p, 1: max(0, p - 1), 3: min(9, p + 1)}
        actions[i] = min(options, key=lambda a: (risk[i, dest[a]], options.index(a)))
        if rng.random() < eps:
            actions[i] = rng.integers(6)
    return actions


def _ramps(reference) -> list[int | None]:
    return [sub.unwrapped.game.env.difficulty_ramp() for sub in reference.unwrapped.envs]


def compare(
    game: str,
    num_envs: int,
    steps: int,
    seed: int = 0,
    max_episode_steps: int | None = None,
    sticky_action_prob: float = 0.1,
    difficulty_ramping: bool = True,
    channels: int | None = None,
    prepare=None,
) -> dict[str, float]:
    """Step both for ``steps`` and assert equality; returns coverage counts."""
    kwargs = {"sticky_action_prob": sticky_action_prob, "difficulty_ramping": difficulty_ramping}
    cfg = EnvConfig(id=game, num_envs=num_envs, max_episode_steps=max_episode_steps, kwargs=kwargs)
    reference = make_vector_env(cfg, seed)
    batched = make_batched_vector_env(cfg, seed, source="numpy", channels=channels)
    obs_r, _ = reference.reset(seed=seed)
    obs_b, _ = batched.reset(seed=seed)
    if prepare is not None:  # the same hand-set state in both (observations re-read from it)
        prepare([sub.unwrapped.game.env for sub in reference.unwrapped.envs], batched.unwrapped.game)
        obs_r = np.stack([sub.unwrapped.game.state().transpose(2, 0, 1) for sub in reference.unwrapped.envs])
        obs_r = obs_r.astype(np.float32)
        obs_b = batched.unwrapped._observation().numpy()
    c = obs_r.shape[1]
    assert obs_b.dtype == np.float32 and obs_b.shape[0] == num_envs
    np.testing.assert_array_equal(obs_b[:, :c], obs_r)
    assert not obs_b[:, c:].any()
    rng = np.random.default_rng(seed + 1000)
    probs = _policy(game, num_envs, rng)
    episodes, rewards, max_ramp = 0, 0.0, 0
    for t in range(steps):
        actions = _actions(probs, rng, game, obs_r)
        obs_r, rew_r, term_r, trunc_r, info_r = reference.step(actions)
        obs_b, rew_b, term_b, trunc_b, info_b = batched.step(actions)
        where = f"{game} step {t}"
        np.testing.assert_array_equal(rew_b, rew_r, err_msg=where)
        np.testing.assert_array_equal(term_b, term_r, err_msg=where)
        np.testing.assert_array_equal(trunc_b, trunc_r, err_msg=where)
        np.testing.assert_array_equal(obs_b[:, :c], obs_r, err_msg=where)
        done = term_r | trunc_r
        if done.any():
            real = final_observations(obs_r, info_r, done)
            mine = final_observations(obs_b, info_b, done)
            np.testing.assert_array_equal(mine[:, :c], real, err_msg=where)
            np.testing.assert_array_equal(info_b["episode"]["r"][done], info_r["episode"]["r"][done])
            np.testing.assert_array_equal(info_b["episode"]["l"][done], info_r["episode"]["l"][done])
        ramp_r = _ramps(reference)
        ramp_b = batched.unwrapped.difficulty_ramp()
        if ramp_r[0] is None:
            assert ramp_b is None
        else:
            assert ramp_b.tolist() == ramp_r, where
            max_ramp = max(max_ramp, max(ramp_r))
        episodes += int(done.sum())
        rewards += float(rew_r.sum())
    np.testing.assert_array_equal(
        batched.unwrapped.last_action.numpy(),
        [s.unwrapped.game.last_action for s in reference.unwrapped.envs],
    )
    return {"episodes": episodes, "rewards": rewards, "max_ramp": max_ramp}


@pytest.mark.parametrize(
    ("game", "num_envs", "steps"),
    [("breakout", 32, 600), ("freeway", 8, 2600), ("asterix", 32, 600), ("space_invaders", 32, 600)],
)
def test_same_as_the_package(game: str, num_envs: int, steps: int) -> None:
    seen = compare(game, num_envs, steps, seed=3)
    assert seen["episodes"] >= num_envs and seen["rewards"] > 0
    if game == "asterix":
        assert seen["max_ramp"] >= 1  # the difficulty ramp was exercised


@pytest.mark.parametrize("game", ["breakout", "asterix", "space_invaders", "freeway", "seaquest"])
def test_same_with_time_limit_no_ramp_no_sticky_and_padding(game: str) -> None:
    steps = 100 if game == "seaquest" else 200  # Seaquest's batched step costs the most
    compare(game, 6, steps, seed=11, max_episode_steps=37, difficulty_ramping=False, channels=10)
    compare(game, 6, steps // 2, seed=12, sticky_action_prob=0.0)
    compare(game, 6, steps // 2, seed=13, sticky_action_prob=1.0)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("game", "num_envs", "steps"),
    [
        ("breakout", 64, 6000),
        ("freeway", 64, 6000),
        ("asterix", 64, 6000),
        ("space_invaders", 64, 6000),
        ("seaquest", 32, 4000),
    ],
)
def test_same_as_the_package_long(game: str, num_envs: int, steps: int) -> None:
    seen = compare(game, num_envs, steps, seed=7)
    assert seen["episodes"] > num_envs


def _last_aliens(games, batched) -> None:
    """Every env's wave down to one or two aliens, so that waves clear and the ramp moves."""
    for i, g in enumerate(games):
        g.alien_map[:] = 0
        g.alien_map[0, 2 + i % 6] = 1
        if i % 3 == 0:
            g.alien_map[1, 3] = 1
        batched.aliens[i] = torch.as_tensor(g.alien_map == 1)


def test_space_invaders_waves_and_ramp() -> None:
    seen = compare("space_invaders", 16, 400, seed=5, prepare=_last_aliens)
    assert seen["max_ramp"] >= 1


def _hard_seaquest(games, batched) -> None:
    """Ramped difficulty, divers on board and little oxygen in the first episodes."""
    for i, g in enumerate(games):
        g.e_spawn_speed, g.move_speed, g.ramp_index = 1 + i % 3, 2 + i % 4, 3 + i % 5
        g.diver_count, g.oxygen = i % 7, 20 + 13 * i
    n = len(games)
    t = lambda values: torch.tensor(values, dtype=torch.int64)  # noqa: E731
    batched.e_spawn_speed = t([g.e_spawn_speed for g in games])
    batched.move_speed = t([g.move_speed for g in games])
    batched.ramp_index = t([g.ramp_index for g in games])
    batched.diver_count = t([g.diver_count for g in games])
    batched.oxygen = t([g.oxygen for g in games])
    assert n == batched.num_envs


def test_seaquest_same_as_the_package() -> None:
    seen = compare("seaquest", 16, 600, seed=1)
    assert seen["episodes"] >= 16 and seen["rewards"] > 0 and seen["max_ramp"] >= 1


def test_seaquest_hard_states() -> None:
    seen = compare("seaquest", 14, 250, seed=4, prepare=_hard_seaquest)
    assert seen["rewards"] > 0


def test_api_spaces_tensors_and_pickle() -> None:
    envs = BatchedMinAtar("MinAtar/Breakout-v0", 4, channels=10, seed=0)
    assert envs.single_observation_space.shape == (10, 10, 10)
    assert envs.single_action_space.n == 6
    assert envs.action_space.shape == (4,)
    obs, _ = envs.reset(seed=1)
    assert obs.shape == (4, 10, 10, 10) and obs.dtype == np.float32
    envs.step(envs.action_space.sample())
    clone = pickle.loads(pickle.dumps(envs))
    actions = np.array([0, 1, 3, 5])
    for _ in range(50):
        a, b = envs.step(actions), clone.step(actions)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    minimal = BatchedMinAtar("MinAtar/Breakout-v1", 2)
    assert minimal.single_action_space.n == 3
    t = BatchedMinAtar("asterix", 3, tensors=True, seed=0)
    obs, _ = t.reset(seed=0)
    assert torch.is_tensor(obs) and obs.shape == (3, 4, 10, 10)
    total = torch.zeros(3)
    for _ in range(300):
        obs, r, term, trunc, info = t.step(torch.zeros(3, dtype=torch.int64))
        total += r
        if info["_episode"].any():
            assert (info["episode"]["l"][info["_episode"]] > 0).all()


def test_gather_and_action_table() -> None:
    envs = BatchedMinAtar("space_invaders", 2, source="numpy", seed=0, channels=10)
    plain = BatchedMinAtar("space_invaders", 2, source="numpy", seed=0, channels=10)
    perm = np.random.default_rng(0).permutation(1000).reshape(10, 10, 10)
    envs.set_observation_gather(perm)
    table = [5, 4, 3, 2, 1, 0]
    envs.set_action_table(table)
    a, _ = envs.reset(seed=0)
    b, _ = plain.reset(seed=0)
    np.testing.assert_array_equal(a, b.reshape(2, -1)[:, perm])
    rng = np.random.default_rng(1)
    for _ in range(100):
        act = rng.integers(6, size=2)
        a = envs.step(act)[0]
        b = plain.step(np.array(table)[act])[0]
        np.testing.assert_array_equal(a, b.reshape(2, -1)[:, perm])


def _rates(game: str, source: str, num_envs: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Per env: reward per step and episode ends per step under uniform random actions."""
    envs = BatchedMinAtar(game, num_envs, source=source, seed=5, max_episode_steps=None)
    envs.reset(seed=5)
    rng = np.random.default_rng(0)
    rewards, ends = np.zeros(num_envs), np.zeros(num_envs)
    for _ in range(steps):
        _, r, term, trunc, _ = envs.step(rng.integers(6, size=num_envs))
        rewards += r
        ends += term | trunc
    return rewards / steps, ends / steps


def _same_distribution(game: str, num_envs: int, steps: int) -> None:
    """TorchSource draws differ from numpy's (the package's); the games' statistics must not.

    Reward and episode-end rates per env step, each compared across the envs of two independent
    runs: the means must agree within 4.5 standard errors (a false alarm about once in 10^5).
    """
    a, b = _rates(game, "numpy", num_envs, steps), _rates(game, "torch", num_envs, steps)
    for name, x, y in (("reward rate", a[0], b[0]), ("end rate", a[1], b[1])):
        se = np.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y)) + 1e-12
        assert abs(x.mean() - y.mean()) < 4.5 * se, (game, name, x.mean(), y.mean(), se)


def test_torch_source_distribution_matches_the_package() -> None:
    _same_distribution("breakout", 128, 300)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("game", "num_envs", "steps"),
    [("freeway", 64, 2600), ("asterix", 128, 400), ("space_invaders", 128, 400), ("seaquest", 128, 400)],
)
def test_torch_source_distribution_matches_the_package_all(game: str, num_envs: int, steps: int) -> None:
    _same_distribution(game, num_envs, steps)


def test_torch_source_pickles() -> None:
    src = TorchSource(4, seed=0)
    clone = pickle.loads(pickle.dumps(src))
    mask = torch.ones(4, dtype=torch.bool)
    assert torch.equal(src.rand(mask), clone.rand(mask))
    assert torch.equal(
        src.randint(mask, 0, torch.tensor([1, 2, 3, 8])), clone.randint(mask, 0, torch.tensor([1, 2, 3, 8]))
    )


def test_aliases_resolve() -> None:
    for game in ("breakout", "freeway", "asterix", "space_invaders", "seaquest"):
        assert BatchedMinAtar(ENV_ALIASES[game], 1).game.name == game


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        ("ppo_breakout.yaml", {"env__num_envs": 4, "agent__num_steps": 32, "total_steps": 256}),
        pytest.param(
            "dqn_asterix.yaml",
            {
                "env__num_envs": 2,
                "total_steps": 300,
                "agent__learning_starts": 100,
                "agent__buffer_size": 1000,
                "optimizer__compile": False,
            },
            marks=pytest.mark.slow,
        ),
    ],
)
def test_drop_in_for_the_trainers(preset: str, overrides: dict, tmp_path, monkeypatch) -> None:
    """A run on the batched env (numpy source) ends with exactly the parameters of the sync run."""
    import functools
    from pathlib import Path

    import plasticrl
    import plasticrl.trainers.off_policy as off_policy
    import plasticrl.trainers.on_policy as on_policy

    config = Path(__file__).parents[2] / "configs" / "minatar" / preset
    common = {"logging__dir": str(tmp_path), "quiet": True, **overrides}
    reference = plasticrl.train(str(config), logging__name="sync", **common)
    batched = functools.partial(make_batched_vector_env, source="numpy")
    monkeypatch.setattr(on_policy, "make_vector_env", batched)
    monkeypatch.setattr(off_policy, "make_vector_env", batched)
    mine = plasticrl.train(str(config), logging__name="batched", **common)
    assert mine.status == reference.status == "finished"
    assert mine.global_step == reference.global_step
    assert mine.recent_return == reference.recent_return
    net = "q_net" if hasattr(reference.agent, "q_net") else "model"
    ref_state, my_state = getattr(reference.agent, net).state_dict(), getattr(mine.agent, net).state_dict()
    assert ref_state.keys() == my_state.keys()
    for key in ref_state:
        assert torch.equal(ref_state[key], my_state[key]), key
