"""nature_cnn and impala_cnn: shapes, parameter counts, input scaling, and the probe's conv Jacobians."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from plasticrl.agents import NETWORKS, NetworkConfig, make_network
from plasticrl.agents.actor_critic import make_actor_critic
from plasticrl.plasticity.metrics import MetricsConfig, _diag_scaled_moments
from plasticrl.plasticity.optimizers import head_module_names
from plasticrl.plasticity.probe import PlasticityProbe, _conv_diag_scaled_moments, _transfer_matrix
from torch import nn

FRAMES = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)


def test_nature_cnn_is_mnih_et_al_2015() -> None:
    net = make_network(FRAMES, gym.spaces.Discrete(6), NetworkConfig(name="nature_cnn", hidden_sizes=(512,)))
    assert net(torch.zeros(3, 4, 84, 84)).shape == (3, 6)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (32, (8, 8), (4, 4)),
        (64, (4, 4), (2, 2)),
        (64, (3, 3), (1, 1)),
    ]
    assert net.fc.in_features == 3136 and net.fc.out_features == 512
    # 8,224 + 32,832 + 36,928 + 1,606,144 + 3,078
    assert sum(p.numel() for p in net.parameters()) == 1_687_206
    assert head_module_names(net) == ("head",)


def test_impala_cnn_shapes() -> None:
    net = make_network(FRAMES, gym.spaces.Discrete(15), NetworkConfig(name="impala_cnn", hidden_sizes=(256,)))
    assert net(torch.zeros(2, 4, 84, 84)).shape == (2, 15)
    assert [s.conv.out_channels for s in net.stacks] == [16, 32, 32]
    assert net.fc.in_features == 32 * 11 * 11  # 84 -> 42 -> 21 -> 11
    procgen = make_network(
        gym.spaces.Box(0, 255, (3, 64, 64), np.uint8),
        gym.spaces.Discrete(15),
        NetworkConfig(name="impala_cnn", hidden_sizes=(256,)),
    )
    assert procgen.fc.in_features == 32 * 8 * 8


@pytest.mark.parametrize("name", ["nature_cnn", "impala_cnn"])
def test_uint8_inputs_are_scaled_float_inputs_are_not(name: str) -> None:
    torch.manual_seed(0)
    cfg = NetworkConfig(name=name, hidden_sizes=(64,))
    a = make_network(FRAMES, gym.spaces.Discrete(3), cfg)
    float_space = gym.spaces.Box(0.0, 1.0, (4, 84, 84), np.float32)
    b = make_network(float_space, gym.spaces.Discrete(3), cfg)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 256, (2, 4, 84, 84)).float()
    torch.testing.assert_close(a(x), b(x / 255.0))


@pytest.mark.parametrize("name", ["nature_cnn", "impala_cnn"])
def test_registered_with_options_and_usable_as_actor_critic(name: str) -> None:
    assert name in NETWORKS
    model = make_actor_critic(FRAMES, gym.spaces.Discrete(4), NetworkConfig(name=name), shared_trunk=True)
    assert model(torch.zeros(2, 4, 84, 84)).shape == (2, 5)


@pytest.mark.parametrize(
    ("c_in", "c_out", "kernel", "stride", "padding", "size"),
    [(2, 3, 3, 1, 1, 7), (2, 3, 4, 2, 0, 9), (3, 4, 8, 4, 0, 20), (2, 2, 3, 2, 1, 8)],
)
def test_conv_stencil_moments_equal_the_transfer_matrix_ones(
    c_in, c_out, kernel, stride, padding, size
) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding)
    x = torch.randn(5, c_in, size, size)
    z = conv(x).detach()
    derivative = (z > 0).float() * torch.rand_like(z)
    got = _conv_diag_scaled_moments(conv, (c_in, size, size), derivative)
    want = _diag_scaled_moments(_transfer_matrix(conv, x[:1]), derivative)  # forms the m x n matrix T
    assert got.k == want.k
    assert got.sv2 == pytest.approx(want.sv2, rel=1e-5)
    assert got.sv4 == pytest.approx(want.sv4, rel=1e-5)


def test_probe_on_the_nature_cnn_measures_every_layer_in_bounded_memory() -> None:
    import resource

    torch.manual_seed(0)
    net = make_network(FRAMES, gym.spaces.Discrete(6), NetworkConfig(name="nature_cnn", hidden_sizes=(512,)))
    probe = PlasticityProbe(net, MetricsConfig(probe_size=64, ntk_probe_size=2))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    out = probe(torch.randint(0, 256, (64, 4, 84, 84)).float(), ntk=True)
    grown_gib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 2**20
    for layer in ("conv1", "conv2", "conv3", "fc"):
        assert 0 < out[f"plasticity/jacobian_sv2_mean/{layer}"] < np.inf
    assert "plasticity/ntk_condition_number" in out
    # conv1's T alone is 12,800 x 28,224 floats (1.4 GB); the old path held 8 of them (11.6 GB)
    assert grown_gib < 1.0


@pytest.mark.filterwarnings("ignore:PlasticityProbe on ImpalaCNN")
@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_chunked_probe_equals_one_forward(chunk: int) -> None:
    """Note [Probe chunks]: chunks change only the float summation order, not the metrics."""
    torch.manual_seed(0)
    space = gym.spaces.Box(0, 255, (4, 12, 12), np.uint8)
    net = make_network(space, gym.spaces.Discrete(3), NetworkConfig(name="impala_cnn", hidden_sizes=(16,)))
    obs = torch.randint(0, 256, (11, 4, 12, 12)).float()
    # jacobian_samples=1: the torch.func layers see the same first sample in every chunking
    cfg = {"probe_size": 11, "ntk_probe_size": 2, "jacobian_samples": 1}
    whole = PlasticityProbe(net, MetricsConfig(probe_chunk=0, **cfg))
    chunked = PlasticityProbe(net, MetricsConfig(probe_chunk=chunk, **cfg))
    want, got = whole(obs), chunked(obs)
    assert got.keys() == want.keys()
    assert any(k.startswith("plasticity/jacobian_sv2_mean/") for k in got)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key
