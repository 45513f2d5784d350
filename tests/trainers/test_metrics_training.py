"""Plasticity metrics inside the DQN loop: logged tags, the custom-scalars layout, no effect on
training, exact resume with the probe's state, non-stationary runs and the MinAtar five-game cycle.

Runs are the tiny CartPole config of ``tests/conftest.py`` (600 steps, updates from step 100, so
update u happens at env step 99 + u) with the probe measuring every 50 updates and the NTK every 100.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from plasticrl.trainers import off_policy
from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, load_checkpoint
from plasticrl.trainers.config import ExperimentConfig, load_config
from plasticrl.trainers.experiments.plot import plot_runs, read_scalars, task_boundaries
from plasticrl.trainers.run import resume, train
from plasticrl.trainers.session import prepare_process
from torch import nn

from tests.trainers.test_training import assert_agents_equal, assert_tree_equal

REPO = Path(__file__).resolve().parents[2]
MakeConfig = Callable[..., ExperimentConfig]

METRICS_ON = (
    "metrics.every=50",
    "metrics.ntk_every=100",
    "metrics.probe_size=32",
    "metrics.ntk_probe_size=8",
)
METRICS_OFF = ("metrics.every=0", "metrics.ntk_every=0")
MEASURE_STEPS = list(range(149, 600, 50))  # updates 50, 100, ..., 500
NTK_STEPS = list(range(199, 600, 100))  # updates 100, 200, ..., 500


def custom_scalars_layout(run_dir: Path) -> Any:
    """The run's custom-scalars ``Layout`` proto, parsed back from its event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    tag = metadata.CONFIG_SUMMARY_TAG
    assert tag in acc.Tags()["tensors"]
    assert acc.SummaryMetadata(tag).plugin_data.plugin_name == metadata.PLUGIN_NAME
    (event,) = acc.Tensors(tag)  # written once, at the start
    layout = layout_pb2.Layout()
    layout.ParseFromString(event.tensor_proto.string_val[0])
    return layout


def module_names(model: nn.Module, kind: type[nn.Module]) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, kind)]


# ----------------------------------------------------------------------------- what a run logs


def test_metrics_run_logs_plasticity_tags_and_layout(make_tiny_config: MakeConfig) -> None:
    result = train(make_tiny_config(*METRICS_ON, "logging.name=metrics"))
    assert result.status == "finished" and result.updates == 501
    run_dir = result.run_dir
    scalars = read_scalars(run_dir)
    q_net = result.agent.q_net
    relus, linears = module_names(q_net, nn.ReLU), module_names(q_net, nn.Linear)
    assert (relus, linears) == (["2", "4"], ["1", "3", "5"])  # mlp: Flatten, Linear, ReLU, ..., head

    for tau in ("tau_0", "tau_0.025", "tau_0.1"):
        total = scalars[f"plasticity/dormant_fraction/{tau}"]
        per_layer = [scalars[f"plasticity/dormant_fraction/{tau}/{layer}"] for layer in relus]
        assert total[0] == MEASURE_STEPS
        for i in range(len(MEASURE_STEPS)):
            # unit-weighted total over two 32-unit layers
            assert total[1][i] == pytest.approx(sum(layer[1][i] for layer in per_layer) / 2)
            assert all(0.0 <= layer[1][i] <= 1.0 for layer in per_layer)
    # per-layer tags carry the activation modules' names from named_modules(), nothing else
    assert {t for t in scalars if t.startswith("plasticity/dormant_fraction/tau_0/")} == {
        f"plasticity/dormant_fraction/tau_0/{layer}" for layer in relus
    }
    for tag in (
        "plasticity/srank",
        "plasticity/jacobian_sv2_mean",
        *(f"plasticity/isometry_gap/{n}" for n in linears),
    ):
        steps, values = scalars[tag]
        assert steps == MEASURE_STEPS, tag
        assert all(v >= 0.0 for v in values), tag
    assert 1.0 <= max(scalars["plasticity/srank"][1]) <= 32.0  # penultimate features: 32 units
    assert {f"plasticity/jacobian_sv2_mean/{n}" for n in linears[:2]} <= set(scalars)  # hidden layers
    steps, values = scalars["plasticity/ntk_condition_number"]
    assert steps == NTK_STEPS
    assert all(v >= 1.0 for v in values)  # λ_max / λ_min⁺ (finite: Θ ≠ 0)
    assert load_checkpoint(run_dir / CHECKPOINT_NAME)["probe"]["measurements"] == len(MEASURE_STEPS)

    layout = custom_scalars_layout(run_dir)
    # the probe's categories first; trainers/logging.py completes them and adds its own, with
    # charts titled "<quantity> — <lines> [<unit>]"
    assert [c.title for c in layout.category] == [
        "plasticity/dormant",
        "plasticity/isometry",
        "plasticity/features",
        "plasticity/weights",
        "plasticity/optimizer",
        "plasticity/ntk",
        "env/task",
        "interventions",
    ]
    charts = {
        chart.title: list(chart.multiline.tag)
        for c in layout.category[:3]
        for chart in c.chart
        if " — " not in chart.title
    }
    assert set(charts) >= {"dormant fraction, tau_0", "isometry gap", "feature rank"}
    # every regex of every chart finds a logged tag, and the dormant chart of τ = 0 finds exactly
    # the total and the per-layer curves
    for title, regexes in charts.items():
        for regex in regexes:
            assert any(re.search(regex, tag) for tag in scalars), (title, regex)
    dormant_0 = {t for t in scalars if any(re.search(r, t) for r in charts["dormant fraction, tau_0"])}
    assert dormant_0 == {
        "plasticity/dormant_fraction/tau_0",
        "plasticity/dormant_fraction/tau_0/2",
        "plasticity/dormant_fraction/tau_0/4",
    }
    gaps = {t for t in scalars if any(re.search(r, t) for r in charts["isometry gap"])}
    assert gaps == {f"plasticity/isometry_gap/{n}" for n in linears}


