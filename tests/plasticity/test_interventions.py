"""ReDo, Shrink & Perturb and Continual Backprop on crafted networks: what they edit, to the bit."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from plasticrl.plasticity.adamo import AdamO
from plasticrl.plasticity.cbp import CBPOptions, ContinualBackprop
from plasticrl.plasticity.interventions import (
    INTERVENTIONS,
    InterventionConfig,
    InterventionContext,
    check_intervention,
    make_interventions,
)
from plasticrl.plasticity.layers import orthogonal_
from plasticrl.plasticity.redo import ReDo, ReDoOptions
from plasticrl.plasticity.shrink_perturb import ShrinkPerturb, ShrinkPerturbOptions
from plasticrl.plasticity.surgery import init_sample
from torch import Tensor, nn

from tests.trainers.test_training import assert_tree_equal

X = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))


def mlp(widths: tuple[int, ...] = (4, 6, 5, 2)) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def kill(layer: nn.Linear, units: list[int]) -> None:
    """Units dead by construction: zero incoming weights and a negative bias (ReLU output 0 always).

    Every other unit gets bias +1, so it is clearly alive on the probe inputs.
    """
    with torch.no_grad():
        layer.bias.fill_(1.0)
        layer.weight[units] = 0.0
        layer.bias[units] = -1.0


def train_steps(model: nn.Module, opt: torch.optim.Optimizer, n: int = 3) -> None:
    for _ in range(n):
        opt.zero_grad()
        model(X).square().mean().backward()
        opt.step()


def ctx(seed: int = 0) -> InterventionContext:
    return InterventionContext(example_obs=X[:2], seed=seed)


def activity(model: nn.Sequential, index: int) -> Tensor:
    """E|h| per unit at the output of module ``index`` (an activation)."""
    with torch.no_grad():
        return model[: index + 1](X).abs().mean(0)


# ----------------------------------------------------------------------------- ReDo


def test_redo_recycles_exactly_the_dead_units() -> None:
    model = mlp()
    kill(model[0], [1, 3])
    kill(model[2], [0])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_steps(model, opt)
    assert torch.equal(activity(model, 1)[[1, 3]], torch.zeros(2)) and activity(model, 3)[0] == 0
    alive_1, alive_2 = [0, 2, 4, 5], [1, 2, 3, 4]
    assert torch.all(activity(model, 1)[alive_1] > 0.1 * activity(model, 1).mean())
    assert torch.all(activity(model, 3)[alive_2] > 0.1 * activity(model, 3).mean())
    redo = ReDo(model, opt, ReDoOptions(tau=0.1, every=10), ctx())
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    moments = {n: opt.state[p]["exp_avg"].clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        output = model(X)

    assert redo.after_update(9, model, opt, X) == {}  # not due: nothing happens
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())
    scalars = redo.after_update(10, model, opt, X)

    assert scalars == {
        "interventions/redo/reset_units/0": 2.0,
        "interventions/redo/reset_units/2": 1.0,
        "interventions/redo/reset_units": 3.0,
        "interventions/redo/reset_fraction": 3 / 11,
    }
    now = dict(model.named_parameters())
    # what may change: recycled rows (fresh weights, zero bias) and the columns reading them (zero)
    edited = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in now.items()}
    edited["0.weight"][[1, 3]] = edited["0.bias"][[1, 3]] = True
    edited["2.weight"][:, [1, 3]] = edited["2.weight"][0] = edited["2.bias"][0] = True
    edited["4.weight"][:, 0] = True
    for name, p in now.items():
        assert torch.equal(p[~edited[name]], params[name][~edited[name]]), name
        for key in ("exp_avg", "exp_avg_sq"):  # Adam's moments: zero exactly where edited
            value = opt.state[p][key]
            assert torch.all(value[edited[name]] == 0), (name, key)
            if key == "exp_avg":
                assert torch.equal(value[~edited[name]], moments[name][~edited[name]]), name
    fresh_rows = (now["0.weight"][[1, 3]], now["2.weight"][[0]])
    assert all(torch.all(rows.abs().sum(1) > 0) for rows in fresh_rows)  # new incoming weights
    assert torch.all(now["0.bias"][[1, 3]] == 0) and now["2.bias"][0] == 0
    # outgoing columns are zero; where the next layer recycled a unit too, its row is fresh (Note [Order])
    assert torch.all(now["2.weight"][1:, [1, 3]] == 0) and torch.all(now["4.weight"][:, 0] == 0)
    assert torch.all(now["2.weight"][0] != 0)
    with torch.no_grad():
        assert torch.equal(model(X), output)  # dead units had no effect; their new weights none yet
    # the dead units are alive now, and train: ReDo's point
    assert torch.all(activity(model, 1)[[1, 3]] > 0)  # (on zero-mean inputs a fresh row fires)
    recycled_rows = model[0].weight[[1, 3]].detach().clone()
    train_steps(model, opt, 2)
    assert torch.all(model[0].weight[[1, 3]] != recycled_rows)
    assert redo.resets == 1 and redo.recycled == 3


def test_redo_tau_zero_spares_weak_but_living_units() -> None:
    model = mlp()
    kill(model[0], [2])
    kill(model[2], [])
    with torch.no_grad():
        model[0].weight[4] *= 1e-3  # weak (score ≈ 1e-3) but not silent
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scalars = ReDo(model, opt, ReDoOptions(tau=0.0, every=1), ctx()).after_update(1, model, opt, X)
    assert scalars["interventions/redo/reset_units/0"] == 1.0
    loose = ReDo(model, opt, ReDoOptions(tau=0.1, every=1), ctx())
    assert loose.after_update(1, model, opt, X)["interventions/redo/reset_units/0"] >= 1.0


def test_redo_draws_probe_batches_only_when_due() -> None:
    model = mlp()
    opt = torch.optim.Adam(model.parameters())
    redo = ReDo(model, opt, ReDoOptions(every=5, batch_size=17), ctx())
    asked: list[int] = []

    def probe(n: int) -> Tensor:
        asked.append(n)
        return X[:n]

    for update in range(1, 11):
        redo.after_update(update, model, opt, probe)
    assert asked == [17, 17]


# ----------------------------------------------------------------------------- Shrink & Perturb


def test_shrink_perturb_identity_and_hand_numbers() -> None:
    model = mlp()
    opt = torch.optim.Adam(model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    identity = ShrinkPerturb(model, opt, ShrinkPerturbOptions(p=1.0, sigma=0.0), ctx())
    assert identity.after_update(1, model, opt, X) == {}  # per-update S&P reports every 1000th
    assert identity.applications == 1
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    halve = ShrinkPerturb(model, opt, ShrinkPerturbOptions(p=0.5, sigma=0.0), ctx())
    halve.apply()
    assert all(torch.equal(p, 0.5 * b) for p, b in zip(model.parameters(), before, strict=True))


def test_shrink_perturb_formula_with_fixed_noise() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 4.0, -1.0]]))
        model[0].bias.copy_(torch.tensor([2.0, -2.0]))
    theta = [p.detach().clone() for p in model.parameters()]
    # ε: the draws of each layer's own init, in layer order, from the intervention's generator
    gen = torch.Generator().manual_seed(5)
    eps = [t for m in (model[0], model[2]) for t in init_sample(m, generator=gen).values()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sp = ShrinkPerturb(model, opt, ShrinkPerturbOptions(p=0.8, sigma=0.1), InterventionContext(X[:1], seed=5))
    sp.apply()
    for p, t, e in zip(model.parameters(), theta, eps, strict=True):
        torch.testing.assert_close(p.detach(), 0.8 * t + 0.1 * e, rtol=0, atol=1e-7)
    torch.testing.assert_close(model[0].weight[0, 0].detach(), 0.8 + 0.1 * eps[0][0, 0], rtol=0, atol=1e-7)
    # p = 0, σ = 1: a full draw of the layers' default init, as torch's reset_parameters gives it
    fresh = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    torch.manual_seed(11)
    fresh[0].reset_parameters()
    fresh[2].reset_parameters()
    reset = ShrinkPerturb(fresh, opt, ShrinkPerturbOptions(p=0.0, sigma=1.0), InterventionContext(X[:1], 0))
    reset.generator.manual_seed(11)
    expected = [p.detach().clone() for p in fresh.parameters()]
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)
    reset.apply()
    assert all(torch.equal(p, e) for p, e in zip(fresh.parameters(), expected, strict=True))


def test_shrink_perturb_schedules() -> None:
    model = mlp()
    opt = torch.optim.Adam(model.parameters())
    every3 = ShrinkPerturb(model, opt, ShrinkPerturbOptions(p=0.9, sigma=0.0, every=3), ctx())
    for update in range(1, 10):
        every3.after_update(update, model, opt, X, task_switched=update == 4)
    assert every3.applications == 3  # 3, 6, 9; the switch alone does nothing here
    switch = ShrinkPerturb(model, opt, ShrinkPerturbOptions(p=0.9, every=0, on_task_switch=True), ctx())
    logged = [switch.after_update(u, model, opt, X, task_switched=u in (4, 7)) for u in range(1, 10)]
    assert switch.applications == 2
    assert [u + 1 for u, s in enumerate(logged) if s] == [4, 7]
    assert logged[6] == {"interventions/shrink_perturb/applied": 2.0}
    sparse = ShrinkPerturb(model, opt, ShrinkPerturbOptions(p=1.0, sigma=0.0, every=500), ctx())
    reports = {u: sparse.after_update(u, model, opt, X) for u in (500, 1000, 1500, 2000)}
    assert {u: r for u, r in reports.items() if r} == {  # every ⌈1000/500⌉ = 2nd application
        1000: {"interventions/shrink_perturb/applied": 2.0},
        2000: {"interventions/shrink_perturb/applied": 4.0},
    }
    with pytest.raises(ValueError, match="never apply"):
        ShrinkPerturbOptions(every=0)


def test_shrink_perturb_leaves_norms_and_optimizer_state_alone_unless_asked() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.ReLU(), nn.Linear(3, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    train_steps(model, opt)
    norm = [p.detach().clone() for p in model[1].parameters()]
    state = copy.deepcopy(opt.state_dict())
    ShrinkPerturb(model, opt, ShrinkPerturbOptions(p=0.5, sigma=0.1), ctx()).apply()
    assert all(torch.equal(p, n) for p, n in zip(model[1].parameters(), norm, strict=True))
    after = opt.state_dict()["state"]
    assert all(torch.equal(after[k]["exp_avg"], v["exp_avg"]) for k, v in state["state"].items())
    ShrinkPerturb(model, opt, ShrinkPerturbOptions(reset_optimizer=True), ctx()).apply()
    for p in (*model[0].parameters(), *model[3].parameters()):
        assert torch.all(opt.state[p]["exp_avg"] == 0) and torch.all(opt.state[p]["exp_avg_sq"] == 0)
    assert torch.all(opt.state[model[1].weight]["exp_avg"] != 0)


# ----------------------------------------------------------------------------- Continual Backprop


def cbp_model() -> nn.Sequential:
    """4 → 4 → 1 with equal activity per hidden unit; unit 2 has the smallest outgoing weight."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(4))
        model[0].bias.fill_(1.0)
        model[2].weight.copy_(torch.tensor([[0.5, -0.4, 0.1, 0.3]]))
    return model


