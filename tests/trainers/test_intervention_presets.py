"""The permuted-Breakout intervention presets train and act; ReDo on the MinAtar CNN, slice by slice.

Each ``configs/minatar/dqn_permuted_<method>.yaml`` (redo, shrink_perturb, cbp) trains for 2500
env steps on a tiny MinAtar net (4 channels, 16 hidden units; 2301 updates, update u at env step
199 + u) with its own intervention settings — CBP's maturity alone is shortened, since the preset's
10 000 exceeds the run — and the test asserts from the logged TensorBoard scalars and the trained
agent that the method acted as configured.

The other items of issue 7's must-show list are tested in ``tests/plasticity``
(test_interventions, test_surgery, test_baseline_regularizers); the ReDo test below adds the
MinAtar CNN's conv→linear flattening and both Adam moments, bit for bit, at the intervention level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from plasticrl.agents.networks import MinAtarCNN, NetworkConfig, minatar_cnn
from plasticrl.plasticity.interventions import InterventionContext
from plasticrl.plasticity.redo import ReDo, ReDoOptions
from plasticrl.trainers.config import load_config
from plasticrl.trainers.experiments.plot import read_scalars
from plasticrl.trainers.run import train
from torch import Tensor, nn

from tests.conftest import TINY_DQN_OVERRIDES, TINY_MINATAR_OVERRIDES

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "minatar"
LEARNING_STARTS = 200
TOTAL_STEPS = 2500
UPDATES = TOTAL_STEPS - LEARNING_STARTS + 1  # one update per env step from step 200 on
DEAD_CNN = "network.name=tests.trainers.test_intervention_presets:dead_unit_cnn"
DEAD_CHANNELS = [0]
"""Conv channels of ``dead_unit_cnn`` that are dead by construction."""


def step_of(update: int) -> int:
    """The env step at which update ``update`` (1-based) is taken and its interventions logged."""
    return LEARNING_STARTS - 1 + update


def dead_unit_cnn(observation_space: gym.Space, action_space: gym.Space, cfg: NetworkConfig) -> nn.Module:
    """``minatar_cnn`` with conv channel 0 and the first half of the dense units dead by construction.

    Zero incoming weights and bias −10: the units output ReLU(−10) = 0 on every observation, get
    no gradient, and stay dead under Adam — until an intervention recycles them.
    """
    net = minatar_cnn(observation_space, action_space, cfg)
    assert isinstance(net, MinAtarCNN)
    with torch.no_grad():
        for layer, units in ((net.conv, DEAD_CHANNELS), (net.fc, range(net.fc.out_features // 2))):
            layer.weight[list(units)] = 0.0
            layer.bias[list(units)] = -10.0
    return net


def run_preset(method: str, runs_dir: Path, *extra: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train ``dqn_permuted_<method>.yaml`` tiny; (train's result, logged ``interventions/*`` scalars)."""
    overrides = [
        *TINY_DQN_OVERRIDES,
        *TINY_MINATAR_OVERRIDES,
        f"logging.dir={runs_dir}",
        f"total_steps={TOTAL_STEPS}",
        f"agent.learning_starts={LEARNING_STARTS}",
        "metrics.every=0",
        *extra,
    ]
    result = train(load_config(PRESETS / f"dqn_permuted_{method}.yaml", overrides), quiet=True)
    assert result.status == "finished"
    if result.updates == 0:
        return result, {}
    logged = {
        tag: (list(steps), list(values))
        for tag, (steps, values) in read_scalars(result.run_dir).items()
        if tag.startswith("interventions/")
    }
    return result, logged


def preset_entry(method: str) -> dict[str, Any]:
    (entry,) = load_config(PRESETS / f"dqn_permuted_{method}.yaml").interventions
    return entry.to_dict()


def assert_all_parameters_in_optimizer(agent: Any) -> None:
    grouped = [id(p) for g in agent.optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in agent.q_net.parameters())


def flat(net: nn.Module) -> Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


# ----------------------------------------------------------------------------- presets


def test_redo_preset_recycles_the_units_dead_by_construction(runs_dir: Path) -> None:
    assert preset_entry("redo") == {"name": "redo", "tau": 0.1, "every": 1000}
    result, logged = run_preset("redo", runs_dir, DEAD_CNN)
    assert result.updates == UPDATES
    net = result.agent.q_net
    dead_fc = net.fc.out_features // 2
    steps, reset = logged["interventions/redo/reset_units"]
    assert steps == [step_of(1000), step_of(2000)]  # every 1000 updates, as the preset says
    conv_reset = logged["interventions/redo/reset_units/conv"][1]
    fc_reset = logged["interventions/redo/reset_units/fc"][1]
    assert conv_reset[0] >= len(DEAD_CHANNELS) and fc_reset[0] >= dead_fc  # the dead ones, at least
    assert reset == [c + f for c, f in zip(conv_reset, fc_reset, strict=True)]
    fraction = logged["interventions/redo/reset_fraction"][1]
    n_units = net.conv.out_channels + net.fc.out_features
    assert fraction == pytest.approx([r / n_units for r in reset])
    # Recycled (fresh rows, zero bias), then trained: no longer the zero rows and −10 biases.
    for layer, units in ((net.conv, DEAD_CHANNELS), (net.fc, list(range(dead_fc)))):
        assert torch.all(layer.weight[units].flatten(1).abs().sum(1) > 0)
        assert torch.all(layer.bias[units] > -1.0)
    assert_all_parameters_in_optimizer(result.agent)