def test_metrics_do_not_change_training(make_tiny_config: MakeConfig) -> None:
    on = train(make_tiny_config(*METRICS_ON, "logging.name=on"))
    off = train(make_tiny_config(*METRICS_OFF, "logging.name=off"))
    for a, b in zip(on.agent.q_net.parameters(), off.agent.q_net.parameters(), strict=True):
        assert torch.equal(a, b)
    assert_agents_equal(on.agent, off.agent)  # target net, optimizer, exploration generator
    scalars_on, scalars_off = read_scalars(on.run_dir), read_scalars(off.run_dir)
    for tag in ("charts/episodic_return", "losses/td_loss", "losses/q_values"):
        assert scalars_on[tag] == scalars_off[tag], tag
    assert any(t.startswith("plasticity/") for t in scalars_on)
    assert not any(t.startswith("plasticity/") for t in scalars_off)
    state_on = load_checkpoint(on.run_dir / CHECKPOINT_NAME)
    state_off = load_checkpoint(off.run_dir / CHECKPOINT_NAME)
    assert state_off["probe"] is None and state_on["probe"]["measurements"] == len(MEASURE_STEPS)
    assert_tree_equal(state_on["buffer"], state_off["buffer"], "buffer")
    assert_tree_equal(state_on["rng"], state_off["rng"], "rng")  # global generators untouched too


def test_resume_with_metrics_equals_uninterrupted_run(make_tiny_config: MakeConfig) -> None:
    full = train(make_tiny_config(*METRICS_ON, "logging.name=full"))
    half = train(make_tiny_config(*METRICS_ON, "logging.name=half", "total_steps=300"))
    state_half = load_checkpoint(half.run_dir / CHECKPOINT_NAME)
    assert state_half["probe"]["measurements"] == 4  # updates 50..200 before the split, 250..500 after
    resumed = resume(half.run_dir, ["total_steps=600"])
    assert resumed.status == "finished" and resumed.global_step == 600
    for a, b in zip(full.agent.q_net.parameters(), resumed.agent.q_net.parameters(), strict=True):
        assert torch.equal(a, b)
    assert_agents_equal(full.agent, resumed.agent)

    state_a = load_checkpoint(full.run_dir / CHECKPOINT_NAME)
    state_b = load_checkpoint(resumed.run_dir / CHECKPOINT_NAME)
    probe_a, probe_b = state_a["probe"], state_b["probe"]
    assert probe_a["measurements"] == probe_b["measurements"] == len(MEASURE_STEPS)
    assert_tree_equal(probe_a["init_weights"], probe_b["init_weights"], "init_weights")
    assert_tree_equal(probe_a["dormant_masks"], probe_b["dormant_masks"], "dormant_masks")
    assert state_a["probe_rng"] == state_b["probe_rng"]
    # the initial weights are those of the freshly built network, not the ones at the resume
    cfg = make_tiny_config(*METRICS_ON)
    prepare_process(cfg)  # seeds the global generators, as ``train`` does before building
    fresh = off_policy.build_off_policy(cfg)
    fresh.envs.close()
    initial = dict(fresh.agent.q_net.named_parameters())
    assert set(probe_b["init_weights"]) == {"1", "3", "5"}
    for layer, w0 in probe_b["init_weights"].items():
        assert torch.equal(w0, initial[f"{layer}.weight"])
    # the resumed curves are the uninterrupted ones, point for point
    scalars_a, scalars_b = read_scalars(full.run_dir), read_scalars(resumed.run_dir)
    plasticity = sorted(t for t in scalars_a if t.startswith("plasticity/"))
    assert plasticity == sorted(t for t in scalars_b if t.startswith("plasticity/"))
    for tag in plasticity:
        assert scalars_a[tag] == scalars_b[tag], tag


