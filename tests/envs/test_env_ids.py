"""Env ids the way gymnasium spells them, plugin imports, the working directory, env.wrappers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from plasticrl.envs.make import EnvConfig, FlattenObservation, make_env, parse_wrapper, resolve_env_id

# ---------------------------------------------------------------------------------------------
# module:EnvId and module:ClassOrFactory, in that order


class Recorder(gym.Wrapper):
    """Appends its tag to ``info["order"]`` on reset: shows the order wrappers were applied in."""

    def __init__(self, env: gym.Env, tag: str) -> None:
        super().__init__(env)
        self.tag = tag

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "order": [*info.get("order", []), self.tag]}


def cartpole_factory(**kwargs) -> gym.Env:
    return gym.make("CartPole-v1", **kwargs)


# A module attribute spelled like a registered id: the id must win (tried first).
globals()["CartPole-v1"] = None


def test_module_colon_id_imports_the_module_then_makes_the_id() -> None:
    pytest.importorskip("minigrid")
    spec = "minigrid:MiniGrid-Empty-5x5-v0"
    assert resolve_env_id(spec) == spec
    env = make_env(EnvConfig(id=spec))
    assert type(env.unwrapped).__name__ == "EmptyEnv"
    assert isinstance(env.observation_space, gym.spaces.Dict)


def test_id_is_tried_before_the_attribute() -> None:
    # tests.envs.test_env_ids has an attribute named 'CartPole-v1' (None): the registered id is meant
    env = make_env(EnvConfig(id="tests.envs.test_env_ids:CartPole-v1"))
    assert env.spec is not None and env.spec.id == "CartPole-v1"


def test_attribute_when_no_such_id() -> None:
    env = make_env(EnvConfig(id="tests.envs.test_env_ids:cartpole_factory", max_episode_steps=3))
    assert isinstance(env, gym.wrappers.TimeLimit)
    env.reset(seed=0)
    assert [env.step(0)[3] for _ in range(3)] == [False, False, True]


def test_both_readings_failing_say_which_was_meant() -> None:
    with pytest.raises(ValueError) as err:
        resolve_env_id("gymnasium:CartPole-v9")
    msg = str(err.value)
    assert "\n" not in msg
    assert "env.id='gymnasium:CartPole-v9'" in msg
    assert "neither an env id registered by importing 'gymnasium'" in msg
    assert "did you mean 'CartPole-v1'" in msg
    assert "nor a class or factory: module 'gymnasium' has no attribute 'CartPole-v9'" in msg


def test_unimportable_module_names_the_key_and_the_extras() -> None:
    with pytest.raises(
        ValueError, match=r"env.id='no_such_pkg_xyz:Env-v0': cannot import module 'no_such_pkg_xyz'"
    ):
        resolve_env_id("no_such_pkg_xyz:Env-v0")
    with pytest.raises(ValueError, match=r"expected 'module:EnvId'"):
        resolve_env_id(":CartPole-v1")


def test_plugin_namespace_without_import_gets_a_hint() -> None:
    with pytest.raises(
        ValueError, match=r"ALE ids need env.imports: \[ale_py\], or env.id=ale_py:ALE/NoSuchGame-v5"
    ):
        resolve_env_id("ALE/NoSuchGame-v5")  # unregistered with or without ale_py


# ---------------------------------------------------------------------------------------------
# env.imports


def test_env_imports_register_plugin_ids() -> None:
    pytest.importorskip("minigrid")
    cfg = EnvConfig(id="MiniGrid-Empty-5x5-v0", imports=("minigrid",))
    assert cfg.imports == ("minigrid",)
    assert resolve_env_id(cfg.id) == "MiniGrid-Empty-5x5-v0"
    assert make_env(cfg).unwrapped.__class__.__name__ == "EmptyEnv"


@pytest.mark.parametrize(
    ("imports", "message"),
    [
        (("no_such_pkg_xyz",), r"env.imports\[0\]='no_such_pkg_xyz': cannot import module 'no_such_pkg_xyz'"),
        (("gymnasium", "a:b"), r"env.imports\[1\]: expected a module name such as 'ale_py', got 'a:b'"),
        ("gymnasium", r"env.imports must be a list, got 'gymnasium'"),
    ],
)
def test_bad_env_imports(imports, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EnvConfig(imports=imports)


def test_user_module_in_the_working_directory_without_pythonpath(tmp_path: Path) -> None:
    (tmp_path / "my_gridworld.py").write_text(
        textwrap.dedent(
            """
            import gymnasium as gym, numpy as np
            class Line(gym.Env):
                observation_space = gym.spaces.Box(0, 1, (2,), np.float32)
                action_space = gym.spaces.Discrete(2)
                def reset(self, *, seed=None, options=None):
                    return np.zeros(2, np.float32), {}
                def step(self, a):
                    return np.ones(2, np.float32), 1.0, True, False, {}
            gym.register("MyLine-v0", entry_point=Line)
            """
        )
    )
    code = (
        "from plasticrl.envs.make import EnvConfig, make_env\n"
        "e = make_env(EnvConfig(id='my_gridworld:Line'))\n"
        "f = make_env(EnvConfig(id='my_gridworld:MyLine-v0'))\n"
        "g = make_env(EnvConfig(id='MyLine-v0', imports=['my_gridworld']))\n"
        "print(type(e).__name__, f.spec.id, g.spec.id)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -c with an explicit sys.path without the cwd: what the `plasticrl` console script sees
    run = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            "import sys; sys.path = [p for p in sys.path if p not in ('', '.')]; "
            + code.replace("\n", "; ").rstrip("; "),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["Line", "MyLine-v0", "MyLine-v0"]


# ---------------------------------------------------------------------------------------------
# env.wrappers


def test_wrappers_applied_in_order_by_name_module_path_and_kwargs() -> None:
    cfg = EnvConfig(
        id="CartPole-v1",
        wrappers=(
            {"name": "tests.envs.test_env_ids:Recorder", "tag": "first"},
            {"name": "tests.envs.test_env_ids:Recorder", "tag": "second"},
            {"name": "FrameStackObservation", "stack_size": 2},
            "FlattenObservation",
        ),
    )
    env = make_env(cfg)
    assert isinstance(env, FlattenObservation)
    assert isinstance(env.env, gym.wrappers.FrameStackObservation)
    assert env.observation_space.shape == (8,)  # stacked, then flattened
    obs, info = env.reset(seed=0)
    assert info["order"] == ["first", "second"]  # the first entry is innermost
    np.testing.assert_array_equal(obs[:4], obs[4:])  # the reset padding: two copies of the first obs


def test_flatten_observation_flattens_dict_spaces_and_pickles() -> None:
    import pickle

    space = gym.spaces.Dict({"a": gym.spaces.Box(0, 1, (2, 2)), "b": gym.spaces.Discrete(3)})

    class DictEnv(gym.Env):
        observation_space = space
        action_space = gym.spaces.Discrete(2)

        def reset(self, *, seed=None, options=None):
            return {"a": np.full((2, 2), 0.5, np.float32), "b": 2}, {}

    env = FlattenObservation(DictEnv())
    assert env.observation_space.shape == (4 + 3,)
    obs, _ = env.reset()
    np.testing.assert_array_equal(obs, [0.5, 0.5, 0.5, 0.5, 0, 0, 1])
    pickle.dumps(FlattenObservation(gym.make("CartPole-v1")))


def test_unpicklable_wrappers_are_refused_at_build() -> None:
    with pytest.raises(
        ValueError, match=r"env.wrappers\[0\]: DtypeObservation cannot be pickled, and checkpoints"
    ):
        make_env(EnvConfig(id="CartPole-v1", wrappers=({"name": "DtypeObservation", "dtype": "float64"},)))


def test_wrappers_go_inside_the_nonstationarity_wrapper() -> None:
    from plasticrl.envs.make import NonStationaryConfig, build_sub_env
    from plasticrl.envs.nonstationary import NonStationary

    cfg = EnvConfig(id="CartPole-v1", wrappers=({"name": "tests.envs.test_env_ids:Recorder", "tag": "w"},))
    env = build_sub_env(cfg, 0, 0, NonStationaryConfig(kind="permute_obs", every=10))
    assert isinstance(env, NonStationary)
    assert isinstance(env.env, Recorder)


def test_frame_stack_through_wrappers_with_kwargs() -> None:
    env = make_env(
        EnvConfig(id="CartPole-v1", wrappers=({"name": "FrameStackObservation", "stack_size": 3},))
    )
    assert env.observation_space.shape == (3, 4)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "FlattenObservaton",
            r"env.wrappers\[0\]: unknown wrapper 'FlattenObservaton'; did you mean 'FlattenObservation'",
        ),
        ({"stack_size": 4}, r"env.wrappers\[0\]: expected a wrapper name or a mapping \{name: Wrapper"),
        (3, r"env.wrappers\[0\]: expected a wrapper name"),
        (":W", r"env.wrappers\[0\]: invalid wrapper ':W'; expected a name or 'module:Class'"),
    ],
)
def test_bad_wrapper_entries_stop_at_config_time(entry, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        EnvConfig(wrappers=(entry,))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "tests.envs.test_env_ids:Nope",
            r"env.wrappers\[0\]: module 'tests.envs.test_env_ids' has no attribute 'Nope'",
        ),
        ("no_such_pkg_xyz:W", r"env.wrappers\[0\]='no_such_pkg_xyz:W': cannot import module"),
    ],
)
def test_module_wrappers_import_when_the_env_is_made(entry: str, message: str) -> None:
    cfg = EnvConfig(id="CartPole-v1", wrappers=(entry,))  # a preset loads without its plugin installed
    with pytest.raises(ValueError, match=message) as err:
        make_env(cfg)
    assert "\n" not in str(err.value)


def test_unknown_wrapper_lists_the_valid_choices() -> None:
    with pytest.raises(
        ValueError, match=r"valid: 'module:Class' or one of \[.*'AtariPreprocessing'.*'ClipTrainingReward'"
    ):
        parse_wrapper("Nope", "env.wrappers[2]")


def test_wrapper_kwargs_rejected_name_the_entry() -> None:
    with pytest.raises(
        ValueError, match=r"env.wrappers\[0\]: kwargs \{'stack': 4\} rejected by FrameStackObservation"
    ):
        make_env(EnvConfig(id="CartPole-v1", wrappers=({"name": "FrameStackObservation", "stack": 4},)))


def test_clip_training_reward_keeps_the_unclipped_return() -> None:
    from plasticrl.envs.make import ClipTrainingReward

    env = ClipTrainingReward(gym.wrappers.TransformReward(gym.make("CartPole-v1"), lambda r: 5.0 * r))
    env.reset(seed=0)
    info, rewards = {}, []
    done = False
    while not done:
        _, r, term, trunc, info = env.step(0)
        rewards.append(r)
        done = term or trunc
    assert set(rewards) == {1.0}
    assert info["unclipped_episode"] == {"r": 5.0 * len(rewards), "l": len(rewards)}