def test_cbp_replaces_the_lowest_utility_mature_unit() -> None:
    model = cbp_model()
    opt = torch.optim.Adam(model.parameters())
    probe = torch.zeros(8, 4)  # h = relu(0 + 1) = 1 for every unit: utility ∝ |w_out|
    options = CBPOptions(replacement_rate=0.25, maturity=3, decay=0.5)
    cbp = ContinualBackprop(model, opt, options, ctx())
    before = [p.detach().clone() for p in model.parameters()]
    for update in (1, 2, 3):  # ages 1..3: not mature (age > 3 needed)
        assert cbp.after_update(update, model, opt, probe) == {}
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    torch.testing.assert_close(
        cbp.utility["0"], torch.tensor([0.5, 0.4, 0.1, 0.3], dtype=torch.float64) * 0.875
    )
    scalars = cbp.after_update(4, model, opt, probe)  # 4 eligible × 0.25 = one replacement
    assert scalars == {
        "interventions/cbp/replaced_units/0": 1.0,
        "interventions/cbp/replaced_units": 1.0,
        "interventions/cbp/replaced_total": 1.0,
    }
    keep = [0, 1, 3]
    assert not torch.equal(model[0].weight[2], before[0][2]) and model[0].bias[2] == 0
    assert torch.equal(model[0].weight[keep], before[0][keep])
    assert model[2].weight[0, 2] == 0 and torch.equal(model[2].weight[0, keep], before[2][0, keep])
    assert cbp.age["0"].tolist() == [4, 4, 0, 4] and cbp.utility["0"][2] == 0
    assert cbp.credit["0"] == 0.0


