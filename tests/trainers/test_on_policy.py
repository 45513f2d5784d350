"""The on-policy loop end to end: determinism, resume equivalence, async envs, truncation bootstrap,
plasticity tools, non-stationarity, NaN stops and the presets.

Every run is a tiny CartPole PPO config (1024 steps of 2 envs, 64-step rollouts: well under a second).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from plasticrl.agents.ppo import PPOConfig
from plasticrl.plasticity.adamo import AdamO
from plasticrl.trainers import on_policy
from plasticrl.trainers import session as session_module
from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, load_checkpoint
from plasticrl.trainers.cli import main
from plasticrl.trainers.config import ExperimentConfig, load_config
from plasticrl.trainers.run import resume, train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import TINY_MINATAR_OVERRIDES
from tests.trainers.test_training import _InterruptAfter, assert_tree_equal, episodic_returns

TINY_PPO_OVERRIDES: tuple[str, ...] = (
    "agent.name=ppo",
    "env.id=CartPole-v1",
    "env.num_envs=2",
    "total_steps=1024",
    "agent.num_steps=64",  # a rollout is 128 env steps: 8 updates
    "agent.num_minibatches=2",
    "agent.update_epochs=2",
    "network.hidden_sizes=[32, 32]",
    "logging.every=128",
    "logging.progress=false",
    "checkpoint.every=0",
    "metrics.every=2",
    "metrics.ntk_every=4",
    "metrics.probe_size=32",
    "metrics.ntk_probe_size=4",
)
CLEANRL_TAGS = {
    "losses/value_loss",
    "losses/policy_loss",
    "losses/entropy",
    "losses/approx_kl",
    "losses/old_approx_kl",
    "losses/clipfrac",
    "losses/explained_variance",
    "charts/learning_rate",
    "charts/SPS",
    "charts/episodic_return",
}
PRESETS = ["cartpole/ppo", "minatar/ppo_breakout", "minatar/ppo_permuted", "minatar/ppo_permuted_adamo"]

MakeConfig = Callable[..., ExperimentConfig]


@pytest.fixture
def make_config(runs_dir: Path) -> MakeConfig:
    """``make_config("seed=3", ...)``: the tiny PPO config with extra overrides."""

    def make(*extra: str) -> ExperimentConfig:
        return load_config(None, [*TINY_PPO_OVERRIDES, f"logging.dir={runs_dir}", *extra])

    return make


def scalar_tags(run_dir: Path) -> set[str]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def assert_agents_equal(a: Any, b: Any) -> None:
    assert_tree_equal(a.state_dict(), b.state_dict(), "agent")


# ---------------------------------------------------------------------------------------------
# Determinism and resume


def test_same_seed_same_run_other_seed_differs(make_config: MakeConfig) -> None:
    a = train(make_config("logging.name=a"))
    b = train(make_config("logging.name=b"))
    c = train(make_config("logging.name=c", "seed=1"))
    for result in (a, b, c):
        assert result.status == "finished"
        assert (result.global_step, result.updates, result.grad_steps) == (1024, 8, 32)
    assert_agents_equal(a.agent, b.agent)
    assert len(episodic_returns(a.run_dir)) >= 10
    assert episodic_returns(a.run_dir) == episodic_returns(b.run_dir)
    assert episodic_returns(c.run_dir) != episodic_returns(a.run_dir)
    assert not torch.equal(*(next(r.agent.model.parameters()) for r in (a, c)))
    tags = scalar_tags(a.run_dir)
    assert tags >= CLEANRL_TAGS
    assert {"plasticity/dormant_fraction/tau_0/actor.2", "plasticity/srank/critic.5"} <= tags
    assert "plasticity/ntk_condition_number" in tags


RESUME_VARIANTS = {
    "cartpole": (),
    "minatar_shared_trunk_spectral": (
        *TINY_MINATAR_OVERRIDES,
        "agent.shared_trunk=true",
        "agent.num_steps=32",
        "total_steps=512",
        "regularizers=[{name: spectral, coef: 0.001}]",
    ),
    "async_target_kl": ("env.vector=async", "agent.target_kl=0.002", "env.max_episode_steps=40"),
}


@pytest.mark.parametrize("variant", list(RESUME_VARIANTS))
def test_resume_equals_uninterrupted_run(make_config: MakeConfig, variant: str) -> None:
    extra = RESUME_VARIANTS[variant]
    full = make_config(*extra, "logging.name=full")
    a = train(full)
    half = full.total_steps // 2
    b1 = train(make_config(*extra, "logging.name=half", f"total_steps={half}"))
    assert b1.global_step == half and b1.updates > 0
    b = resume(b1.run_dir, [f"total_steps={full.total_steps}"])
    assert b.status == "finished" and b.global_step == full.total_steps
    assert_agents_equal(a.agent, b.agent)
    state_a = load_checkpoint(a.run_dir / CHECKPOINT_NAME)
    state_b = load_checkpoint(b.run_dir / CHECKPOINT_NAME)
    np.testing.assert_array_equal(state_a["obs"], state_b["obs"])
    assert_tree_equal(state_a["episodes"], state_b["episodes"], "episodes")
    assert_tree_equal(state_a["probe"], state_b["probe"], "probe")
    assert episodic_returns(a.run_dir) == episodic_returns(b.run_dir)


def test_async_envs_give_the_sync_run(make_config: MakeConfig) -> None:
    sync = train(make_config("logging.name=sync", "total_steps=512"))
    async_ = train(make_config("logging.name=async", "total_steps=512", "env.vector=async"))
    assert_agents_equal(sync.agent, async_.agent)
    assert episodic_returns(sync.run_dir) == episodic_returns(async_.run_dir)


def test_interrupted_run_resumes_identically_with_lr_annealing(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = ("optimizer.lr_schedule=linear", "optimizer.lr=0.01")
    a = train(make_config(*extra, "logging.name=full"))
    with monkeypatch.context() as m:
        _InterruptAfter.limit = 3  # the loop checks once per rollout
        m.setattr(session_module, "GracefulInterrupt", _InterruptAfter)
        b1 = train(make_config(*extra, "logging.name=cut"))
    assert b1.status == "interrupted" and b1.global_step == 3 * 128
    b = resume(b1.run_dir)
    assert b.status == "finished"
    assert_agents_equal(a.agent, b.agent)
    # 8 updates annealed over 8 scheduler steps: every group's lr ends at 0
    lrs = [g["lr"] for g in b.agent.optimizer.param_groups]
    assert len(lrs) == 3 and lrs == [0.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------
# Autoreset: truncations bootstrap from the final observation


def test_truncated_episodes_bootstrap_from_their_final_observation(
    make_config: MakeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # TinyEnv: observation [t, episode], never terminates within the 3-step time limit.
    seen: list[dict[str, torch.Tensor]] = []
    real_gae = on_policy.gae

    def spy(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, *args: Any) -> Any:
        seen.append(
            {
                "values": values.clone(),
                "next_values": next_values.clone(),
                "terms": args[0].clone(),
                "truncs": args[1].clone(),
            }
        )
        return real_gae(rewards, values, next_values, *args)

    monkeypatch.setattr(on_policy, "gae", spy)
    result = train(
        make_config(
            "env.id=tests.envs.test_make:TinyEnv",
            "env.kwargs={length: 100}",
            "env.max_episode_steps=3",
            "total_steps=256",
            "optimizer.name=sgd",
            "optimizer.lr=1e-30",  # the weights stay put, so V can be recomputed afterwards
            "metrics.every=0",
            "metrics.ntk_every=0",
        )
    )
    agent = result.agent
    first = seen[0]
    assert not first["terms"].any()
    truncated = first["truncs"].bool()
    assert truncated[2::3].all() and truncated.sum() == 2 * len(range(2, 64, 3))
    # episode k of each sub-env ends at step 3k + 2 with final observation [3, k]
    final_obs = torch.tensor([[3.0, float(k)] for k in range(len(range(2, 64, 3)))])
    torch.testing.assert_close(first["next_values"][2::3, 0], agent.value(final_obs))
    reset_values = first["values"][3::3, 0]  # V of the reset observations, never bootstrapped from
    assert not torch.allclose(first["next_values"][2:-1:3, 0], reset_values)
    inside = ~truncated[:-1]
    torch.testing.assert_close(first["next_values"][:-1][inside], first["values"][1:][inside])


# ---------------------------------------------------------------------------------------------
# Plasticity tools and non-stationarity, unchanged


@pytest.mark.parametrize(
    "extra",
    [
        ("optimizer.name=adamo",),
        ("regularizers=[{name: isometry, coef: 0.001}]",),
        ("regularizers=[{name: spectral, coef: 0.001}]", "agent.shared_trunk=true"),
    ],
    ids=["adamo", "isometry", "spectral"],
)
def test_plasticity_tools_run_with_ppo(make_config: MakeConfig, extra: tuple[str, ...]) -> None:
    result = train(make_config(*extra, "total_steps=256"))
    assert result.status == "finished" and result.updates == 2
    tags = scalar_tags(result.run_dir)
    assert {
        "losses/policy_loss",
        "plasticity/weight_norm/actor.1" if "shared" not in str(extra) else "plasticity/weight_norm/trunk.1",
    } <= tags
    optimizer = result.agent.optimizer
    if extra[0] == "optimizer.name=adamo":
        assert isinstance(optimizer, AdamO)
        assert [g["kind"] for g in optimizer.param_groups if g["isometry"]] == ["matrix"]
    else:
        name = extra[0].split("name: ")[1].split(",")[0]
        assert f"losses/reg_{name}" in tags


def test_nonstationary_permutation_logs_per_task_returns(make_config: MakeConfig) -> None:
    result = train(
        make_config("nonstationary.kind=permute_obs", "nonstationary.every=256", "nonstationary.on=step")
    )
    acc = EventAccumulator(str(result.run_dir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {f"charts/episodic_return/task_{k}" for k in range(4)} <= tags
    # every sub-env switches at the same global step; env/task_id marks exactly those steps
    changes = [(e.step, e.value) for e in acc.Scalars("env/task_id")]
    assert changes == [(2, 0.0), (256, 1.0), (512, 2.0), (768, 3.0), (1024, 4.0)]
    # every task-k episode ended while task k was on: between its switch and the next one
    for k in range(4):
        steps = [e.step for e in acc.Scalars(f"charts/episodic_return/task_{k}")]
        assert all(256 * k < s <= 256 * (k + 1) for s in steps), (k, steps)


# ---------------------------------------------------------------------------------------------
# Non-finite losses


def test_nan_penalty_stops_and_keeps_last_good_checkpoint(
    make_config: MakeConfig, nan_regularizer: str
) -> None:
    # 4 minibatch steps per update: updates 0-1 are clean, update 2 (step 384) meets NaN at its
    # third minibatch, after 2 steps. Checkpoints every 256 steps.
    cfg = make_config(
        "checkpoint.every=256",
        "logging.name=nan",
        f"regularizers=[{{name: {nan_regularizer}, coef: 1.0, good_calls: 10}}]",
    )
    result = train(cfg)
    assert result.status == "stopped: non-finite loss nan at update 2 (gradient step 10)"
    assert result.global_step == 384
    good = load_checkpoint(result.run_dir / CHECKPOINT_NAME)
    assert good["global_step"] == 256 and good["agent"]["updates"] == 2
    stop = load_checkpoint(result.run_dir / "nonfinite_stop.pt")
    assert stop["global_step"] == 384 and stop["agent"]["grad_steps"] == 10
    for name, tensor in result.agent.model.state_dict().items():
        assert torch.isfinite(tensor).all()
        assert torch.equal(stop["agent"]["model"][name], tensor)


# ---------------------------------------------------------------------------------------------
# Presets and the CLI


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load(preset: str) -> None:
    cfg = load_config(Path("configs") / f"{preset}.yaml")
    assert isinstance(cfg.agent, PPOConfig)
    assert cfg.optimizer.lr_schedule == "linear"
    if "permuted" in preset:
        assert cfg.nonstationary.kind == "permute_obs"
    if preset.endswith("adamo"):
        assert cfg.optimizer.name == "adamo"


def test_cli_trains_the_cartpole_preset(runs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "train",
            "configs/cartpole/ppo.yaml",
            "-q",
            "total_steps=512",
            f"logging.dir={runs_dir}",
            "metrics.every=1",
        ]
    )
    assert code == 0
    assert "finished: 512 steps, 2 updates" in capsys.readouterr().out
    (run_dir,) = runs_dir.iterdir()
    assert set(load_checkpoint(run_dir / CHECKPOINT_NAME)) >= {
        "config",
        "global_step",
        "agent",
        "envs",
        "obs",
        "episodes",
        "probe",
        "probe_rng",
        "rng",
    }
    assert "plasticity/srank/actor.5" in scalar_tags(run_dir)


def test_rollout_smaller_than_the_minibatch_count_is_an_error(make_config: MakeConfig) -> None:
    with pytest.raises(ValueError, match="agent.num_minibatches=200 exceeds"):
        train(make_config("agent.num_minibatches=200"))
