"""Plain-layer options of the standard networks: ``activation=groupsort`` and ``bias=false``."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from plasticrl.agents.actor_critic import SeparateActorCritic, SharedActorCritic, make_actor_critic
from plasticrl.agents.networks import ACTIVATIONS, NetworkConfig, applicable_keys, make_network
from plasticrl.plasticity.layers import GroupSort
from plasticrl.plasticity.metrics import MetricsConfig
from plasticrl.plasticity.optimizers import head_module_names
from plasticrl.plasticity.probe import PlasticityProbe
from plasticrl.plasticity.units import find_unit_layers
from plasticrl.trainers.config import ConfigError, load_config
from torch import Tensor, nn

CARTPOLE = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
FLAT_MINATAR = gym.spaces.Box(0.0, 1.0, (10, 10, 10), np.float32)  # 10 channels, flattened by mlp: 1000
SIX = gym.spaces.Discrete(6)
# The protocol's actor and critic: 4 hidden layers of 64 on the flattened observation, orthogonal init.
PROTOCOL = dict(name="mlp", hidden_sizes=(64, 64, 64, 64), init="orthogonal")


def minatar(channels: int = 4) -> gym.spaces.Box:
    return gym.spaces.Box(0.0, 1.0, (channels, 10, 10), np.float32)


def binary_obs(space: gym.Space, n: int, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand((n, *space.shape), generator=gen) < 0.3).float()


def weight_layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]


# ----------------------------------------------------------------------------- GroupSort


def test_groupsort_is_a_registered_activation() -> None:
    assert ACTIVATIONS["groupsort"] is GroupSort
    assert NetworkConfig(activation="groupsort", group_size=4).group_size == 4


@pytest.mark.parametrize("group_size", [2, 4])
def test_groupsort_mlp_shapes_and_activation_modules(group_size: int) -> None:
    torch.manual_seed(0)
    cfg = NetworkConfig(**PROTOCOL, activation="groupsort", group_size=group_size)
    net = make_network(FLAT_MINATAR, SIX, cfg)
    acts = [m for m in net.modules() if isinstance(m, GroupSort)]
    assert len(acts) == 4 and all(a.group_size == group_size and a.dim == 1 for a in acts)
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())
    x = binary_obs(FLAT_MINATAR, 5)
    assert net(x).shape == (5, 6)
    # Each activation's output is a permutation, in groups, of its input.
    a = acts[0]
    z = torch.randn(7, 64)
    y = a(z)
    assert torch.equal(y.unflatten(1, (-1, group_size)), z.unflatten(1, (-1, group_size)).sort(-1).values)


@pytest.mark.parametrize("group_size", [2, 4])
def test_groupsort_minatar_cnn_shapes_and_channel_sort(group_size: int) -> None:
    torch.manual_seed(0)
    cfg = NetworkConfig(name="minatar_cnn", activation="groupsort", group_size=group_size, init="orthogonal")
    net = make_network(minatar(10), SIX, cfg)
    assert isinstance(net.conv_act, GroupSort) and isinstance(net.fc_act, GroupSort)
    assert net.conv_act.group_size == group_size and net.conv_act.dim == 1
    x = binary_obs(minatar(10), 3)
    assert net(x).shape == (3, 6)
    z = net.conv(x)
    out = net.conv_act(z)  # each pixel's channels sorted in groups, pixels never mixed
    grouped = z.unflatten(1, (-1, group_size)).sort(2).values.flatten(1, 2)
    assert torch.equal(out, grouped)


def test_groupsort_widths_must_divide() -> None:
    with pytest.raises(
        ValueError, match=r"hidden_sizes\[1\] \(6\) must be divisible by network.group_size \(4\)"
    ):
        make_network(CARTPOLE, SIX, NetworkConfig(hidden_sizes=(8, 6), activation="groupsort", group_size=4))
    with pytest.raises(ValueError, match=r"network.channels \(6\)"):
        make_network(
            minatar(),
            SIX,
            NetworkConfig(name="minatar_cnn", channels=6, activation="groupsort", group_size=4),
        )
    # Other activations do not care about group_size.
    make_network(CARTPOLE, SIX, NetworkConfig(hidden_sizes=(6,), group_size=4))


@pytest.mark.parametrize("activation", ["groupsort", "relu"])
def test_orthogonal_init_of_plain_layers(activation: str) -> None:
    torch.manual_seed(0)
    net = make_network(FLAT_MINATAR, SIX, NetworkConfig(**PROTOCOL, activation=activation))
    layers = weight_layers(net)
    head = dict(net.named_modules())[head_module_names(net)[0]]
    for name, layer in layers:
        w = layer.weight.detach().double()
        gain2 = 1.0 if layer is head else 2.0
        small = min(w.shape)
        gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T  # the smaller side
        torch.testing.assert_close(gram, gain2 * torch.eye(small, dtype=torch.float64), atol=1e-5, rtol=0)
        if layer.bias is not None:
            assert torch.equal(layer.bias, torch.zeros_like(layer.bias)), name
    assert [tuple(m.weight.shape) for _, m in layers] == [(64, 1000), (64, 64), (64, 64), (64, 64), (6, 64)]
    # Initialisation, not a constraint: plain parameters, no parametrization.
    assert not any(hasattr(m, "parametrizations") for _, m in layers)


def test_protocol_actor_critic_is_two_orthogonal_4x64_mlps() -> None:
    torch.manual_seed(0)
    cfg = NetworkConfig(**PROTOCOL, activation="groupsort", bias=False)
    model = make_actor_critic(FLAT_MINATAR, SIX, cfg)
    assert isinstance(model, SeparateActorCritic)
    for part, outputs in ((model.actor, 6), (model.critic, 1)):
        assert [tuple(m.weight.shape) for _, m in weight_layers(part)] == [
            (64, 1000),
            (64, 64),
            (64, 64),
            (64, 64),
            (outputs, 64),
        ]
        hidden = [m for _, m in weight_layers(part)][1:4]
        for m in hidden:  # square: WᵀW = 2I
            torch.testing.assert_close(m.weight.T @ m.weight, 2.0 * torch.eye(64), atol=1e-5, rtol=0)
    actor_head = model.get_submodule(model.head_names[0]).weight
    torch.testing.assert_close(actor_head @ actor_head.T, 1e-4 * torch.eye(6), atol=1e-8, rtol=0)  # gain 0.01
    out = model(binary_obs(FLAT_MINATAR, 4))
    assert out.shape == (4, 7)


# ----------------------------------------------------------------------------- bias=false


@pytest.mark.parametrize(
    ("space", "cfg"),
    [
        (CARTPOLE, NetworkConfig(hidden_sizes=(16, 16), bias=False)),
        (
            CARTPOLE,
            NetworkConfig(hidden_sizes=(16, 16), bias=False, activation="groupsort", init="orthogonal"),
        ),
        (minatar(), NetworkConfig(name="minatar_cnn", channels=8, hidden_sizes=(16,), bias=False)),
        (minatar(), NetworkConfig(name="minatar_cnn", channels=8, hidden_sizes=(16,), bias=False, nap=True)),
    ],
    ids=["mlp", "mlp_groupsort", "cnn", "cnn_nap"],
)
def test_no_bias_layers_have_no_bias_parameters(space: gym.Space, cfg: NetworkConfig) -> None:
    torch.manual_seed(0)
    net = make_network(space, SIX, cfg)
    assert all(m.bias is None for _, m in weight_layers(net))
    names = [n for n, _ in net.named_parameters()]
    assert names and all(n.endswith("weight") for n in names)
    assert sum(p.numel() for p in net.parameters()) == sum(m.weight.numel() for _, m in weight_layers(net))
    # The forward is linear-through-zero now (ReLU and GroupSort are positively homogeneous).
    x = binary_obs(space, 3)
    if not cfg.nap:
        torch.testing.assert_close(net(2.0 * x), 2.0 * net(x))
    with_bias = make_network(space, SIX, NetworkConfig(**{**cfg.__dict__, "bias": True}))
    assert all(m.bias is not None for _, m in weight_layers(with_bias))


@pytest.mark.parametrize("shared", [False, True])
def test_no_bias_actor_critics(shared: bool) -> None:
    torch.manual_seed(0)
    cfg = NetworkConfig(hidden_sizes=(16, 16), bias=False, init="orthogonal")
    model = make_actor_critic(CARTPOLE, SIX, cfg, shared_trunk=shared)
    assert isinstance(model, SharedActorCritic if shared else SeparateActorCritic)
    assert not [n for n, _ in model.named_parameters() if "bias" in n]
    assert model(torch.randn(2, 4)).shape == (2, 7)


def test_defaults_keep_the_plain_networks() -> None:
    cfg = NetworkConfig()
    assert cfg.bias and not cfg.nap and cfg.activation == "relu"
    torch.manual_seed(0)
    net = make_network(CARTPOLE, SIX, cfg)
    assert [type(m).__name__ for m in net] == ["Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert all(m.bias is not None for _, m in weight_layers(net))
    assert not dict(net.named_buffers())


# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("name", ["mlp", "minatar_cnn"])
def test_metrics_see_groupsort_hidden_units(name: str) -> None:
    torch.manual_seed(0)
    space = FLAT_MINATAR if name == "mlp" else minatar(10)
    hidden = (64, 64, 64, 64) if name == "mlp" else (32,)
    cfg = NetworkConfig(
        name=name, hidden_sizes=hidden, channels=8, activation="groupsort", bias=False, init="orthogonal"
    )
    net = make_network(space, SIX, cfg)
    acts = [n for n, m in net.named_modules() if isinstance(m, GroupSort)]
    probe = PlasticityProbe(net, MetricsConfig(probe_size=64, ntk_probe_size=4))
    assert probe.unit_layers == tuple(acts) and len(acts) == (4 if name == "mlp" else 2)
    scalars = probe(binary_obs(space, 64), ntk=True)
    for layer in acts:
        for tau in ("0", "0.025", "0.1"):
            assert 0.0 <= scalars[f"plasticity/dormant_fraction/tau_{tau}/{layer}"] <= 1.0
    assert scalars["plasticity/srank"] >= 1.0 and "plasticity/effective_rank" in scalars
    assert "plasticity/ntk_rank" in scalars
    # Unit *recycling* (ReDo, CBP) is another matter: GroupSort mixes the units of a group, so a
    # producer's unit is no single activation output, and the discovery refuses at start-up.
    with pytest.raises(ValueError, match="cannot be recycled"):
        find_unit_layers(net, binary_obs(space, 4))


def test_groupsort_dormant_unit_is_counted() -> None:
    """A GroupSort output that is 0 on every input is dormant (its whole group is zeroed)."""
    torch.manual_seed(0)
    net = make_network(CARTPOLE, SIX, NetworkConfig(hidden_sizes=(8, 8), activation="groupsort", bias=False))
    with torch.no_grad():
        net[1].weight[0:2].zero_()  # the first group (units 0, 1) of the first layer: both always 0
    probe = PlasticityProbe(net, MetricsConfig(probe_size=32, ntk_probe_size=4))
    scalars = probe(torch.randn(32, 4))
    assert scalars["plasticity/dormant_fraction/tau_0/2"] == pytest.approx(2 / 8)


# ----------------------------------------------------------------------------- config keys


def test_option_keys_apply_to_the_plain_networks_only() -> None:
    for name in ("mlp", "minatar_cnn"):
        assert {"bias", "nap", "group_size", "activation"} <= applicable_keys(name)
    for name in ("isometric_mlp", "isometric_minatar_cnn"):
        assert not {"bias", "nap"} & applicable_keys(name)
        assert "group_size" in applicable_keys(name)
    cfg = load_config(None, ["network.activation=groupsort", "network.group_size=4", "network.bias=false"])
    assert cfg.network.activation == "groupsort" and cfg.network.group_size == 4 and not cfg.network.bias
    for name in ("isometric_mlp", "isometric_minatar_cnn"):
        with pytest.raises(ConfigError, match="bias"):
            load_config(None, [f"network.name={name}", "network.bias=false"])
    with pytest.raises(ConfigError, match="bias"):
        load_config(None, ["network.bias=maybe"])


def test_isometric_factories_refuse_the_plain_options_programmatically() -> None:
    for kwargs in ({"nap": True}, {"bias": False}):
        with pytest.raises(ValueError, match="mlp and minatar_cnn"):
            make_network(CARTPOLE, SIX, NetworkConfig(name="isometric_mlp", hidden_sizes=(8,), **kwargs))