# ----------------------------------------------------------------------------- non-stationary runs


def test_nonstationary_run_logs_tasks_and_plots_their_boundaries(
    make_tiny_config: MakeConfig, tmp_path: Path
) -> None:
    cfg = make_tiny_config(
        *METRICS_ON,
        "nonstationary.kind=permute_obs",
        "nonstationary.every=200",
        "nonstationary.on=step",
        "logging.name=permuted",
    )
    result = train(cfg)
    scalars = read_scalars(result.run_dir)
    steps, ids = scalars["env/task_id"]
    # changes at steps 200, 400 and 600 (the last one at the final step), each logged at that step
    assert task_boundaries(steps, ids) == [200, 400, 600]
    assert sorted(set(ids)) == [0.0, 1.0, 2.0, 3.0]
    per_task = {i: scalars[f"charts/episodic_return/task_{i}"] for i in range(3)}
    for i, (task_steps, _) in per_task.items():
        # on=step truncates the episode at the change: every episode of task i ends inside its span
        assert task_steps and all(200 * i < s <= 200 * (i + 1) for s in task_steps), i
    merged = sorted(
        p for task_steps, values in per_task.values() for p in zip(task_steps, values, strict=True)
    )
    assert merged == list(zip(*scalars["charts/episodic_return"], strict=True))  # each episode in one task

    out = tmp_path / "figures"
    written = plot_runs([result.run_dir], out)
    names = ["episodic_return", "dormant_fraction", "srank", "isometry_gap"]
    assert [p.name for p in written] == [f"{n}.{ext}" for n in names for ext in ("png", "pdf")]
    assert all(p.stat().st_size > 0 for p in written)


def test_minatar_cycle_preset_visits_all_five_games(runs_dir: Path) -> None:
    cfg = load_config(
        REPO / "configs" / "minatar" / "dqn_cycle.yaml",
        [
            "total_steps=1500",
            "nonstationary.every=250",
            "nonstationary.on=step",
            "agent.learning_starts=100",
            "agent.buffer_size=2000",
            "network.channels=4",
            "network.hidden_sizes=[16]",
            "metrics.every=700",
            "metrics.ntk_every=0",
            "metrics.probe_size=32",
            "metrics.ntk_probe_size=8",
            "logging.progress=false",
            "checkpoint.every=0",
            f"logging.dir={runs_dir}",
            "logging.name=cycle",
        ],
    )
    assert cfg.nonstationary.tasks == ("breakout", "asterix", "freeway", "seaquest", "space_invaders")
    result = train(cfg)
    assert result.status == "finished" and result.global_step == 1500
    scalars = read_scalars(result.run_dir)
    # switches at 250, 500, ..., 1250 (on=step): games 0..4, then breakout again
    assert {f"charts/episodic_return/task_{i}" for i in range(5)} <= set(scalars)
    assert sorted(set(scalars["env/task_id"][1])) == [0.0, 1.0, 2.0, 3.0, 4.0]
    for i in range(1, 5):  # on=step ends every episode of game i inside its 250-step span
        assert all(250 * i < s <= 250 * (i + 1) for s in scalars[f"charts/episodic_return/task_{i}"][0]), i
    state = load_checkpoint(result.run_dir / CHECKPOINT_NAME)
    assert state["obs"].shape == (1, 10, 10, 10)  # padded to Seaquest's 10 channels
    assert result.agent.q_net.conv.in_channels == 10
    # the CNN's dormant units, measured at updates 700 and 1400 (steps 799, 1499)
    for layer in ("conv_act", "fc_act"):
        assert scalars[f"plasticity/dormant_fraction/tau_0/{layer}"][0] == [799, 1499]