def test_shrink_perturb_preset_shrinks_towards_zero_at_rate_p(runs_dir: Path) -> None:
    entry = preset_entry("shrink_perturb")
    assert entry == {"name": "shrink_perturb", "p": 0.999, "sigma": 0.01, "every": 1}
    result, logged = run_preset("shrink_perturb", runs_dir)
    assert result.updates == UPDATES
    # Per-update S&P reports its application count at every 1000th application.
    assert logged["interventions/shrink_perturb/applied"] == (
        [step_of(1000), step_of(2000)],
        [1000.0, 2000.0],
    )
    # θ₀: the same seed without a single update (learning starts at step 200).
    init, _ = run_preset("shrink_perturb", runs_dir, "total_steps=100", "logging.name=init")
    assert init.updates == 0
    theta0, theta = flat(init.agent.q_net), flat(result.agent.q_net)
    # θ_N = p^N θ₀ + Σ_k p^(N−k) (σ ε_k + Adam's step k): the noise is independent of θ₀, so the
    # component of θ_N along θ₀ is p^N (≈ 0.10) up to Adam's drift, which alone leaves it ≈ 1.04.
    along_init = float(theta @ theta0 / theta0.norm() ** 2)
    decay = entry["p"] ** UPDATES
    assert 0.5 * decay < along_init < 2.0 * decay
    # The noise (σ = 0.01) does not refill what p took: the norm shrinks (≈ 0.45–0.6 × ‖θ₀‖ over
    # seeds), where training alone grows it (≈ 1.4 × ‖θ₀‖).
    assert theta.norm() < 0.8 * theta0.norm()
    assert_all_parameters_in_optimizer(result.agent)


def test_cbp_preset_replaces_units_at_its_rate(runs_dir: Path) -> None:
    entry = preset_entry("cbp")
    assert entry == {"name": "cbp", "replacement_rate": 1e-4, "maturity": 10000, "decay": 0.99}
    maturity = 100  # the preset's 10 000 updates would outlast the run
    options = ", ".join(f"{k}: {v}" for k, v in {**entry, "maturity": maturity}.items())
    result, logged = run_preset("cbp", runs_dir, f"interventions=[{{{options}}}]")
    assert result.updates == UPDATES
    net = result.agent.q_net
    # How many units are replaced, and when, depends only on ages (a replaced unit is young again
    # for `maturity` updates), not on the utilities: replay the credit bookkeeping per layer.
    expected: dict[str, dict[int, int]] = {}
    for layer, n_units in (("conv", net.conv.out_channels), ("fc", net.fc.out_features)):
        ages, credit, counts = [0] * n_units, 0.0, {}
        for update in range(1, UPDATES + 1):
            ages = [a + 1 for a in ages]
            eligible = [i for i, a in enumerate(ages) if a > maturity]
            if not eligible:
                continue
            credit += entry["replacement_rate"] * len(eligible)
            count = min(int(credit), len(eligible))
            credit -= count
            for i in eligible[:count]:
                ages[i] = 0
            if count:
                counts[update] = count
        expected[layer] = counts
    assert sum(expected["fc"].values()) == 3 and not expected["conv"]  # 16·1e-4 per update: every 625
    for layer, counts in expected.items():
        tag = f"interventions/cbp/replaced_units/{layer}"
        assert logged.get(tag, ([], [])) == (
            [step_of(u) for u in counts],
            [float(c) for c in counts.values()],
        )
    steps, total = logged["interventions/cbp/replaced_total"]
    assert steps == [step_of(u) for u in expected["fc"]] and total == [1.0, 2.0, 3.0]
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert_all_parameters_in_optimizer(result.agent)


# ----------------------------------------------------------------------------- ReDo on the MinAtar CNN


def activities(net: MinAtarCNN, x: Tensor) -> dict[str, Tensor]:
    """E|h| per unit where the next layer reads it: per conv channel (batch and space), per dense unit."""
    seen: dict[str, Tensor] = {}
    handles = [
        net.conv_act.register_forward_hook(lambda m, a, out: seen.__setitem__("conv", out)),
        net.fc_act.register_forward_hook(lambda m, a, out: seen.__setitem__("fc", out)),
    ]
    with torch.no_grad():
        net(x)
    for handle in handles:
        handle.remove()
    return {"conv": seen["conv"].abs().mean((0, 2, 3)), "fc": seen["fc"].abs().mean(0)}


