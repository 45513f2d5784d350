"""Interventions inside both training loops: they act, they compose from config, they resume exactly,
they never disturb the other random streams, and impossible combinations fail at start-up.

DQN runs are the tiny CartPole config of ``tests/conftest.py`` (600 steps, update u at env step
99 + u); PPO runs the tiny config of ``tests/trainers/test_on_policy.py`` (8 updates of 128 steps).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from plasticrl.agents.networks import NetworkConfig, mlp
from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, load_checkpoint
from plasticrl.trainers.config import ConfigError, ExperimentConfig, load_config
from plasticrl.trainers.experiments.plot import read_scalars
from plasticrl.trainers.run import resume, train
from torch import nn

from tests.conftest import TINY_MINATAR_OVERRIDES
from tests.trainers.test_on_policy import TINY_PPO_OVERRIDES
from tests.trainers.test_training import assert_agents_equal, assert_tree_equal, episodic_returns

MakeConfig = Callable[..., ExperimentConfig]
DEAD_MLP = "network.name=tests.trainers.test_interventions_training:dead_mlp"


def dead_mlp(observation_space: gym.Space, action_space: gym.Space, cfg: NetworkConfig) -> nn.Module:
    """The standard ``mlp`` with the first half of its first hidden layer dead by construction.

    Zero incoming weights and bias −10: the units output ReLU(−10) = 0 on every input, get no
    gradient, and stay dead under any optimizer — until an intervention recycles them.
    """
    net = mlp(observation_space, action_space, cfg)
    first = next(m for m in net.modules() if isinstance(m, nn.Linear))
    dead = first.out_features // 2
    with torch.no_grad():
        first.weight[:dead] = 0.0
        first.bias[:dead] = -10.0
    return net


def tags(run_dir: Path, prefix: str = "interventions/") -> dict[str, tuple[list[int], list[float]]]:
    return {k: (list(s), list(v)) for k, (s, v) in read_scalars(run_dir).items() if k.startswith(prefix)}


def ppo_config(runs_dir: Path, *extra: str) -> ExperimentConfig:
    return load_config(None, [*TINY_PPO_OVERRIDES, f"logging.dir={runs_dir}", *extra])


# ----------------------------------------------------------------------------- each intervention acts


def test_dqn_redo_recycles_the_dead_units(make_tiny_config: MakeConfig) -> None:
    result = train(make_tiny_config(DEAD_MLP, "interventions=[{name: redo, every: 100}]", "metrics.every=0"))
    assert result.status == "finished" and result.updates == 501
    logged = tags(result.run_dir)
    steps, reset = logged["interventions/redo/reset_units"]
    assert steps == [199, 299, 399, 499, 599]  # updates 100, 200, ..., 500
    assert reset[0] >= 16  # the 16 units dead by construction, at least
    assert logged["interventions/redo/reset_units/1"][1][0] >= 16
    first = result.agent.q_net[1]
    assert torch.all(first.weight[:16].abs().sum(1) > 0)  # recycled, then trained


def test_dqn_cbp_replaces_units(make_tiny_config: MakeConfig) -> None:
    iv = "interventions=[{name: cbp, maturity: 50, replacement_rate: 1e-2, batch_size: 16}]"
    result = train(make_tiny_config(iv, "metrics.every=0"))
    steps, total = tags(result.run_dir)["interventions/cbp/replaced_total"]
    # How many units are replaced depends only on ages (replaced units are young again for 50
    # updates), not on the utilities: replay the credit bookkeeping of one 32-unit layer.
    ages, credit, per_layer = [0] * 32, 0.0, []
    for _ in range(501):
        ages = [a + 1 for a in ages]
        eligible = [i for i, a in enumerate(ages) if a > 50]
        count = 0
        if eligible:
            credit += 1e-2 * len(eligible)
            count = min(int(credit), len(eligible))
            credit -= count
            for i in eligible[:count]:
                ages[i] = 0
        per_layer.append(count)
    assert steps[0] == 99 + next(u for u, c in enumerate(per_layer, start=1) if c)
    assert total[-1] == 2 * sum(per_layer)  # two hidden layers
    assert total == sorted(total)


def test_dqn_shrink_perturb_at_task_switches(make_tiny_config: MakeConfig) -> None:
    switching = ("nonstationary.kind=permute_obs", "nonstationary.every=200", "nonstationary.on=step")
    iv = "interventions=[{name: shrink_perturb, every: 0, on_task_switch: true, p: 0.5, sigma: 0.1}]"
    result = train(make_tiny_config(*switching, iv, "metrics.every=0"))
    task_steps, _ = read_scalars(result.run_dir)["env/task_id"]
    steps, applied = tags(result.run_dir)["interventions/shrink_perturb/applied"]
    assert list(task_steps) == [1, 200, 400, 600]  # the first point is the initial task
    assert steps == [200, 400, 600] and applied == [1.0, 2.0, 3.0]  # at the update of each switch step


@pytest.mark.parametrize("name", ["redo", "cbp", "shrink_perturb"])
def test_ppo_interventions_act(runs_dir: Path, name: str) -> None:
    options = {
        "redo": "{name: redo, every: 2}",
        "cbp": "{name: cbp, maturity: 2, replacement_rate: 0.05}",
        "shrink_perturb": "{name: shrink_perturb, every: 0, on_task_switch: true}",
    }[name]
    extra = [DEAD_MLP, f"interventions=[{options}]", "metrics.every=0", "metrics.ntk_every=0"]
    if name == "shrink_perturb":
        extra += ["nonstationary.kind=permute_obs", "nonstationary.every=300", "nonstationary.on=step"]
    result = train(ppo_config(runs_dir, *extra))
    assert result.status == "finished" and result.updates == 8
    logged = tags(result.run_dir)
    if name == "redo":
        steps, reset = logged["interventions/redo/reset_units"]
        assert steps == [256, 512, 768, 1024]
        assert logged["interventions/redo/reset_units/actor.1"][1][0] >= 16
        assert logged["interventions/redo/reset_units/critic.1"][1][0] >= 16
    elif name == "cbp":
        assert logged["interventions/cbp/replaced_total"][1][-1] > 0
    else:  # switches at steps 300, 600, 900: handed to the update that ends each rollout
        assert logged["interventions/shrink_perturb/applied"] == ([384, 640, 1024], [1.0, 2.0, 3.0])


def test_adamo_redo_cbp_layernorm_crelu_minatar_from_config(make_tiny_config: MakeConfig) -> None:
    cfg = make_tiny_config(
        *TINY_MINATAR_OVERRIDES,
        "total_steps=300",
        "optimizer.name=adamo",
        "network.layernorm=true",
        "network.activation=crelu",
        "interventions=[{name: redo, every: 50}, {name: cbp, maturity: 20, replacement_rate: 0.05}]",
        "metrics.every=100",
        "metrics.probe_size=16",
        "metrics.ntk_probe_size=8",
    )
    result = train(cfg)
    assert result.status == "finished"
    logged = tags(result.run_dir)
    assert logged["interventions/redo/reset_units"][0] == [149, 199, 249, 299]
    assert "interventions/redo/reset_units/conv" in logged and "interventions/redo/reset_units/fc" in logged
    assert logged["interventions/cbp/replaced_total"][1][-1] > 0
    assert all(torch.isfinite(p).all() for p in result.agent.q_net.parameters())


# ----------------------------------------------------------------------------- streams and resume


def test_idle_interventions_leave_the_run_unchanged(make_tiny_config: MakeConfig) -> None:
    # CBP that never replaces still draws a probe batch every update, and S&P with p = 1, σ = 0 is
    # the identity: neither may change what the agent, the replay or the metrics see.
    plain = train(
        make_tiny_config(
            "logging.name=plain", "metrics.every=100", "metrics.probe_size=16", "metrics.ntk_probe_size=8"
        )
    )
    idle = train(
        make_tiny_config(
            "logging.name=idle",
            "metrics.every=100",
            "metrics.probe_size=16",
            "metrics.ntk_probe_size=8",
            "interventions=[{name: cbp, maturity: 100000}, {name: shrink_perturb, p: 1, sigma: 0}]",
        )
    )
    assert_agents_equal(plain.agent, idle.agent)
    assert episodic_returns(plain.run_dir) == episodic_returns(idle.run_dir)
    plain_metrics = read_scalars(plain.run_dir)["plasticity/srank"]
    assert plain_metrics == read_scalars(idle.run_dir)["plasticity/srank"]


RESUME_INTERVENTIONS = (
    "interventions=[{name: redo, every: 50}, {name: cbp, maturity: 20, replacement_rate: 0.01},"
    " {name: shrink_perturb, every: 0, on_task_switch: true, p: 0.9, sigma: 0.01}]"
)


def test_dqn_resume_with_interventions_equals_uninterrupted_run(make_tiny_config: MakeConfig) -> None:
    # Two sub-envs and replay ratio 0.25: a task switch can wait for its update across the split.
    extra = (
        DEAD_MLP,
        RESUME_INTERVENTIONS,
        "env.num_envs=2",
        "agent.replay_ratio=0.25",
        "nonstationary.kind=permute_obs",
        "nonstationary.every=150",
        "nonstationary.on=step",
        "optimizer.name=rmsprop",
        "optimizer.centered=true",
        "optimizer.momentum=0.5",
    )
    full = make_tiny_config(*extra, "logging.name=full")
    a = train(full)
    b1 = train(make_tiny_config(*extra, "logging.name=half", "total_steps=300"))
    b = resume(b1.run_dir, ["total_steps=600"])
    assert b.status == "finished"
    assert_agents_equal(a.agent, b.agent)
    state_a = load_checkpoint(a.run_dir / CHECKPOINT_NAME)
    state_b = load_checkpoint(b.run_dir / CHECKPOINT_NAME)
    for key in ("interventions", "intervention_rng", "loop"):
        assert_tree_equal(state_a[key], state_b[key], key)
    assert tags(a.run_dir) == tags(b.run_dir)
    logged = tags(a.run_dir)
    assert logged["interventions/redo/reset_units"][1][0] >= 16
    assert logged["interventions/shrink_perturb/applied"][1] == [1.0, 2.0, 3.0]


def test_ppo_resume_with_interventions_equals_uninterrupted_run(runs_dir: Path) -> None:
    extra = (
        DEAD_MLP,
        "interventions=[{name: redo, every: 2}, {name: cbp, maturity: 2, replacement_rate: 0.02}]",
    )
    a = train(ppo_config(runs_dir, *extra, "logging.name=full"))
    b1 = train(ppo_config(runs_dir, *extra, "logging.name=half", "total_steps=512"))
    b = resume(b1.run_dir, ["total_steps=1024"])
    for x, y in zip(a.agent.model.parameters(), b.agent.model.parameters(), strict=True):
        assert torch.equal(x, y)
    state_a = load_checkpoint(a.run_dir / CHECKPOINT_NAME)
    state_b = load_checkpoint(b.run_dir / CHECKPOINT_NAME)
    assert_tree_equal(state_a["agent"]["optimizer"], state_b["agent"]["optimizer"], "optimizer")
    assert_tree_equal(state_a["interventions"], state_b["interventions"], "interventions")
    assert tags(a.run_dir) == tags(b.run_dir)


# ----------------------------------------------------------------------------- start-up errors


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("network.name=isometric_mlp", "interventions=[{name: redo}]"), "redo cannot run on this network"),
        (("network.name=isometric_mlp", "interventions=[{name: shrink_perturb}]"), "parametrized"),
        (("optimizer.name=torch.optim:Adagrad", "interventions=[{name: cbp}]"), "Adagrad is not supported"),
        (("interventions=[{name: recycle}]",), "unknown intervention 'recycle'"),
    ],
)
def test_incompatible_combinations_fail_at_start_up(
    make_tiny_config: MakeConfig, runs_dir: Path, extra: tuple[str, ...], message: str
) -> None:
    for make in (make_tiny_config, lambda *e: ppo_config(runs_dir, *e)):
        with pytest.raises(ValueError, match=message):
            train(make(*extra))
    assert list(runs_dir.iterdir()) == []  # nothing written


def test_bad_options_are_config_errors_naming_the_override(make_tiny_config: MakeConfig) -> None:
    bad = "interventions=[{name: redo, taus: 0.1}]"
    with pytest.raises(ConfigError, match=r"command-line override .*taus.*did you mean 'tau'"):
        make_tiny_config(bad)
    with pytest.raises(ConfigError, match=r"interventions\[0\]\.maturity: expected an integer, got 'soon'"):
        make_tiny_config("interventions=[{name: cbp, maturity: soon}]")
    cfg = make_tiny_config("interventions=[{name: shrink_perturb, sigma: 1e-4, every: 1e2}]")
    assert cfg.interventions[0].options == {"sigma": 1e-4, "every": 100.0}
