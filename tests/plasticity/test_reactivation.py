"""Dormant units reactivated after a task switch: the metric, the probe's bookkeeping, the loops."""

from __future__ import annotations

from pathlib import Path

import plasticrl
import pytest
import torch
from plasticrl.plasticity.metrics import reactivated_dormant
from plasticrl.plasticity.probe import PlasticityProbe
from plasticrl.trainers.config import MetricsConfig
from plasticrl.trainers.experiments.plot import read_scalars
from torch import nn


def test_reactivated_fraction_by_hand() -> None:
    then = {"tau_0": {"a": torch.tensor([True, True, True, False]), "b": torch.tensor([False, False])}}
    now = {"tau_0": {"a": torch.tensor([False, True, True, True]), "b": torch.tensor([True, True])}}
    out = reactivated_dormant(then, now)
    assert out == {
        "dormant_reactivated/tau_0/a": 1 / 3,
        "dormant_reactivated/tau_0": 1 / 3,
    }  # b: 0/0, left out


def test_probe_reports_units_dormant_at_the_switch_that_fire_again() -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        net[0].bias.zero_()
    probe = PlasticityProbe(net, MetricsConfig(probe_size=4, ntk_probe_size=2, taus=(0.0,), jacobian=False))
    old_task = torch.tensor([[1.0, 0.0], [2.0, 0.0]])  # unit 1 and unit 2 silent
    probe.task_switched(old_task)
    assert probe(old_task)["plasticity/dormant_reactivated/tau_0"] == 0.0  # nothing fired again yet
    new_task = torch.tensor([[0.0, 1.0], [1.0, 1.0]])  # unit 1 fires again, unit 2 stays silent
    assert probe(new_task)["plasticity/dormant_reactivated/tau_0"] == 0.5
    clone = PlasticityProbe(net, MetricsConfig(probe_size=4, ntk_probe_size=2, taus=(0.0,), jacobian=False))
    clone.load_state_dict(probe.state_dict())  # the switch's masks survive a checkpoint
    assert clone(new_task)["plasticity/dormant_reactivated/tau_0"] == 0.5


@pytest.mark.parametrize("preset", ["cartpole/ppo.yaml", "cartpole/dqn_permuted.yaml"])
def test_loops_mark_task_switches(preset: str, tmp_path: Path) -> None:
    config = Path(__file__).parents[2] / "configs" / preset
    overrides = {"total_steps": 1600, "nonstationary__every": 600, "metrics__every": 2, "quiet": True}
    if preset.startswith("cartpole/ppo"):
        overrides |= {"nonstationary__kind": "permute_obs", "agent__num_steps": 64}
    else:
        overrides |= {"agent__learning_starts": 100}
    result = plasticrl.train(str(config), logging__dir=str(tmp_path), checkpoint__every=0, **overrides)
    tags = read_scalars(result.run_dir)
    reactivated = any(t.startswith("plasticity/dormant_reactivated/tau_") for t in tags)
    if preset.startswith("cartpole/dqn"):  # its ReLU net has dormant units at the switches
        assert reactivated and min(tags["plasticity/dormant_fraction/tau_0"][1]) > 0
    else:  # PPO's tanh net has none, so nothing is reported (0/0 is left out)
        assert not reactivated and all(v == 0.0 for v in tags["plasticity/dormant_fraction/tau_0"][1])
    first = min(tags["env/task_id"][0][1:], default=None)
    reported = [
        s for t, (steps, _) in tags.items() if t.startswith("plasticity/dormant_reactivated/") for s in steps
    ]
    assert first is None or not reported or min(reported) >= first