def test_redo_on_the_minatar_cnn_edits_exactly_the_dormant_slices() -> None:
    torch.manual_seed(0)
    space = gym.spaces.Box(0.0, 1.0, (4, 10, 10), np.float32)
    net = minatar_cnn(space, gym.spaces.Discrete(6), NetworkConfig("minatar_cnn", (16,), channels=4))
    assert isinstance(net, MinAtarCNN)
    x = (torch.rand(256, 4, 10, 10, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()

    for _ in range(3):
        step()
    # Kill units that were alive (non-zero moments, for the reset to zero): a conv channel, two dense units.
    alive = {
        k: (opt.state[layer.weight]["exp_avg_sq"].flatten(1).sum(1) > 0).nonzero().flatten().tolist()
        for k, layer in (("conv", net.conv), ("fc", net.fc))
    }
    dead = {"conv": alive["conv"][1:2], "fc": alive["fc"][2:4]}
    with torch.no_grad():
        for layer, units in ((net.conv, dead["conv"]), (net.fc, dead["fc"])):
            layer.weight[units] = 0.0
            layer.bias[units] = -10.0
    # τ = 0: ReDo takes exactly the silent units (score E|h_i| / mean_k E|h_k| = 0 on this forward),
    # so the output cannot change (with τ > 0 a weak unit's small contribution would go too).
    act = activities(net, x)
    dormant = {k: (a == 0).nonzero().flatten() for k, a in act.items()}
    assert all(set(dead[k]) <= set(dormant[k].tolist()) for k in dead)
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    state = {n: {k: v.clone() for k, v in opt.state[p].items()} for n, p in net.named_parameters()}
    with torch.no_grad():
        output = net(x)

    redo = ReDo(net, opt, ReDoOptions(tau=0.0, every=1), InterventionContext(example_obs=x[:2], seed=0))
    scalars = redo.after_update(1, net, opt, x)

    conv_units, fc_units = dormant["conv"], dormant["fc"]
    assert scalars["interventions/redo/reset_units/conv"] == len(conv_units)
    assert scalars["interventions/redo/reset_units/fc"] == len(fc_units)
    # Edited: recycled rows and biases; the columns reading them (a conv channel is 8·8 = 64
    # consecutive columns of the flattened dense input); a recycled dense unit's row is wholly
    # fresh, its own columns included (Note [Order] in plasticrl.plasticity.redo).
    cols = (conv_units[:, None] * 64 + torch.arange(64)).flatten()
    edited = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in params.items()}
    edited["conv.weight"][conv_units] = edited["conv.bias"][conv_units] = True
    edited["fc.weight"][:, cols] = edited["fc.weight"][fc_units] = edited["fc.bias"][fc_units] = True
    edited["head.weight"][:, fc_units] = True
    now = dict(net.named_parameters())
    for name, p in now.items():
        assert torch.equal(p[~edited[name]], params[name][~edited[name]]), name
    kept = torch.ones(16, dtype=torch.bool)
    kept[fc_units] = False
    assert torch.all(now["fc.weight"][kept][:, cols] == 0) and torch.all(now["head.weight"][:, fc_units] == 0)
    for layer, units in (("conv", conv_units), ("fc", fc_units)):
        rows = now[f"{layer}.weight"][units].flatten(1)
        assert torch.all(rows.abs().sum(1) > 0) and torch.all(now[f"{layer}.bias"][units] == 0)
        assert not torch.equal(rows, params[f"{layer}.weight"][units].flatten(1))  # fresh incoming rows
    # Adam: both moments zero on exactly the edited slices, bitwise unchanged elsewhere, step kept.
    for name, p in now.items():
        for key in ("exp_avg", "exp_avg_sq"):
            value, old = opt.state[p][key], state[name][key]
            assert torch.all(value[edited[name]] == 0), (name, key)
            assert torch.equal(value[~edited[name]], old[~edited[name]]), (name, key)
        assert torch.equal(opt.state[p]["step"], state[name]["step"])
    for name, index in (("conv.weight", dead["conv"]), ("fc.weight", dead["fc"])):
        assert torch.all(state[name]["exp_avg_sq"][index].flatten(1).sum(1) > 0)  # zeroed, not already 0
    assert torch.all(state["head.weight"]["exp_avg_sq"][:, dead["fc"]] > 0)
    # Outgoing weights zero: the output on the probe is unchanged.
    with torch.no_grad():
        assert torch.equal(net(x), output)
    # The units dead by construction are active again. (A fresh zero-bias row reading non-negative
    # ReLU features fires on some probe observation with high probability, not with certainty:
    # both dense units do for about 19 network seeds in 20 here; the seeds are fixed.)
    act = activities(net, x)
    assert torch.all(act["conv"][dead["conv"]] > 0) and torch.all(act["fc"][dead["fc"]] > 0)
    # Every parameter is still the optimizer's and moves at the next step; the recycled incoming
    # rows move once their outgoing weights have (the step after).
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert grouped == [id(p) for p in net.parameters()]
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    step()
    assert all(not torch.equal(p, before[n]) for n, p in net.named_parameters())
    step()
    for layer, units in (("conv", conv_units), ("fc", fc_units)):
        moved = (now[f"{layer}.weight"][units] != before[f"{layer}.weight"][units]).flatten(1).any(1)
        assert torch.all(moved), layer
