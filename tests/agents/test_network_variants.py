"""Architecture variants of the standard networks: ``network.activation=crelu`` and ``network.layernorm``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from plasticrl.agents.actor_critic import SharedActorCritic, make_actor_critic
from plasticrl.agents.isometric import isometric_minatar_cnn, isometric_mlp
from plasticrl.agents.networks import ACTIVATIONS, NetworkConfig, activation_expansion, make_network
from plasticrl.plasticity.layers import CReLU
from plasticrl.plasticity.metrics import ACTIVATION_TYPES, MetricsConfig
from plasticrl.plasticity.optimizers import param_groups
from plasticrl.plasticity.probe import PlasticityProbe
from plasticrl.trainers.config import ConfigError, load_config
from torch import Tensor, nn
from torch.testing import assert_close

from tests.conftest import run_minatar_preset

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "minatar"
CARTPOLE = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
# MinAtar games, channel-first (C, 10, 10), full 6-action set (docs/methods.md §4).
MINATAR_CHANNELS = {"asterix": 4, "breakout": 4, "freeway": 7, "seaquest": 10, "space_invaders": 6}
VARIANTS = [("relu", False), ("crelu", False), ("relu", True), ("crelu", True)]
VARIANT_IDS = [f"{a}{'-ln' if ln else ''}" for a, ln in VARIANTS]


def minatar_space(channels: int) -> gym.spaces.Box:
    return gym.spaces.Box(0.0, 1.0, (channels, 10, 10), np.float32)


def module_types(net: nn.Module) -> list[type[nn.Module]]:
    return [type(m) for name, m in net.named_modules() if name]


# ----------------------------------------------------------------------------- CReLU


def test_crelu_is_exactly_relu_x_then_relu_minus_x() -> None:
    torch.manual_seed(0)
    for x in (torch.randn(5, 7), torch.randn(3, 4, 6, 6)):
        y = CReLU()(x)
        n = x.shape[1]
        assert y.shape == (x.shape[0], 2 * n, *x.shape[2:])
        assert torch.equal(y[:, :n], torch.relu(x))
        assert torch.equal(y[:, n:], torch.relu(-x))
        # Each input entry lands in exactly one half: the norm is preserved.
        assert_close(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))
    assert torch.equal(CReLU(dim=-1)(torch.tensor([[2.0, -1.0]])), torch.tensor([[2.0, 0.0, 0.0, 1.0]]))


def test_crelu_never_all_zero_on_nonzero_input_and_passes_gradient_everywhere() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 6, generator=gen)
    x[x.abs() < 0.5] = 0.0  # many exact zeros, but no all-zero row below
    x[:, 0] = torch.where(x[:, 0] == 0.0, torch.full_like(x[:, 0], -1e-3), x[:, 0])
    y = CReLU()(x)
    assert bool((y != 0).any(dim=1).all())
    # Exactly one of each pair (relu(x_i), relu(−x_i)) is nonzero iff x_i is.
    assert torch.equal((y[:, :6] != 0) ^ (y[:, 6:] != 0), x != 0)
    # ReLU is all zero on all-negative inputs; CReLU is not, on any row.
    negative = -x.abs() - 1e-3
    assert torch.relu(negative).abs().sum() == 0 and bool((CReLU()(negative) != 0).any(dim=1).all())
    # d/dx Σ g·CReLU(x) = g₁·1[x > 0] − g₂·1[x < 0]: nonzero wherever x is.
    x = torch.randn(8, 5, generator=gen, requires_grad=True)
    g = torch.randn(8, 10, generator=gen)
    (CReLU()(x) * g).sum().backward()
    assert x.grad is not None
    assert_close(x.grad, g[:, :5] * (x > 0) - g[:, 5:] * (x < 0))


def test_crelu_is_registered_as_activation_and_hidden_unit_type() -> None:
    assert ACTIVATIONS["crelu"] is CReLU
    assert CReLU in ACTIVATION_TYPES
    assert activation_expansion("crelu") == 2
    assert all(activation_expansion(name) == 1 for name in ACTIVATIONS if name != "crelu")


# ----------------------------------------------------------------------------- shapes and fan-in


@pytest.mark.parametrize(("activation", "layernorm"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("net_name", ["mlp", "minatar_cnn"])
@pytest.mark.parametrize("game", sorted(MINATAR_CHANNELS))
def test_output_shape_on_minatar_spaces(game: str, net_name: str, activation: str, layernorm: bool) -> None:
    space = minatar_space(MINATAR_CHANNELS[game])
    cfg = NetworkConfig(net_name, (32, 16), channels=8, activation=activation, layernorm=layernorm)
    net = make_network(space, gym.spaces.Discrete(6), cfg)
    x = torch.rand(5, *space.shape).round()
    assert net(x).shape == (5, 6)


@pytest.mark.parametrize(("activation", "layernorm"), VARIANTS, ids=VARIANT_IDS)
def test_mlp_on_cartpole_shapes_and_fan_in(activation: str, layernorm: bool) -> None:
    cfg = NetworkConfig("mlp", (32, 16), activation=activation, layernorm=layernorm)
    net = make_network(CARTPOLE, gym.spaces.Discrete(2), cfg)
    assert net(torch.randn(7, 4)).shape == (7, 2)
    k = 2 if activation == "crelu" else 1
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4, 32), (32 * k, 16), (16 * k, 2)]


@pytest.mark.parametrize("layernorm", [False, True])
def test_minatar_cnn_crelu_doubles_fc_and_head_fan_in(layernorm: bool) -> None:
    cfg = NetworkConfig("minatar_cnn", (128,), channels=16, activation="crelu", layernorm=layernorm)
    net = make_network(minatar_space(4), gym.spaces.Discrete(6), cfg)
    assert net.conv.out_channels == 16
    assert (net.fc.in_features, net.fc.out_features) == (2 * 16 * 8 * 8, 128)
    assert net.head.in_features == 2 * 128
    x = torch.rand(3, 4, 10, 10)
    conv_out = net.conv_act(net.conv_norm(net.conv(x)) if layernorm else net.conv(x))
    assert conv_out.shape == (3, 32, 8, 8)


# ----------------------------------------------------------------------------- LayerNorm placement


def test_mlp_layernorm_sits_between_linear_and_activation() -> None:
    cfg = NetworkConfig("mlp", (32, 16), layernorm=True, activation="crelu")
    net = make_network(CARTPOLE, gym.spaces.Discrete(2), cfg)
    assert module_types(net) == [
        nn.Flatten,
        nn.Linear,
        nn.LayerNorm,
        CReLU,
        nn.Linear,
        nn.LayerNorm,
        CReLU,
        nn.Linear,
    ]
    assert [m.normalized_shape for m in net.modules() if isinstance(m, nn.LayerNorm)] == [(32,), (16,)]
    plain = make_network(CARTPOLE, gym.spaces.Discrete(2), NetworkConfig("mlp", (32, 16)))
    assert module_types(plain) == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]


def test_minatar_cnn_norm_modules_in_forward_order() -> None:
    cfg = NetworkConfig("minatar_cnn", (32,), channels=8, layernorm=True)
    net = make_network(minatar_space(4), gym.spaces.Discrete(6), cfg)
    names = [n for n, _ in net.named_modules() if n]
    assert names == ["conv", "conv_norm", "conv_act", "fc", "fc_norm", "fc_act", "head"]
    assert isinstance(net.conv_norm, nn.GroupNorm)
    assert (net.conv_norm.num_groups, net.conv_norm.num_channels) == (1, 8)
    assert isinstance(net.fc_norm, nn.LayerNorm) and net.fc_norm.normalized_shape == (32,)
    # The modules run in the order named_modules lists them.
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda m, a, o, n=n: order.append(n)) for n, m in net.named_modules() if n
    ]
    net(torch.rand(2, 4, 10, 10))
    for h in handles:
        h.remove()
    assert order == names
    plain = make_network(
        minatar_space(4), gym.spaces.Discrete(6), NetworkConfig("minatar_cnn", (32,), channels=8)
    )
    assert [n for n, _ in plain.named_modules() if n] == ["conv", "conv_act", "fc", "fc_act", "head"]
    assert plain.conv_norm is None and plain.fc_norm is None


def test_activations_receive_normalised_pre_activations() -> None:
    # At init (gain 1, bias 0) each sample's input to the activation has mean 0 and variance 1:
    # over the features for the dense layer, over all of (C, H, W) for the conv.
    torch.manual_seed(2)
    cfg = NetworkConfig("minatar_cnn", (32,), channels=8, layernorm=True)
    net = make_network(minatar_space(4), gym.spaces.Discrete(6), cfg)
    seen: dict[str, Tensor] = {}
    handles = [
        getattr(net, name).register_forward_hook(lambda m, a, o, n=name: seen.__setitem__(n, a[0]))
        for name in ("conv_act", "fc_act")
    ]
    net(torch.rand(16, 4, 10, 10).round())
    for h in handles:
        h.remove()
    for name, z in seen.items():
        flat = z.flatten(1)
        assert_close(flat.mean(1), torch.zeros(16), atol=1e-5, rtol=0, msg=name)
        assert_close(flat.var(1, unbiased=False), torch.ones(16), atol=1e-3, rtol=0, msg=name)


@pytest.mark.parametrize("net_name", ["mlp", "minatar_cnn"])
def test_param_groups_tag_norm_parameters_as_vectors(net_name: str) -> None:
    cfg = NetworkConfig(net_name, (32,), channels=8, layernorm=True, activation="crelu")
    net = make_network(minatar_space(4), gym.spaces.Discrete(6), cfg)
    groups = {g["kind"]: {id(p) for p in g["params"]} for g in param_groups(net)}
    norms = [m for m in net.modules() if isinstance(m, nn.LayerNorm | nn.GroupNorm)]
    assert len(norms) == (1 if net_name == "mlp" else 2)
    for norm in norms:
        assert {id(norm.weight), id(norm.bias)} <= groups["vector"]
    weights = [m.weight for m in net.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    assert groups["matrix"] == {id(w) for w in weights[:-1]}
    assert groups["head"] == {id(weights[-1])}


@pytest.mark.parametrize("net_name", ["mlp", "minatar_cnn"])
def test_every_parameter_gets_a_gradient_and_orthogonal_init_leaves_norms_alone(net_name: str) -> None:
    torch.manual_seed(3)
    cfg = NetworkConfig(net_name, (32,), channels=8, layernorm=True, activation="crelu", init="orthogonal")
    net = make_network(minatar_space(4), gym.spaces.Discrete(6), cfg)
    for m in net.modules():
        if isinstance(m, nn.LayerNorm | nn.GroupNorm):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    (net(torch.rand(8, 4, 10, 10)) * torch.randn(8, 6)).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ----------------------------------------------------------------------------- plasticity probe


def test_probe_counts_the_2_width_outputs_of_a_crelu_layer() -> None:
    net = make_network(
        gym.spaces.Box(-1.0, 1.0, (3,)),
        gym.spaces.Discrete(2),
        NetworkConfig("mlp", (4,), activation="crelu"),
    )
    with torch.no_grad():  # pre-activations z = (1, −1, 2, 0) for every input
        net[1].weight.zero_()
        net[1].bias.copy_(torch.tensor([1.0, -1.0, 2.0, 0.0]))
    probe = PlasticityProbe(net, MetricsConfig(probe_size=16, ntk_probe_size=2))
    assert probe.unit_layers == ("2",)
    scalars = probe(torch.randn(16, 3))
    # relu(z) = (1, 0, 2, 0), relu(−z) = (0, 1, 0, 0): 5 of the 8 units are exactly zero.
    assert scalars["plasticity/dormant_fraction/tau_0/2"] == 5 / 8
    assert scalars["plasticity/dormant_fraction/tau_0"] == 5 / 8


def test_probe_jacobian_of_a_crelu_layer_matches_its_definition() -> None:
    torch.manual_seed(4)
    net = make_network(
        gym.spaces.Box(-1.0, 1.0, (3,)),
        gym.spaces.Discrete(2),
        NetworkConfig("mlp", (4,), activation="crelu"),
    )
    x = torch.randn(6, 3)
    cfg = MetricsConfig(probe_size=6, ntk_probe_size=2, jacobian_samples=6)
    scalars = PlasticityProbe(net, cfg)(x)
    # J = [diag(1[z > 0]); −diag(1[z < 0])] W, (8 × 3); its 3 singular values per sample.
    w = net[1].weight.detach()
    z = net[1](x).detach()
    jacobians = [torch.cat([torch.diag((zn > 0).float()), -torch.diag((zn < 0).float())]) @ w for zn in z]
    sv2 = torch.cat([torch.linalg.svdvals(j) ** 2 for j in jacobians])
    assert scalars["plasticity/jacobian_sv2_mean/1"] == pytest.approx(float(sv2.mean()), rel=1e-5)
    var = float((sv2**2).mean() - sv2.mean() ** 2)
    assert scalars["plasticity/jacobian_sv2_var/1"] == pytest.approx(var, rel=1e-4, abs=1e-7)


def test_probe_on_minatar_cnn_variants_reports_doubled_conv_units() -> None:
    cfg = NetworkConfig("minatar_cnn", (16,), channels=4, activation="crelu", layernorm=True)
    net = make_network(minatar_space(4), gym.spaces.Discrete(6), cfg)
    probe = PlasticityProbe(net, MetricsConfig(probe_size=8, ntk_probe_size=2, jacobian=False))
    assert probe.unit_layers == ("conv_act", "fc_act")
    assert probe.weight_layers == ("conv", "fc", "head")
    captured: dict[str, tuple[int, ...]] = {}
    handles = [
        getattr(net, n).register_forward_hook(lambda m, a, o, n=n: captured.__setitem__(n, tuple(o.shape)))
        for n in probe.unit_layers
    ]
    scalars = probe(torch.rand(8, 4, 10, 10).round())
    for h in handles:
        h.remove()
    assert captured == {"conv_act": (8, 8, 8, 8), "fc_act": (8, 32)}  # 2·channels, 2·hidden units
    assert {"plasticity/dormant_fraction/tau_0/conv_act", "plasticity/dormant_fraction/tau_0/fc_act"} <= set(
        scalars
    )


# ----------------------------------------------------------------------------- PPO actor-critics


@pytest.mark.parametrize("shared_trunk", [False, True])
@pytest.mark.parametrize(
    ("space", "net_name"),
    [(CARTPOLE, "mlp"), (minatar_space(4), "minatar_cnn")],
    ids=["cartpole-mlp", "minatar-cnn"],
)
def test_actor_critic_with_crelu_and_layernorm(
    space: gym.spaces.Box, net_name: str, shared_trunk: bool
) -> None:
    torch.manual_seed(5)
    cfg = NetworkConfig(net_name, (16,), channels=4, activation="crelu", layernorm=True)
    model = make_actor_critic(space, gym.spaces.Discrete(3), cfg, shared_trunk=shared_trunk)
    obs = torch.rand(5, *space.shape)
    logits, value = model.policy_and_value(obs)
    assert logits.shape == (5, 3) and value.shape == (5,)
    assert model(obs).shape == (5, 4)
    heads = [model.get_submodule(h) for h in model.head_names]
    assert [h.in_features for h in heads] == [32, 32]  # 2·hidden: the heads read CReLU features
    if shared_trunk:
        assert isinstance(model, SharedActorCritic)
    groups = {g["kind"]: {id(p) for p in g["params"]} for g in param_groups(model)}
    assert groups["head"] == {id(h.weight) for h in heads}
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm | nn.GroupNorm)]
    assert norms and all(id(m.weight) in groups["vector"] for m in norms)


# ----------------------------------------------------------------------------- config


def test_config_keys_load_and_validate() -> None:
    cfg = load_config(None, ["network.activation=crelu", "network.layernorm=true"])
    assert (cfg.network.activation, cfg.network.layernorm) == ("crelu", True)
    assert load_config(None, []).network.layernorm is False
    with pytest.raises(ConfigError):
        load_config(None, ["network.layernorm=1"])
    with pytest.raises(ValueError, match="layernorm must be true or false"):
        NetworkConfig(layernorm="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="crelu"):  # the error lists the valid activations
        NetworkConfig(activation="crelu2")


@pytest.mark.parametrize("factory", [isometric_mlp, isometric_minatar_cnn])
@pytest.mark.parametrize(
    ("option", "match"), [({"layernorm": True}, "layernorm"), ({"activation": "crelu"}, "crelu")]
)
def test_isometric_networks_reject_the_variants(factory: Any, option: dict[str, Any], match: str) -> None:
    cfg = NetworkConfig("isometric", (16,), channels=4, **option)
    with pytest.raises(ValueError, match=match):
        factory(minatar_space(4), gym.spaces.Discrete(6), cfg)


# ----------------------------------------------------------------------------- presets


def run_preset(method: str, runs_dir: Path) -> tuple[Any, dict[str, list[float]]]:
    """Train ``dqn_permuted_<method>.yaml`` on a tiny MinAtar net; (agent, logged ``plasticity/*``)."""
    extra = ("total_steps=2000", "metrics.every=500", "metrics.ntk_every=0")
    return run_minatar_preset(method, runs_dir, "plasticity/", extra)


def test_crelu_preset_trains_a_crelu_network_and_measures_its_units(runs_dir: Path) -> None:
    cfg = load_config(PRESETS / "dqn_permuted_crelu.yaml")
    assert (cfg.network.name, cfg.network.activation, cfg.network.layernorm) == (
        "minatar_cnn",
        "crelu",
        False,
    )
    agent, logged = run_preset("crelu", runs_dir)
    net = agent.q_net
    assert isinstance(net.conv_act, CReLU) and isinstance(net.fc_act, CReLU)
    assert (net.fc.in_features, net.head.in_features) == (2 * 4 * 8 * 8, 2 * 16)  # channels 4, hidden 16
    for layer in ("conv_act", "fc_act"):
        assert len(logged[f"plasticity/dormant_fraction/tau_0/{layer}"]) >= 3
    assert "plasticity/jacobian_sv2_mean/fc" in logged  # the torch.func path handles CReLU
    # No observation silences a CReLU layer, even after training.
    feats: list[Tensor] = []
    handle = net.fc_act.register_forward_hook(lambda m, a, o: feats.append(o))
    with torch.no_grad():
        net(torch.rand(64, 4, 10, 10).round())
    handle.remove()
    assert bool((feats[0] != 0).any(dim=1).all())


def test_layernorm_preset_trains_its_norm_parameters(runs_dir: Path) -> None:
    cfg = load_config(PRESETS / "dqn_permuted_layernorm.yaml")
    assert (cfg.network.activation, cfg.network.layernorm) == ("relu", True)
    agent, logged = run_preset("layernorm", runs_dir)
    net = agent.q_net
    assert isinstance(net.conv_norm, nn.GroupNorm) and isinstance(net.fc_norm, nn.LayerNorm)
    # Trained: the gains and biases left their initial (1, 0), so they are in the optimizer.
    for norm in (net.conv_norm, net.fc_norm):
        assert not torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert not torch.equal(norm.bias, torch.zeros_like(norm.bias))
    in_optimizer = {id(p) for g in agent.optimizer.param_groups for p in g["params"]}
    assert {id(p) for p in net.parameters()} == in_optimizer
    assert len(logged["plasticity/dormant_fraction/tau_0/fc_act"]) >= 3
