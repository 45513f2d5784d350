"""``dynamics``: env parameters (gravity, friction, constructor kwargs) changed on the schedule.

The physics really changes at the switch: Pendulum-v1's next angular velocity is checked against
the equation of motion computed by hand for each gravity, and a MuJoCo model's gravity, friction
and reward weight against the values set (and after unpickling, which rebuilds MuJoCo models).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from plasticrl.envs.changes import Dynamics, DynamicsOptions
from plasticrl.envs.make import EnvConfig, NonStationaryConfig, build_sub_env
from plasticrl.trainers.cli import main

REPO = Path(__file__).resolve().parents[2]


def pendulum(at: tuple[int, ...], params: dict, **options) -> object:
    ns = NonStationaryConfig(kind="dynamics", at=at, on="step", options={"params": params, **options})
    return build_sub_env(EnvConfig(id="Pendulum-v1"), 0, 0, ns)


def step_from(env, theta: float, theta_dot: float, torque: float) -> np.ndarray:
    """One step of the env from the state (θ, θ̇) with ``torque``; returns the observation."""
    env.unwrapped.state = np.array([theta, theta_dot])
    obs, *_ = env.step(np.array([torque], np.float32))
    return obs


def test_pendulum_follows_the_new_gravity_from_the_switch_on() -> None:
    # Pendulum-v1 (m = l = 1, dt = 0.05): θ̇' = θ̇ + (3g/2 · sin θ + 3u) · dt, θ' = θ + θ̇' · dt.
    # From θ = 0.5, θ̇ = 0, u = 0.5, sin 0.5 = 0.479425538604203:
    #   g = 10: θ̇' = (15 · 0.479425538604203 + 1.5) · 0.05 = 0.434569153953152
    #   g = 4:  θ̇' = ( 6 · 0.479425538604203 + 1.5) · 0.05 = 0.218827661581261
    env = pendulum((3,), {"g": [10.0, 4.0]})
    _, info = env.reset(seed=0)
    assert info["task_id"] == 0 and env.unwrapped.g == 10.0
    obs = step_from(env, 0.5, 0.0, 0.5)
    assert obs[2] == pytest.approx(0.434569153953152, abs=1e-6)
    assert np.arctan2(obs[1], obs[0]) == pytest.approx(0.5 + 0.434569153953152 * 0.05, abs=1e-6)
    for _ in range(2):  # steps 2 and 3: the change is due at step 3 and truncates the episode
        *_, terminated, truncated, _ = env.step(np.zeros(1, np.float32))
    assert truncated and not terminated
    _, info = env.reset()
    assert info["task_id"] == 1 and info["task_switched"] and env.unwrapped.g == 4.0
    obs = step_from(env, 0.5, 0.0, 0.5)
    assert obs[2] == pytest.approx(0.218827661581261, abs=1e-6)


def test_values_cycle_back_and_the_lifetime_state_round_trips() -> None:
    env = pendulum((2, 4), {"g": [10.0, 4.0, 1.0]})
    env.reset(seed=0)
    seen = [env.unwrapped.g]
    for _ in range(6):
        *_, terminated, truncated, _ = env.step(np.zeros(1, np.float32))
        if terminated or truncated:
            env.reset()
            seen.append(env.unwrapped.g)
    assert seen == [10.0, 4.0, 1.0]
    state = env.get_state()
    assert state["change"] == "dynamics" and state["params"] == 2
    fresh = pendulum((2, 4), {"g": [10.0, 4.0, 1.0]})
    fresh.reset(seed=1)
    fresh.set_state(state)
    fresh.reset()
    assert fresh.unwrapped.g == 1.0


def test_scale_mode_multiplies_the_envs_own_value() -> None:
    env = pendulum((2, 4), {"max_torque": [1.0, 0.5]}, mode="scale")
    env.reset(seed=0)
    values = [env.unwrapped.max_torque]
    for _ in range(5):
        *_, terminated, truncated, _ = env.step(np.zeros(1, np.float32))
        if terminated or truncated:
            env.reset()
            values.append(env.unwrapped.max_torque)
    assert values == [2.0, 1.0, 2.0]  # Pendulum-v1's own 2.0, halved, then back (cycle)


def test_mujoco_gravity_friction_and_reward_weight_change_and_survive_unpickling() -> None:
    pytest.importorskip("mujoco")
    params = {
        "model.opt.gravity": [[0.0, 0.0, -9.81], [0.0, 0.0, -2.0]],
        "model.geom_friction": [1.0, 0.5],
        "forward_reward_weight": [1.0, -1.0],  # HalfCheetah-v5 keeps it as _forward_reward_weight
    }
    ns = NonStationaryConfig(kind="dynamics", at=(3,), on="step", options={"params": params, "mode": "set"})
    env = build_sub_env(EnvConfig(id="HalfCheetah-v5"), 0, 0, ns)
    base = env.unwrapped
    friction_xml = base.model.geom_friction.copy()
    env.reset(seed=0)
    zero = np.zeros(env.action_space.shape, np.float32)
    for _ in range(3):
        *_, truncated, _ = env.step(zero)
    assert truncated
    env.reset()
    np.testing.assert_array_equal(base.model.opt.gravity, [0.0, 0.0, -2.0])
    np.testing.assert_array_equal(base.model.geom_friction, np.full_like(friction_xml, 0.5))
    _, reward, *_, info = env.step(zero)
    assert reward == pytest.approx(-info["x_velocity"])  # zero action: no control cost, w = -1
    # gymnasium's MuJoCo envs unpickle as fresh ones built from their kwargs: the values come back.
    restored = pickle.loads(pickle.dumps(env))
    assert restored.unwrapped is not base
    np.testing.assert_array_equal(restored.unwrapped.model.opt.gravity, [0.0, 0.0, -2.0])
    assert restored.unwrapped._forward_reward_weight == -1.0


def test_options_validation() -> None:
    assert DynamicsOptions(params={"g": [10, 4]}).params == {"g": (10.0, 4.0)}
    for params, message in [
        ({"g": [10.0]}, r"Dynamics.params\['g'\] must be a list of at least two values"),
        ({"g": [10.0, "x"]}, r"Dynamics.params\['g'\]\[1\] must be a finite number"),
        ({"g": [10.0, float("nan")]}, r"Dynamics.params\['g'\]\[1\] must be a finite number"),
        ({"g": [1.0, 2.0], "m": [1.0, 2.0, 3.0]}, "one value per task each"),
        ({"model..opt": [1.0, 2.0]}, "is not an attribute path"),
    ]:
        with pytest.raises(ValueError, match=message):
            DynamicsOptions(params=params)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, r"no parameters given.*numeric attributes of Pendulum-v1: \['dt', 'g', 'l', 'm'"),
        ({"gravity": [1.0, 2.0]}, r"has no parameter 'gravity'; numeric attributes of the env: \['dt', 'g'"),
        ({"g": [[1.0, 2.0], [3.0, 4.0]]}, r"Pendulum-v1.g is a number, got \[1.0, 2.0\]"),
        ({"render_mode": [1.0, 2.0]}, r"Pendulum-v1.render_mode is a NoneType, not a number"),
        (
            {"model.opt.gravity": [1.0, 2.0]},
            r"Pendulum-v1 has no 'model.opt.gravity' \(the env has no attribute",
        ),
    ],
)
def test_bad_parameters_stop_at_construction_with_the_numeric_attributes(params, message) -> None:
    with pytest.raises(ValueError, match=message) as info:
        pendulum((5,), params)
    assert "\n" not in str(info.value) and str(info.value).startswith("nonstationary.options.params")


def test_a_wrong_array_shape_names_the_expected_shape() -> None:
    pytest.importorskip("mujoco")
    ns = NonStationaryConfig(
        kind="dynamics", every=5, options={"params": {"model.opt.gravity": [[0, 0, -9.8], [1, 2]]}}
    )
    with pytest.raises(
        ValueError,
        match=r"\[1.0, 2.0\] does not broadcast to HalfCheetah-v5.model.opt.gravity's shape \(3,\)",
    ):
        build_sub_env(EnvConfig(id="HalfCheetah-v5"), 0, 0, ns)


def test_cli_refuses_an_unknown_parameter_with_exit_2_and_writes_nothing(tmp_path: Path, capsys) -> None:
    code = main(
        [
            "train",
            str(REPO / "configs/control/ppo_pendulum_gravity.yaml"),
            "nonstationary.options.params={gravity: [10.0, 4.0]}",
            f"logging.dir={tmp_path / 'runs'}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "'gravity'" in err and "'g'" in err
    assert not (tmp_path / "runs").exists()


def test_the_gravity_preset_trains_through_a_change(runs_dir: Path) -> None:
    from plasticrl.trainers.config import load_config
    from plasticrl.trainers.run import train

    overrides = [
        "total_steps=2048",
        "nonstationary.every=1024",
        "env.num_envs=2",
        "agent.num_steps=256",
        "metrics.every=1",
        "logging.every=1024",
        "logging.progress=false",
        "checkpoint.every=0",
        f"logging.dir={runs_dir}",
    ]
    cfg = load_config(REPO / "configs/control/ppo_pendulum_gravity.yaml", overrides)
    assert cfg.nonstationary.kind == "dynamics"
    assert isinstance(Dynamics(**dict(cfg.nonstationary.options)), Dynamics)
    result = train(cfg, quiet=True)
    assert result.status == "finished"
