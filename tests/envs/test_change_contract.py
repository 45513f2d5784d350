"""The change-kind contract: options dataclasses and their strict config, the observation hook
(``obs_noise``), and composed kinds (a game switch and a fresh channel permutation per game and cycle)."""

from __future__ import annotations

import ast
import dataclasses
import functools
import glob
import inspect
import pickle
import textwrap
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import yaml
from gymnasium.error import ResetNeeded
from gymnasium.spaces import Box, Discrete
from gymnasium.utils.env_checker import check_env
from plasticrl.envs.changes import (
    CHANGES,
    Compose,
    ObsNoise,
    ObsNoiseOptions,
    PermuteActions,
    PermuteObs,
    RewardScale,
    Switch,
    Tour,
)
from plasticrl.envs.make import (
    EnvConfig,
    NonStationaryConfig,
    build_sub_env,
    change_options,
    check_nonstationary,
    make_change,
    nonstationary_keys,
)
from plasticrl.envs.nonstationary import NonStationary, TaskSet
from plasticrl.envs.schedules import At, Every
from plasticrl.envs.vector import make_vector_env

REPO = Path(__file__).resolve().parents[2]


class CellEnv(gym.Env[np.ndarray, int]):
    """A stub whose observation cells are all distinct and positive: ``arange + 1 + 100·t``.

    The observation before any wrapper goes into ``info["raw"]`` (reset and step), so a test can
    read back what was done to it. Episodes last ``episode_len`` steps.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        shape: tuple[int, ...] = (2, 3, 4),
        dtype: Any = np.float32,
        episode_len: int = 1000,
        name: str = "cells",
    ) -> None:
        self.observation_space = Box(0, 10**6, shape, dtype)
        self.action_space = Discrete(3)
        self.episode_len, self.name = episode_len, name
        self._base = (np.arange(int(np.prod(shape))) + 1).reshape(shape).astype(dtype)
        self._t = 0

    def _obs(self) -> np.ndarray:
        return self._base + self._base.dtype.type(100 * (self._t % 50))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._t = 0
        obs = self._obs()
        return obs, {"raw": obs.copy(), "name": self.name}

    def step(self, action: int):
        self._t += 1
        obs = self._obs()
        info = {"raw": obs.copy(), "name": self.name, "action": int(action)}
        return obs, 1.0, self._t >= self.episode_len, False, info


def noise_of(env: NonStationary, n_steps: int, seed: int | None = 0) -> np.ndarray:
    """Reset (with ``seed``), step ``n_steps`` times; the noise of every observation, stacked."""
    obs, info = env.reset(seed=seed)
    noise = [obs - info["raw"]]
    for _ in range(n_steps):
        obs, _, terminated, truncated, info = env.step(0)
        noise.append(obs - info["raw"])
        if terminated or truncated:
            obs, info = env.reset()
            noise.append(obs - info["raw"])
    return np.stack(noise)


# ---------------------------------------------------------------------------------------------
# Options dataclasses: one per kind, documented, validated; the strict config.


def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under dataclass fields."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body  # type: ignore[attr-defined]
    return {
        node.target.id: nxt.value.value
        for node, nxt in zip(body, body[1:], strict=False)
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and isinstance(nxt, ast.Expr)
        and isinstance(nxt.value, ast.Constant)
    }


@pytest.mark.parametrize("name", CHANGES.names())
def test_every_kind_carries_a_frozen_documented_options_dataclass(name: str) -> None:
    options = CHANGES.options(name)
    kind = CHANGES.get(name)
    assert options is not None and kind.Options is options and kind.name == name
    params = dataclasses.fields(options)
    assert options.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert set(field_docs(options)) == {f.name for f in params}
    # Defaults build; the kind takes the fields as keyword arguments and reads them back.
    default = options()
    change = kind(**{f.name: getattr(default, f.name) for f in params})
    assert change.options == default
    assert (
        repr(change)
        == f"{kind.__name__}({', '.join(f'{f.name}={getattr(default, f.name)!r}' for f in params)})"
    )


@pytest.mark.parametrize(
    "kind, options, message",
    [
        ("switch", {"order": "sideways"}, "Switch.order must be 'cycle', 'random' or 'shuffle'"),
        ("permute_obs", {"mode": "pixels"}, "PermuteObs.mode must be 'all', 'spatial' or 'channels'"),
        ("reward_scale", {"scales": [1.0]}, "RewardScale.scales must be at least two finite numbers"),
        ("obs_noise", {"scales": [0.1, -0.1]}, r"ObsNoise.scales must be one or more finite numbers >= 0"),
        ("obs_noise", {"scales": []}, r"ObsNoise.scales must be one or more finite numbers >= 0"),
        ("obs_noise", {"scales": [0.1], "order": "random"}, "'random' needs at least two scales"),
    ],
)
def test_options_validation_names_the_key_and_the_valid_range(
    kind: str, options: dict[str, Any], message: str
) -> None:
    options_cls = CHANGES.options(kind)
    with pytest.raises(ValueError, match=message):
        options_cls(**options)
    # From a config the message names the dotted key (a Literal is checked by the converter).
    tasks = ("breakout", "asterix") if kind == "switch" else ()
    with pytest.raises(ValueError) as info:
        NonStationaryConfig(kind=kind, every=10, tasks=tasks, options=options)
    text = str(info.value)
    assert text.startswith("nonstationary.options") and "\n" not in text
    assert any(key in text for key in options)


@pytest.mark.parametrize(
    "cfg, message",
    [
        (
            dict(kind="permute_obs", options={"mod": "all"}),
            "unknown key 'nonstationary.options.mod'; did you mean 'mode'? "
            "valid keys of change kind 'permute_obs': ['first_task', 'layout', 'mode']",
        ),
        (
            dict(kind="permute_actions", options={"mode": "all"}),
            "unknown key 'nonstationary.options.mode'; valid keys of change kind 'permute_actions': []",
        ),
        (
            dict(kind="obs_noise", options={"scale": 0.1}),
            "unknown key 'nonstationary.options.scale'; did you mean 'scales'? "
            "valid keys of change kind 'obs_noise': ['order', 'scales']",
        ),
        (
            dict(kind=["switch", "permute_obs"], tasks=("breakout", "asterix"), options={"order": "cycle"}),
            "unknown key 'nonstationary.options.order'; valid keys of kinds ['switch', 'permute_obs']: "
            "['permute_obs', 'switch']",
        ),
        (
            dict(
                kind=["switch", "permute_obs"],
                tasks=("breakout", "asterix"),
                options={"permute_obs": {"layot": "chw"}},
            ),
            "unknown key 'nonstationary.options.permute_obs.layot'; did you mean 'layout'? "
            "valid keys of change kind 'permute_obs': ['first_task', 'layout', 'mode']",
        ),
    ],
)
def test_an_unknown_option_key_is_one_line_naming_key_kind_and_valid_keys(
    cfg: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as info:
        NonStationaryConfig(every=10, **cfg)
    assert str(info.value) == message and "\n" not in str(info.value)


def test_the_experiment_config_refuses_unknown_options_naming_the_override() -> None:
    from plasticrl.trainers.config import ConfigError, load_config

    with pytest.raises(ConfigError) as info:
        load_config(REPO / "configs/minatar/dqn_cycle.yaml", ["nonstationary.options.ordr=cycle"])
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("command-line override 'nonstationary.options.ordr=cycle'")
    assert "'nonstationary.options.ordr'" in text and "change kind 'switch'" in text
    assert "['first_cycle', 'order']" in text


@pytest.mark.parametrize(
    "kind, message",
    [
        (["switch"], "a list of two or more distinct ones"),
        (["permute_obs", "permute_obs"], "a list of two or more distinct ones"),
        (["permute_obs", "permute_ob"], "unknown change kind 'permute_ob'; did you mean 'permute_obs'"),
        ("compose", "unknown change kind 'compose'"),
    ],
)
def test_bad_kind_lists_are_refused(kind: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NonStationaryConfig(kind=kind, every=10)


def presets() -> list[Path]:
    """Every experiment preset (sweep files, with their seeds/grid/methods, are not presets)."""
    out = []
    for path in sorted(glob.glob(str(REPO / "configs/**/*.yaml"), recursive=True)):
        data = yaml.safe_load(Path(path).read_text())
        if not {"seeds", "grid", "methods"} & set(data):
            out.append(Path(path))
    return out


def test_every_preset_loads_and_builds_the_change_it_built_before() -> None:
    from plasticrl.trainers.config import load_config

    found = presets()
    assert len(found) >= 20
    kinds = set()
    for path in found:
        cfg = load_config(path)
        ns = cfg.nonstationary
        if ns.kind is None:
            continue
        check_nonstationary(cfg.env, ns)
        if not isinstance(ns.kind, str):  # a composed kind (the AdamO protocol's presets): one per part
            kinds.add(tuple(ns.kind))
            parts = [CHANGES.get(k)(**dict(ns.options.get(k, {}))) for k in ns.kind]
            assert repr(make_change(ns)) == f"Compose([{', '.join(repr(p) for p in parts)}])"
            continue
        kinds.add(ns.kind)
        # What make_change built before options dataclasses: the class called with the mapping.
        assert repr(make_change(ns)) == repr(CHANGES.get(ns.kind)(**dict(ns.options)))
    assert kinds == {"switch", "permute_obs", "reward_scale", "dynamics", ("switch", "permute_obs")}


def test_applicable_keys() -> None:
    assert nonstationary_keys(None) == {"kind"}
    assert "tasks" not in nonstationary_keys("permute_obs") and "options" in nonstationary_keys("obs_noise")
    assert "tasks" in nonstationary_keys(("switch", "permute_obs"))
    cfg = NonStationaryConfig(kind="obs_noise", every=5, options={"scales": [0, 1]})
    assert change_options(cfg) == [("obs_noise", ObsNoiseOptions(scales=(0.0, 1.0)))]


# ---------------------------------------------------------------------------------------------
# obs_noise: the observation hook and its generator.


@pytest.mark.parametrize("scale", [0.05, 1.0, 3.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_obs_noise_is_zero_mean_gaussian_with_the_configured_scale(scale: float, dtype: Any) -> None:
    env = NonStationary(CellEnv(dtype=dtype, episode_len=37), ObsNoise([scale]), At([10**9]), seed=0)
    noise = noise_of(env, 400)
    samples = noise.reshape(-1)
    assert noise.dtype == dtype and samples.size > 9000
    # Mean within 5 standard errors; std within 5 % (its relative standard error is ~0.7 %).
    assert abs(samples.mean()) < 5 * scale / np.sqrt(samples.size)
    assert abs(samples.std() / scale - 1) < 0.05
    # Independent across cells and steps: neighbouring samples are uncorrelated.
    assert abs(np.corrcoef(samples[:-1], samples[1:])[0, 1]) < 0.05
    # Gaussian: about 68.3 % within one sigma, 95.4 % within two.
    assert abs(np.mean(np.abs(samples) < scale) - 0.683) < 0.02
    assert abs(np.mean(np.abs(samples) < 2 * scale) - 0.954) < 0.01


def test_obs_noise_scales_change_per_task() -> None:
    env = NonStationary(CellEnv(), ObsNoise([0.0, 0.5, 2.0]), Every(300), on="step", seed=1)
    obs, info = env.reset(seed=0)
    assert info["task_id"] == 0
    by_task: dict[int, list[np.ndarray]] = {0: [], 1: [], 2: []}
    task = 0
    for _ in range(899):
        obs, _, terminated, truncated, info = env.step(0)
        by_task[task].append(obs - info["raw"])
        if terminated or truncated:
            obs, info = env.reset()
            task = info.get("task_id", task)
            by_task[task].append(obs - info["raw"])
    assert not np.any(by_task[0])  # scale 0: the observation itself
    for task, scale in ((1, 0.5), (2, 2.0)):
        assert abs(np.std(by_task[task]) / scale - 1) < 0.05


def test_obs_noise_keeps_dtype_and_makes_the_space_unbounded() -> None:
    env = NonStationary(CellEnv(), ObsNoise([0.3]), At([10**9]), seed=0)
    assert env.observation_space == Box(-np.inf, np.inf, (2, 3, 4), np.float32)
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs in env.observation_space
    # Only zero scales: nothing is added, the space stays the env's.
    quiet = NonStationary(CellEnv(), ObsNoise([0.0]), At([10**9]), seed=0)
    assert quiet.observation_space == CellEnv().observation_space
    obs, info = quiet.reset(seed=0)
    assert np.array_equal(obs, info["raw"])


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.bool_])
def test_obs_noise_refuses_integer_and_bool_observations(dtype: Any) -> None:
    env = CellEnv()
    env.observation_space = Box(0, 1, (2, 3, 4), dtype)
    with pytest.raises(ValueError, match="obs_noise' needs a floating-point Box observation space"):
        NonStationary(env, ObsNoise(), At([10**9]), seed=0)


def test_obs_noise_never_writes_into_the_envs_array() -> None:
    class Kept(CellEnv):
        def reset(self, **kwargs: Any):
            obs, info = super().reset(**kwargs)
            self._kept = obs
            return obs, info

    inner = Kept()
    env = NonStationary(inner, ObsNoise([1.0]), At([10**9]), seed=0)
    obs, info = env.reset(seed=0)
    assert np.array_equal(inner._kept, info["raw"]) and not np.array_equal(obs, info["raw"])


def test_obs_noise_is_determined_by_the_seeds() -> None:
    def build(seed: int | None) -> NonStationary:
        return NonStationary(CellEnv(episode_len=7), ObsNoise([1.0]), At([10**9]), seed=seed)

    first = noise_of(build(3), 50, seed=0)
    assert np.array_equal(first, noise_of(build(3), 50, seed=0))
    assert not np.allclose(first, noise_of(build(4), 50, seed=0))  # the wrapper's seed
    assert not np.allclose(first, noise_of(build(3), 50, seed=1))  # the reset seed (sub-env i: seed + i)
    # Without a wrapper seed, the reset seed alone determines it (and differs from the above).
    alone = noise_of(build(None), 50, seed=0)
    assert np.array_equal(alone, noise_of(build(None), 50, seed=0)) and not np.allclose(alone, first)
    # A seeded reset restarts the stream, as it does the env's own randomness; the task stream
    # is untouched (Note [Task randomness]).
    env = build(3)
    assert np.array_equal(noise_of(env, 20, seed=5), noise_of(env, 20, seed=5))


@pytest.mark.filterwarnings("ignore:.*is different from the unwrapped version")
@pytest.mark.filterwarnings("ignore:.*(minimum|maximum) value is (-)?infinity")  # Gaussian noise is unbounded
def test_obs_noise_passes_check_env() -> None:
    check_env(NonStationary(CellEnv(), ObsNoise([0.2]), At([10**9]), seed=0), skip_render_check=True)


def test_vector_sub_envs_draw_independent_noise() -> None:
    cfg = NonStationaryConfig(kind="obs_noise", every=10**6, options={"scales": [1.0]})
    envs = make_vector_env(EnvConfig(id="CartPole-v1", num_envs=2), seed=0, nonstationary=cfg)
    obs, _ = envs.reset(seed=0)
    raw = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2).reset(seed=0)[0]
    noise = obs - raw
    assert envs.single_observation_space == Box(-np.inf, np.inf, (4,), np.float32)
    assert np.all(noise != 0) and not np.allclose(noise[0], noise[1])


def test_vector_sub_envs_share_the_task_stream_but_not_the_noise_stream() -> None:
    cfg = NonStationaryConfig(
        kind=["permute_obs", "obs_noise"], every=10, on="step", options={"obs_noise": {"scales": [0.5]}}
    )
    envs = make_vector_env(EnvConfig(id="CartPole-v1", num_envs=3), seed=0, nonstationary=cfg)
    envs.reset(seed=0)
    for _ in range(12):
        envs.step(np.zeros(3, dtype=np.int64))
    states = envs.unwrapped.call("get_state")  # type: ignore[attr-defined]
    assert all(s["num_changes"] == 3 for s in states)  # 36 global steps: changes at 10, 20, 30
    assert all(s["params"] == states[0]["params"] and s["rng"] == states[0]["rng"] for s in states)
    assert len({str(s["obs_rng"]) for s in states}) == 3


def test_obs_noise_state_round_trip_continues_the_noise_stream() -> None:
    original = NonStationary(CellEnv(episode_len=9), ObsNoise([0.5, 1.5]), Every(13), seed=3)
    noise_of(original, 40, seed=0)
    state = original.get_state()
    assert set(state["obs_rng"]) >= {"bit_generator", "state"}
    restored = NonStationary(CellEnv(episode_len=9), ObsNoise([0.5, 1.5]), Every(13), seed=99)
    restored.reset(seed=7)  # another seed and a used stream: the state must override both
    restored.set_state(pickle.loads(pickle.dumps(state)))
    with pytest.raises(ResetNeeded):
        restored.step(0)
    # Both reset (the restored wrapper must) and continue unseeded: the same noise from here on,
    # under the same tasks.
    assert np.array_equal(noise_of(restored, 60, seed=None), noise_of(original, 60, seed=None))
    assert restored.get_state() == original.get_state()


def test_obs_noise_pickled_mid_episode_continues_the_noise_stream() -> None:
    original = NonStationary(CellEnv(episode_len=9), ObsNoise([1.0]), Every(13), seed=3)
    noise_of(original, 25, seed=0)
    twin = pickle.loads(pickle.dumps(original))
    steps = [original.step(0)[0] for _ in range(3)]
    assert all(np.array_equal(a, twin.step(0)[0]) for a in steps)


def test_a_kind_without_a_hook_gets_no_generator_and_an_unchanged_state() -> None:
    env = NonStationary(CellEnv(), PermuteObs(), Every(5), seed=0)
    env.reset(seed=0)
    assert not {"_observes", "_obs_rng", "_obs_seed"} & set(vars(env))
    assert "obs_rng" not in env.get_state()
    for change in (Switch(), PermuteObs(), PermuteActions(), RewardScale()):
        assert not change.has_obs_hook
    assert ObsNoise().has_obs_hook and Compose([PermuteObs(), ObsNoise()]).has_obs_hook
    assert not Compose([PermuteObs(), RewardScale()]).has_obs_hook


def test_set_state_needs_the_obs_rng_of_a_hooked_kind() -> None:
    env = NonStationary(CellEnv(), ObsNoise(), Every(5), seed=0)
    env.reset(seed=0)
    state = env.get_state()
    with pytest.raises(ValueError, match="must have keys"):
        env.set_state({k: v for k, v in state.items() if k != "obs_rng"})
    with pytest.raises(ValueError, match=r"state\['obs_rng'\] must be a PCG64 state dict"):
        env.set_state({**state, "obs_rng": {"bit_generator": "MT19937"}})
    plain = NonStationary(CellEnv(), PermuteObs(), Every(5), seed=0)
    with pytest.raises(ValueError, match="must have keys"):
        plain.set_state({**plain.get_state(), "obs_rng": None})


# ---------------------------------------------------------------------------------------------
# switch with order="shuffle".


def shuffle_tasks(n_tasks: int, n_changes: int, seed: int = 0) -> list[Tour]:
    tasks = TaskSet([functools.partial(CellEnv, name=str(i)) for i in range(n_tasks)])
    env = NonStationary(tasks, Switch("shuffle"), Every(1), on="step", seed=seed)
    env.reset(seed=0)
    tours = []
    for _ in range(n_changes):
        tours.append(env._params)
        env.step(0)
        env.reset()
    return tours


def test_shuffle_visits_every_task_once_per_cycle_in_a_fresh_order() -> None:
    tours = shuffle_tasks(4, 4 * 12)
    tasks = [t.task for t in tours]
    cycles = [tasks[i : i + 4] for i in range(0, len(tasks), 4)]
    assert cycles[0] == [0, 1, 2, 3]  # the listed order first: env.id leads
    assert all(sorted(c) == [0, 1, 2, 3] for c in cycles)
    assert [t.cycle for t in tours] == [i // 4 for i in range(len(tours))]
    assert all(a != b for a, b in zip(tasks, tasks[1:], strict=False))  # every change changes
    assert len({tuple(c) for c in cycles[1:]}) > 5  # reshuffled, not one order repeated
    assert shuffle_tasks(4, 48) == tours and shuffle_tasks(4, 48, seed=1) != tours


def test_shuffle_state_round_trip() -> None:
    switch = Switch("shuffle")
    switch.bind(TaskSet([CellEnv, CellEnv, CellEnv]))
    tour = Tour((2, 0, 1), 1, 4)
    assert switch.from_state(pickle.loads(pickle.dumps(switch.to_state(tour)))) == tour
    for bad in (
        1,
        {"order": [0, 0, 1], "position": 0, "cycle": 0},
        {"order": [0, 1, 2], "position": 3, "cycle": 0},
    ):
        with pytest.raises(ValueError, match="switch"):
            switch.from_state(bad)


# ---------------------------------------------------------------------------------------------
# Composed kinds: a game switch and a fresh channel permutation for every (game, cycle).

GAME_CHANNELS = (4, 6, 10, 3, 7)  # padded to 10 channels, as MinAtar's five games are


def game_cycle_env(seed: int = 0, every: int = 5, on: str = "step") -> NonStationary:
    """Five stub games of 4, 6, 10, 3 and 7 channels cycled with channel permutations.

    Episodes last 1000 steps with ``on="step"`` (every change truncates one), 3 with ``"episode"``.
    """
    length = 1000 if on == "step" else 3
    tasks = TaskSet(
        [
            functools.partial(CellEnv, shape=(c, 2, 10), name=f"g{i}", episode_len=length)
            for i, c in enumerate(GAME_CHANNELS)
        ]
    )
    change = Compose([Switch("shuffle"), PermuteObs("channels")])
    return NonStationary(tasks, change, Every(every), on=on, seed=seed)


def segments(env: NonStationary, n_steps: int, seed: int = 0) -> list[tuple[str, Any, tuple[int, ...]]]:
    """(game, latest due parameters, channel permutation) of every observation.

    The game and the permutation are read back from the observation; the parameters are the
    wrapper's latest due ones, which are the running task's with ``on="step"``.
    """
    obs, info = env.reset(seed=seed)
    out = []
    for _ in range(n_steps):
        game, channels = info["name"], GAME_CHANNELS[int(info["name"][1:])]
        padded = np.zeros((10, 2, 10), np.float32)
        padded[:channels] = info["raw"]
        # Read the permutation from the observation: output channel c is input channel read[c].
        # The game's own channels are distinct and positive; the padding is zero.
        read = []
        for c in range(10):
            matches = [k for k in range(10) if np.array_equal(obs[c], padded[k])]
            assert matches, "an output channel that is no input channel"
            read.append(matches[0] if obs[c].any() else -1)
        filled = [r for r in read if r >= 0]
        assert sorted(filled) == list(range(channels))  # every channel of the game, once
        tour, perm = env._params
        out.append((game, (tour, tuple(perm.tolist())), tuple(read)))
        obs, _, terminated, truncated, info = env.step(0)
        if terminated or truncated:
            obs, info = env.reset()
    return out


def test_compose_changes_the_game_and_draws_a_fresh_channel_permutation_per_game_and_cycle() -> None:
    env = game_cycle_env(every=5)
    assert env.observation_space.shape == (10, 2, 10)
    records = segments(env, 5 * 5 * 6)
    runs = [records[i : i + 5] for i in range(0, len(records), 5)]  # one segment per change
    pairs, perms = [], []
    for segment in runs:
        (game, (tour, perm), read) = segment[0]
        assert all(r[0] == game and r[2] == read for r in segment)  # fixed within a segment
        assert isinstance(tour, Tour) and f"g{tour.task}" == game
        # A true permutation of the 10 padded channels, and the one the observation shows.
        assert sorted(perm) == list(range(10))
        assert all(r < 0 or r == p for r, p in zip(read, perm, strict=True))
        pairs.append((game, tour.cycle))
        perms.append(perm)
    assert all(a[0] != b[0] for a, b in zip(pairs, pairs[1:], strict=False))  # every change: a new game
    assert len(set(pairs)) == len(pairs) == 30  # no (game, cycle) twice ...
    assert {c for _, c in pairs} == set(range(6))  # ... over six cycles of five games
    assert len(set(perms)) == len(perms)  # a fresh permutation for every (game, cycle)
    assert perms[0] == tuple(range(10))  # the first task is the original, as permute_obs's is
    orders = [tuple(g for g, c in pairs if c == k) for k in range(6)]
    assert len(set(orders)) > 1  # the game order is reshuffled between cycles
    # task_id counts changes: each (game, cycle, permutation) is a new task.
    assert env.task_id == env._num_changes == 30


def test_compose_is_determined_by_the_seed() -> None:
    def trace(seed: int) -> list[Any]:
        return segments(game_cycle_env(seed=seed), 60)

    assert trace(3) == trace(3) and trace(3) != trace(4)


def carry_on(env: NonStationary, n_steps: int) -> list[bytes]:
    """Step on from where ``env`` stands (resetting, unseeded, after every episode end)."""
    out = []
    for _ in range(n_steps):
        obs, _, terminated, truncated, _ = env.step(0)
        out.append(obs.tobytes())
        if terminated or truncated:
            out.append(env.reset()[0].tobytes())
    return out


@pytest.mark.parametrize("on", ["episode", "step"])
def test_compose_resumes_exactly(on: str) -> None:
    original = game_cycle_env(seed=2, every=4, on=on)
    segments(original, 33)
    state = original.get_state()
    assert state["change"] == "compose" and [name for name, _ in state["params"]] == ["switch", "permute_obs"]
    twin = pickle.loads(pickle.dumps(original))  # the trainer's checkpoints: mid-episode
    assert carry_on(twin, 21) == carry_on(original, 21)
    restored = game_cycle_env(seed=77, every=4, on=on)
    restored.set_state(pickle.loads(pickle.dumps(state)))
    copy_of_original = pickle.loads(pickle.dumps(original))
    copy_of_original.set_state(state)
    assert segments(restored, 40, seed=5) == segments(copy_of_original, 40, seed=5)


def test_compose_state_from_another_composition_is_refused() -> None:
    env = game_cycle_env()
    env.reset(seed=0)
    state = env.get_state()
    other = NonStationary(
        TaskSet([functools.partial(CellEnv, shape=(c, 2, 10)) for c in GAME_CHANNELS]),
        Compose([Switch("shuffle"), PermuteObs("all")]),
        Every(5),
        seed=0,
    )
    with pytest.raises(ValueError, match="permutation of range"):
        other.set_state(state)
    mixed = NonStationary(CellEnv(), Compose([PermuteObs(), RewardScale()]), Every(5), seed=0)
    with pytest.raises(ValueError, match=r"compose state must be \[\[name, state\], ...\]"):
        mixed.set_state({**mixed.get_state(), "params": state["params"]})


def test_compose_layers_parts_in_order() -> None:
    """Observation indices chain, action tables chain outer-first, reward scales multiply."""
    inner, outer = PermuteActions(), PermuteObs()
    env = NonStationary(
        CellEnv(), Compose([inner, outer, RewardScale((1.0, -2.0)), RewardScale((1.0, 3.0))]), At([1]), seed=0
    )
    env.reset(seed=0)
    env.step(0)
    obs, info = env.reset()
    (_, perm_a), (_, perm_o), _, _ = env._change.to_state(env._params)
    assert np.array_equal(obs.reshape(-1), info["raw"].reshape(-1)[perm_o])
    _, reward, _, _, info = env.step(1)
    assert reward == -6.0 and info["action"] == perm_a[1]


def test_compose_parts_are_bound_per_wrapper() -> None:
    """One composition configures several sub-envs: each binds its own copies of the parts."""
    change = Compose([Switch(), PermuteObs("channels")])
    a = NonStationary(TaskSet([CellEnv, CellEnv]), change, Every(3), seed=0)
    b = NonStationary(TaskSet([CellEnv, CellEnv]), change, Every(3), seed=0)
    assert a._change.parts[0]._taskset is a.env and b._change.parts[0]._taskset is b.env
    assert not hasattr(change.parts[0], "_taskset")


def test_compose_bad_parts() -> None:
    with pytest.raises(ValueError, match="at least two change kinds"):
        Compose([Switch()])
    with pytest.raises(ValueError, match="at most one switch"):
        Compose([Switch(), Switch("random")])
    with pytest.raises(ValueError, match="not compositions"):
        Compose([PermuteObs(), Compose([PermuteObs(), RewardScale()])])


@pytest.mark.filterwarnings("ignore:.*is out of date")
def test_minatar_games_cycled_with_a_channel_permutation_from_the_config() -> None:
    """The next issue's setting as a config builds it: five MinAtar games padded to 10 channels."""
    games = ("breakout", "asterix", "freeway", "seaquest", "space_invaders")
    ns = NonStationaryConfig(
        kind=["switch", "permute_obs"],
        every=30,
        on="step",
        tasks=games,
        options={"switch": {"order": "shuffle"}, "permute_obs": {"mode": "channels"}},
    )
    env_cfg = EnvConfig(id="breakout")
    check_nonstationary(env_cfg, ns)
    assert repr(make_change(ns)) == (
        "Compose([Switch(order='shuffle', first_cycle='listed'), "
        "PermuteObs(mode='channels', layout='chw', first_task='identity')])"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = build_sub_env(env_cfg, seed=0, index=0, nonstationary=ns)
    assert isinstance(env, NonStationary) and env.observation_space.shape == (10, 10, 10)
    obs, _ = env.reset(seed=0)
    seen = []
    for _ in range(30 * 6):
        obs, _, terminated, truncated, _ = env.step(int(env.action_space.sample()))
        assert obs.shape == (10, 10, 10) and obs in env.observation_space
        if terminated or truncated:
            tour, perm = env._params  # what the reset starts
            seen.append((tour.task, tour.cycle, tuple(perm.tolist())))
            obs, _ = env.reset()
            assert env.env.unwrapped.index == tour.task
            # Breakout has 4 of the 10 channels: its 6 padding channels sit where the permutation put them.
            if tour.task == 0:
                assert not obs[[c for c in range(10) if perm[c] >= 4]].any()
    assert len({s[:2] for s in seen}) >= 6 and len({s[2] for s in seen}) >= 6  # 6 changes, 7 tasks