def test_cbp_utility_uses_activity_times_mean_outgoing_magnitude() -> None:
    model = cbp_model()
    opt = torch.optim.Adam(model.parameters())
    probe = torch.tensor([[1.0, 0.0, 0.0, 0.0], [-3.0, 0.0, 0.0, 0.0]])  # unit 0: h = 2 and 0 → E|h| = 1
    cbp = ContinualBackprop(model, opt, CBPOptions(maturity=100, decay=0.9), ctx())
    cbp.after_update(1, model, opt, probe)
    expected = 0.1 * torch.tensor([1.0 * 0.5, 1.0 * 0.4, 1.0 * 0.1, 1.0 * 0.3], dtype=torch.float64)
    torch.testing.assert_close(cbp.utility["0"], expected)


def test_cbp_bias_correction_protects_young_units() -> None:
    model = cbp_model()
    opt = torch.optim.Adam(model.parameters())
    cbp = ContinualBackprop(model, opt, CBPOptions(replacement_rate=0.25, maturity=0, decay=0.9), ctx())
    # unit 0 is young (age 1, utility 0.1·c) but contributes most; unit 3 is old with a lower average
    cbp.age["0"].copy_(torch.tensor([0, 1000, 1000, 1000]))
    cbp.utility["0"].copy_(torch.tensor([0.0, 0.9, 0.9, 0.2], dtype=torch.float64))
    cbp.after_update(1, model, opt, torch.zeros(4, 4))
    assert cbp.age["0"].tolist() == [1, 1001, 1001, 0]  # unit 3 replaced, not the young unit 0


