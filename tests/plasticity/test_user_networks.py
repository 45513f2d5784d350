"""User-written networks: the head, the hidden units and the groups come from the data flow (issue 17)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from plasticrl.plasticity.metrics import MetricsConfig, unit_activity
from plasticrl.plasticity.optimizers import head_module_names, param_groups
from plasticrl.plasticity.probe import PlasticityProbe
from torch import Tensor, nn


class HeadFirst(nn.Module):
    """Registers its output layer first."""

    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Linear(8, 2)
        self.body = nn.Linear(4, 8)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.act(self.body(x)))


def _cfg() -> MetricsConfig:
    return MetricsConfig(probe_size=16, ntk_probe_size=2)


def test_head_is_found_from_data_flow_not_registration_order() -> None:
    torch.manual_seed(0)
    net = HeadFirst()
    assert head_module_names(net) == ("out",)
    groups = {g["kind"]: g for g in param_groups(net)}
    assert groups["head"]["params"] == [net.out.weight]
    assert groups["matrix"]["params"] == [net.body.weight]
    assert groups["matrix"]["isometry"] and not groups["head"]["isometry"]
    probe = PlasticityProbe(net, _cfg())
    assert probe.unit_layers == ("act",)
    x = torch.randn(16, 4)
    scalars = probe(x)
    # srank on the head's input (8 features), not on the raw observation (4)
    feats = torch.relu(net.body(x)).detach().double()
    assert scalars["plasticity/feature_norm"] == pytest.approx(float(feats.norm(dim=1).mean()), rel=1e-6)


def test_head_refused_clearly_when_ambiguous() -> None:
    class Untraceable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            if x.sum() > 0:  # control flow on values
                x = -x
            return self.b(torch.relu(self.a(x)))

    class HeadAlsoHidden(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x: Tensor) -> Tensor:
            h = self.a(x)
            return h + self.b(torch.relu(h))

    for net in (Untraceable(), HeadAlsoHidden()):
        with pytest.raises(ValueError, match="head_names"):
            head_module_names(net)
    declared = Untraceable()
    declared.head_names = ("b",)  # type: ignore[attr-defined]
    assert head_module_names(declared) == ("b",)


def test_dueling_heads_are_both_heads() -> None:
    class Dueling(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk, self.value, self.adv = nn.Linear(3, 8), nn.Linear(8, 1), nn.Linear(8, 2)

        def forward(self, x: Tensor) -> Tensor:
            h = F.relu(self.trunk(x))
            a = self.adv(h)
            return self.value(h) + a - a.mean(1, keepdim=True)

    assert head_module_names(Dueling()) == ("value", "adv")


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(5, 6), nn.Linear(6, 7), nn.Linear(7, 2)
        self.act2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act2(self.fc2(F.relu(self.fc1(x)))))  # mixed: functional then module


def test_functional_and_mixed_activations_measure_post_activation_units() -> None:
    torch.manual_seed(0)
    net = Functional()
    with torch.no_grad():
        net.fc1.bias[:3] = -100.0  # three units of fc1 dead after the functional ReLU
    with pytest.warns(UserWarning, match="fc1"):
        probe = PlasticityProbe(net, _cfg())
    assert set(probe.unit_layers) == {"fc1", "act2"}
    x = torch.randn(16, 5)
    scalars = probe(x)
    assert scalars["plasticity/dormant_fraction/tau_0/fc1"] == pytest.approx(0.5)
    h = F.relu(net.fc1(x)).detach()
    e = unit_activity(h)
    assert scalars["plasticity/dormant_fraction/tau_0.1/fc1"] == pytest.approx(
        float(((e / e.mean()) <= 0.1).double().mean())
    )
    assert "plasticity/dormant_fraction/tau_0/act2" in scalars


def test_activation_after_the_head_is_not_hidden() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Tanh())
    assert head_module_names(net) == ("2",)
    probe = PlasticityProbe(net, _cfg())
    assert probe.unit_layers == ("1",)
    assert not any(k.endswith("/3") for k in probe(torch.randn(16, 3)))


def test_conv_flatten_activation_counts_channels_and_keeps_the_conv_jacobian() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.Flatten(),
        nn.ReLU(),
        nn.Linear(3 * 5 * 5, 4),
        nn.ReLU(),
        nn.Linear(4, 2),
    )
    with torch.no_grad():
        net[0].bias[0] = -1e3  # channel 0 dead everywhere
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing it cannot see
        probe = PlasticityProbe(net, _cfg())
    x = torch.randn(16, 2, 5, 5)
    scalars = probe(x)
    assert scalars["plasticity/dormant_fraction/tau_0/2"] == pytest.approx(1 / 3)
    assert "plasticity/jacobian_sv2_mean/0" in scalars
    ref = PlasticityProbe(nn.Sequential(net[0], nn.ReLU(), nn.Flatten(), net[3], net[4], net[5]), _cfg())(x)
    assert scalars["plasticity/jacobian_sv2_mean/0"] == pytest.approx(ref["plasticity/jacobian_sv2_mean/0"])
    assert scalars["plasticity/jacobian_sv2_var/0"] == pytest.approx(ref["plasticity/jacobian_sv2_var/0"])


def test_probe_says_which_layers_it_cannot_see() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            h = self.a(x)
            return self.head(torch.relu(self.b(h) + h))

    with pytest.warns(UserWarning, match=r"layer 'a'.*together with"):
        probe = PlasticityProbe(Residual(), _cfg())
    assert "a" in probe.unseen


def test_weight_decay_leaves_constrained_originals_alone() -> None:
    from torch.nn.utils import parametrizations

    net = nn.Sequential(parametrizations.orthogonal(nn.Linear(4, 4)), nn.ReLU(), nn.Linear(4, 2))
    groups = param_groups(net)
    constrained = next(g for g in groups if g["kind"] == "constrained")
    assert constrained["weight_decay"] == 0.0
    originals = [p.detach().clone() for p in constrained["params"]]
    for opt_class in (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD):
        opt = opt_class(param_groups(net), lr=0.1, weight_decay=0.5)
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        for p, before in zip(constrained["params"], originals, strict=True):
            assert torch.equal(p, before), opt_class.__name__


def test_parseval_and_shrink_perturb_follow_the_data_flow_head() -> None:
    from plasticrl.plasticity.interventions import InterventionContext
    from plasticrl.plasticity.parseval import parseval
    from plasticrl.plasticity.regularizers import RegularizerConfig
    from plasticrl.plasticity.shrink_perturb import ShrinkPerturb, ShrinkPerturbOptions

    net = HeadFirst()
    reg = parseval(net, param_groups(net), RegularizerConfig("parseval", 1e-3))
    assert [p is net.body.weight for p in reg.params] == [True]  # hidden only; the head is free
    sp = ShrinkPerturb(
        net,
        torch.optim.Adam(net.parameters()),
        ShrinkPerturbOptions(),
        InterventionContext(torch.zeros(2, 4), 0),
    )
    gains = {name: gain for name, _, gain in sp.layers}
    assert gains["out"] == 1.0 and gains["body"] > 1.0
