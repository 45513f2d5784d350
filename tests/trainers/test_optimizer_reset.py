"""``optimizer.reset_on_task_switch``: a fresh optimizer state at every task boundary, in both loops."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from plasticrl.plasticity.optimizers import OptimizerConfig, make_optimizer, param_groups
from plasticrl.trainers.checkpoint import load_checkpoint
from plasticrl.trainers.config import ConfigError, load_config
from plasticrl.trainers.experiments.plot import read_scalars
from plasticrl.trainers.learning import reset_optimizer_state
from plasticrl.trainers.run import train
from torch import nn

from tests.conftest import TINY_DQN_OVERRIDES

OPTIMIZERS = [
    OptimizerConfig(name="adam", lr=1e-2),
    OptimizerConfig(name="adamw", lr=1e-2, weight_decay=0.1),
    OptimizerConfig(name="sgd", lr=1e-2, momentum=0.9),
    OptimizerConfig(name="rmsprop", lr=1e-2, centered=True),
    OptimizerConfig(name="adamo", lr=1e-2, iso_coef=0.05),
]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimizer.zero_grad()
    loss = model(torch.randn(16, 5, generator=generator)).pow(2).mean()
    loss.backward()
    optimizer.step()


@pytest.mark.parametrize("cfg", OPTIMIZERS, ids=lambda c: c.name)
def test_a_reset_optimizer_steps_exactly_as_a_fresh_one(cfg: OptimizerConfig) -> None:
    model = _model()
    optimizer = make_optimizer(param_groups(model), cfg)
    for seed in range(3):
        _step(model, optimizer, seed)
    assert optimizer.state  # it has moments to forget
    reset_optimizer_state(optimizer)
    fresh_model = copy.deepcopy(model)
    fresh = make_optimizer(param_groups(fresh_model), cfg)
    assert optimizer.state_dict()["state"] == fresh.state_dict()["state"] == {}
    for seed in (10, 11):  # the first step (bias correction from scratch) and the one after
        _step(model, optimizer, seed)
        _step(fresh_model, fresh, seed)
        for a, b in zip(model.parameters(), fresh_model.parameters(), strict=True):
            assert torch.equal(a, b)
    assert [g["lr"] for g in optimizer.param_groups] == [g["lr"] for g in fresh.param_groups]


def test_asking_for_a_reset_without_task_switches_names_both_keys() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["optimizer.reset_on_task_switch=true"])
    assert "optimizer.reset_on_task_switch" in str(info.value) and "nonstationary.kind" in str(info.value)


def _switch_steps(run_dir: Path) -> list[int]:
    steps, _ = read_scalars(run_dir)["env/task_id"]
    return [int(s) for s in steps[1:]]  # the first announcement is task 0, not a switch


def test_dqn_resets_at_every_switch_and_counts_steps_from_it(runs_dir: Path) -> None:
    overrides = [
        *TINY_DQN_OVERRIDES,
        f"logging.dir={runs_dir}",
        "nonstationary.kind=permute_obs",
        "nonstationary.every=150",
        "nonstationary.on=step",
        "optimizer.reset_on_task_switch=true",
        "total_steps=550",
    ]
    result = train(load_config(None, overrides), quiet=True)
    switches = _switch_steps(result.run_dir)
    assert switches == [150, 300, 450]
    resets_steps, resets = read_scalars(result.run_dir)["optimizer/resets"]
    assert resets == [1.0, 2.0, 3.0]
    # on=step: the env step that reaches 150 already runs the new task, and the update of that
    # same iteration (one per env step here) is the first from a fresh state.
    assert [int(s) for s in resets_steps] == switches
    state = load_checkpoint(result.run_dir / "checkpoint.pt")
    assert state["loop"]["optimizer_resets"] == 3 and not state["loop"]["reset_pending"]
    adam_steps = {float(s["step"]) for s in state["agent"]["optimizer"]["state"].values()}
    assert adam_steps == {550 - 450 + 1}  # updates since the last reset, not since the start
    assert result.agent.updates == 550 - 100 + 1


def test_ppo_resets_before_the_update_of_a_rollout_that_crossed_a_switch(runs_dir: Path) -> None:
    overrides = [
        "total_steps=1024",
        "agent.num_steps=64",
        "agent.num_minibatches=2",
        "agent.update_epochs=1",
        "metrics.every=0",
        "metrics.ntk_every=0",
        f"logging.dir={runs_dir}",
        "nonstationary.kind=permute_obs",
        "nonstationary.every=400",
        "nonstationary.on=step",
        "optimizer.reset_on_task_switch=true",
    ]
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs/cartpole/ppo.yaml", overrides)
    result = train(cfg, quiet=True)
    rollout = cfg.agent.num_steps * cfg.env.num_envs  # type: ignore[attr-defined]
    switches = _switch_steps(result.run_dir)
    assert switches  # the schedule switched at least once
    crossing = sorted({-(-s // rollout) * rollout for s in switches})  # end of the rollout holding it
    resets_steps, resets = read_scalars(result.run_dir)["optimizer/resets"]
    assert [int(s) for s in resets_steps] == crossing
    assert resets == [float(i + 1) for i in range(len(crossing))]