# ----------------------------------------------------------------------------- shared contracts


FACTORIES: dict[str, dict[str, Any]] = {
    "redo": {"every": 1, "tau": 0.5},
    "shrink_perturb": {"p": 0.9, "sigma": 0.05},
    "cbp": {"maturity": 0, "replacement_rate": 0.5},
}


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize(
    "make_opt", [torch.optim.Adam, AdamO, torch.optim.RMSprop], ids=["adam", "adamo", "rmsprop"]
)
def test_every_parameter_trains_after_an_intervention(
    name: str, make_opt: Callable[..., torch.optim.Optimizer]
) -> None:
    model = mlp()
    kill(model[0], [1])
    opt = make_opt(model.parameters(), lr=1e-2)
    train_steps(model, opt)
    (intervention,) = make_interventions(
        model, opt, [InterventionConfig(name, FACTORIES[name])], example_obs=X[:2], seed=0
    )
    ids = [id(p) for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    scalars = intervention.after_update(1, model, opt, X)
    assert scalars or name == "shrink_perturb"  # (S&P reports every 1000th application)
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert [id(p) for p in model.parameters()] == ids
    grouped = {id(p) for g in opt.param_groups for p in g["params"]}
    assert set(ids) <= grouped
    for _ in range(2):  # incoming rows of recycled units move once their outgoing weights have
        before = [p.detach().clone() for p in model.parameters()]
        train_steps(model, opt, 1)
        assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


@pytest.mark.parametrize("name", list(FACTORIES))
def test_state_dict_round_trip_continues_identically(name: str) -> None:
    model_a = mlp()
    opt_a = torch.optim.Adam(model_a.parameters(), lr=1e-2)
    cfg = [InterventionConfig(name, FACTORIES[name])]
    (a,) = make_interventions(model_a, opt_a, cfg, example_obs=X[:2], seed=3)
    for update in range(1, 4):
        train_steps(model_a, opt_a, 1)
        a.after_update(update, model_a, opt_a, X)
    model_b = copy.deepcopy(model_a)
    opt_b = torch.optim.Adam(model_b.parameters(), lr=1e-2)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # (load_state_dict shares tensors)
    (b,) = make_interventions(model_b, opt_b, cfg, example_obs=X[:2], seed=99)  # another seed...
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # ...replaced by the saved generator state
    for update in range(4, 8):
        for model, opt, intervention in ((model_a, opt_a, a), (model_b, opt_b, b)):
            train_steps(model, opt, 1)
            intervention.after_update(update, model, opt, X)
    assert all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True))
    assert_tree_equal(a.state_dict(), b.state_dict())
    with pytest.raises(ValueError, match="cannot load the state"):
        b.load_state_dict({**a.state_dict(), "name": "other"})


def test_seeds_differ_between_entries_and_runs() -> None:
    model = mlp()
    opt = torch.optim.Adam(model.parameters())
    cfgs = [InterventionConfig("shrink_perturb"), InterventionConfig("shrink_perturb")]
    one, two = make_interventions(model, opt, cfgs, example_obs=X[:2], seed=0)
    (again, _) = make_interventions(model, opt, cfgs, example_obs=X[:2], seed=0)
    (other, _) = make_interventions(model, opt, cfgs, example_obs=X[:2], seed=1)
    states = [i.generator.get_state() for i in (one, two, again, other)]
    assert torch.equal(states[0], states[2])
    assert not torch.equal(states[0], states[1]) and not torch.equal(states[0], states[3])


# ----------------------------------------------------------------------------- errors and config


def test_constrained_networks_and_unsupported_optimizers_fail_at_construction() -> None:
    model = mlp()
    orthogonal_(model[0])
    opt = torch.optim.Adam(model.parameters())
    for name in FACTORIES:
        with pytest.raises(ValueError, match=f"{name} cannot run on this network: layer '0' is parametrized"):
            make_interventions(model, opt, [InterventionConfig(name)], example_obs=X[:2], seed=0)
    plain = mlp()
    adagrad = torch.optim.Adagrad(plain.parameters())
    for name in ("redo", "cbp"):
        with pytest.raises(ValueError, match="Adagrad is not supported"):
            make_interventions(plain, adagrad, [InterventionConfig(name)], example_obs=X[:2], seed=0)
    redo = ReDo(plain, torch.optim.Adam(plain.parameters()), ReDoOptions(), ctx())
    with pytest.raises(ValueError, match="built for another model"):
        redo.after_update(1000, mlp(), redo.optimizer, X)


def test_options_are_typed_and_checked() -> None:
    check_intervention(InterventionConfig("redo", {"tau": 2.5e-2, "every": 1e3}))
    with pytest.raises(
        ValueError,
        match=r"unknown key 'interventions\[redo\]\.taux'; did you mean 'tau'\? "
        r"valid keys of intervention 'redo': \['adam_step', 'batch_size', 'every', 'init', 'tau'\]",
    ):
        check_intervention(InterventionConfig("redo", {"taux": 0.1}))
    with pytest.raises(ValueError, match=r"interventions\[redo\]\.every: expected an integer, got 2\.5"):
        check_intervention(InterventionConfig("redo", {"every": 2.5}))
    with pytest.raises(ValueError, match=r"invalid tau: -1\.0"):
        check_intervention(InterventionConfig("redo", {"tau": -1}))
    with pytest.raises(ValueError, match=r"init: invalid value 'xavier'"):
        check_intervention(InterventionConfig("cbp", {"init": "xavier"}))
    with pytest.raises(ValueError, match="unknown intervention 'red0'; did you mean 'redo'"):
        check_intervention(InterventionConfig("red0"))
    assert INTERVENTIONS.names() == ["cbp", "redo", "shrink_perturb"]
    entry = {"name": "shrink_perturb", "p": 0.5, "on_task_switch": True, "every": 0}
    assert InterventionConfig.from_dict(entry).to_dict() == entry
    with pytest.raises(ValueError, match="needs a name"):
        InterventionConfig.from_dict({"tau": 0.1})


def test_orthogonal_init_follows_the_network() -> None:
    model = mlp()
    kill(model[0], [0, 1])
    opt = torch.optim.Adam(model.parameters())
    (redo,) = make_interventions(
        model, opt, [InterventionConfig("redo", {"every": 1})], example_obs=X[:2], seed=0, init="orthogonal"
    )
    redo.after_update(1, model, opt, X)
    rows = model[0].weight[[0, 1]].detach()
    # rows of a √2-gain orthogonal 6×4 matrix (tall: orthonormal columns) have norms ≤ √2
    assert torch.all(rows.norm(dim=1) <= 2**0.5 + 1e-6) and rows.abs().sum() > 0
