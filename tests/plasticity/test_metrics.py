"""Plasticity metrics: crafted inputs with exact answers, closed forms against torch.func, the collector."""

from __future__ import annotations

import math
import re

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from plasticrl.agents.networks import NetworkConfig, make_network
from plasticrl.plasticity.layers import GroupSort
from plasticrl.plasticity.metrics import (
    MetricsConfig,
    custom_scalars_layout,
    dormant_fraction,
    dormant_masks,
    empirical_ntk,
    feature_rank,
    grad_norm,
    jacobian_sv2,
    layer_jacobian,
    ntk_stats,
    optimizer_stats,
    param_rms,
    persistent_dormant,
    relu_linear_jacobian,
    relu_linear_jacobian_sv2,
    weight_stats,
)
from plasticrl.plasticity.optimizers import param_groups
from plasticrl.plasticity.probe import PlasticityProbe
from torch import Tensor, nn
from torch.func import jacrev, vmap
from torch.testing import assert_close

# torch.func's forward mode registers its decompositions with torch.jit.script on first use.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Small LAPACK calls are much slower multi-threaded on a busy machine; conftest restores the count."""
    torch.set_num_threads(1)


def orthogonal_matrix(n: int, seed: int) -> Tensor:
    q, _ = torch.linalg.qr(
        torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    )
    return q


def reference_moments(jac: Tensor) -> tuple[float, float]:
    """Mean and pooled variance of σ² from an SVD of every J_n (the definition, computed the slow way)."""
    sv2 = torch.linalg.svdvals(jac.detach().to(torch.float64)).square().flatten()
    return float(sv2.mean()), float(sv2.var(unbiased=False))


# ----------------------------------------------------------------------------- dormant units


def crafted_acts() -> dict[str, Tensor]:
    # Linear layer, 5 units, E|h| = [1, 1, 1, 0.05, 0]: mean 0.61, scores 1.64 ×3, 0.082, 0.
    linear = torch.tensor([[1.0, -1.0, 2.0, 0.1, 0.0], [-1.0, 1.0, 0.0, 0.0, 0.0]])
    # Conv layer, 4 channels over batch 2 × 2×2 pixels: E|h| = [0, 0.05, 1, 1]; mean 0.5125;
    # channel 1's score is 0.0976 (dormant at τ = 0.1, not at 0.025); channel 0 is exactly zero.
    conv = torch.zeros(2, 4, 2, 2)
    conv[1, 1, 0, 1] = -0.4
    conv[:, 2] = 1.0
    conv[:, 3] = -1.0
    return {"fc_act": linear, "conv_act": conv}


def test_dormant_fraction_exact_per_layer_and_unit_weighted_total() -> None:
    got = dormant_fraction(crafted_acts(), taus=(0.0, 0.025, 0.1))
    assert got == {
        "dormant_fraction/tau_0/fc_act": 1 / 5,
        "dormant_fraction/tau_0/conv_act": 1 / 4,
        "dormant_fraction/tau_0": 2 / 9,
        "dormant_fraction/tau_0.025/fc_act": 1 / 5,
        "dormant_fraction/tau_0.025/conv_act": 1 / 4,
        "dormant_fraction/tau_0.025": 2 / 9,
        "dormant_fraction/tau_0.1/fc_act": 2 / 5,
        "dormant_fraction/tau_0.1/conv_act": 2 / 4,
        "dormant_fraction/tau_0.1": 4 / 9,  # unit-weighted; the mean of layer fractions is 0.45
    }


def test_tau_zero_means_exactly_zero_and_silent_layer_is_all_dormant() -> None:
    tiny = torch.tensor([[1e-30, 5.0, 0.0]])
    got = dormant_fraction({"a": tiny, "silent": torch.zeros(3, 7)}, taus=(0.0, 0.1))
    assert got["dormant_fraction/tau_0/a"] == 1 / 3  # 1e-30 is activity; only the exact zero is dead
    assert got["dormant_fraction/tau_0.1/a"] == 2 / 3
    assert got["dormant_fraction/tau_0/silent"] == 1.0
    assert got["dormant_fraction/tau_0.1/silent"] == 1.0
    assert got["dormant_fraction/tau_0"] == (1 + 7) / 10


def test_persistent_dormant_counts_units_dormant_twice() -> None:
    before = dormant_masks(crafted_acts(), taus=(0.1,))
    acts = crafted_acts()
    acts["fc_act"][:, 4] = 3.0  # unit 4 revives; unit 3 stays dormant
    acts["conv_act"][:, 2] = 0.0  # channel 2 dies now: dormant once, not persistent
    acts["conv_act"][:, 3] = -3.0  # E|h| = [0, 0.05, 0, 3]: channel 1 still scores 0.066 ≤ 0.1
    got = persistent_dormant(before, dormant_masks(acts, taus=(0.1,)))
    assert got["dormant_persistent/tau_0.1/fc_act"] == 1 / 5
    assert got["dormant_persistent/tau_0.1/conv_act"] == 2 / 4
    assert got["dormant_persistent/tau_0.1"] == 3 / 9


# ----------------------------------------------------------------------------- feature rank


def test_feature_rank_on_a_known_spectrum() -> None:
    n, d = 50, 8
    u = orthogonal_matrix(n, 0)[:, :d]
    v = orthogonal_matrix(d, 1)
    sigma = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    phi = u @ torch.diag(sigma) @ v.T  # cumulative energy 0.4, 0.7, 0.9, 1.0
    assert feature_rank(phi, delta=0.01)["srank"] == 4.0
    assert feature_rank(phi, delta=0.15)["srank"] == 3.0
    assert feature_rank(phi, delta=0.1)["srank"] == 3.0  # exactly on the threshold 0.9 counts
    assert feature_rank(phi, delta=0.35)["srank"] == 2.0
    p = [0.4, 0.3, 0.2, 0.1]
    expected = math.exp(-sum(x * math.log(x) for x in p))
    assert feature_rank(phi)["effective_rank"] == pytest.approx(expected, rel=1e-9)
    assert feature_rank(phi)["feature_norm"] == pytest.approx(float(phi.norm(dim=1).mean()), rel=1e-12)


def test_feature_rank_flat_spectrum_and_zero_features() -> None:
    got = feature_rank(torch.diag(torch.tensor([3.0, 3.0, 3.0, 3.0])))
    assert got == {"srank": 4.0, "effective_rank": pytest.approx(4.0), "feature_norm": 3.0}
    assert feature_rank(torch.zeros(5, 3)) == {"srank": 0.0, "effective_rank": 0.0, "feature_norm": 0.0}


# ----------------------------------------------------------------------------- weights


def linear_with(weight: Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def test_weight_stats_on_known_matrices() -> None:
    wide = orthogonal_matrix(5, 3)[:3].float()  # 3 × 5 with orthonormal rows
    net = nn.Sequential(
        linear_with(2 * torch.eye(3)), nn.ReLU(), linear_with(torch.diag(torch.tensor([3.0, 1.0, 0.0]))[:2])
    )
    net.append(nn.ReLU()).append(linear_with(torch.zeros(3, 2))).append(nn.ReLU()).append(linear_with(wide))
    stats = weight_stats(net)
    # 2·I: σ = 2, 2, 2; stable rank 12 / 4 = 3; G = 4I, gap ‖3I‖_F / √3 = 3.
    assert stats["weight_norm/0"] == pytest.approx(math.sqrt(12))
    assert (stats["weight_sv_max/0"], stats["weight_sv_min/0"]) == pytest.approx((2.0, 2.0))
    assert stats["stable_rank/0"] == pytest.approx(3.0)
    assert stats["isometry_gap/0"] == pytest.approx(3.0)
    assert weight_stats(net, target=4.0)["isometry_gap/0"] == pytest.approx(0.0, abs=1e-6)
    # diag(3, 1) (as a 2 × 3 matrix): stable rank 10/9, gap ‖diag(8, 0)‖_F / √2.
    assert stats["stable_rank/2"] == pytest.approx(10 / 9)
    assert (stats["weight_sv_max/2"], stats["weight_sv_min/2"]) == pytest.approx((3.0, 1.0))
    assert stats["isometry_gap/2"] == pytest.approx(8 / math.sqrt(2))
    # Zero 3 × 2 matrix (tall): gap ‖−I_2‖ / √2 = 1, stable rank 0.
    assert (stats["stable_rank/4"], stats["isometry_gap/4"], stats["weight_sv_min/4"]) == (0.0, 1.0, 0.0)
    # Wide orthogonal: every σ (on the smaller side) is 1 and the gap is 0.
    assert (stats["weight_sv_max/6"], stats["weight_sv_min/6"]) == pytest.approx((1.0, 1.0))
    assert stats["stable_rank/6"] == pytest.approx(3.0)
    assert stats["isometry_gap/6"] == pytest.approx(0.0, abs=1e-6)


def test_weight_stats_reads_conv_kernels_flattened_and_constrained_weights() -> None:
    conv = nn.Conv2d(1, 2, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]]).reshape(2, 1, 2, 2))
    ortho = nn.utils.parametrizations.orthogonal(nn.Linear(6, 4))
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), ortho, nn.ReLU(), nn.Linear(4, 1))
    stats = weight_stats(net)
    assert (stats["weight_sv_max/0"], stats["weight_sv_min/0"]) == pytest.approx((2.0, 1.0))
    # The constrained weight is measured under the module's name; its `original` is not.
    assert stats["isometry_gap/3"] == pytest.approx(0.0, abs=1e-5)
    assert stats["stable_rank/3"] == pytest.approx(4.0, abs=1e-4)
    assert not any("original" in key or "parametrizations" in key for key in stats)


# ----------------------------------------------------------------------------- Jacobians


@pytest.mark.parametrize("shape", [(5, 7), (7, 5)], ids=["wide", "tall"])
def test_closed_form_relu_jacobian_equals_jacrev(shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape[0], generator=g)
    x = torch.randn(16, shape[1], generator=g, dtype=torch.float64)
    b = b.to(torch.float64)
    expected = vmap(jacrev(lambda v: torch.relu(w @ v + b)))(x)
    z = x @ w.T + b
    assert 0 < int((z > 0).sum()) < z.numel()  # both branches of the ReLU are exercised
    assert_close(relu_linear_jacobian(w, z), expected, rtol=0, atol=0)
    mean, var = reference_moments(expected)
    got = relu_linear_jacobian_sv2(w, z)
    assert got["jacobian_sv2_mean"] == pytest.approx(mean, rel=1e-10)
    assert got["jacobian_sv2_var"] == pytest.approx(var, rel=1e-9)
    assert jacobian_sv2(expected) == pytest.approx(got, rel=1e-9)
    layer = lambda v: torch.relu(v @ w.T + b)  # noqa: E731
    assert_close(layer_jacobian(layer, x), expected)


@pytest.mark.parametrize("shape", [(8, 8), (4, 8), (8, 4)], ids=["square", "wide", "tall"])
def test_isometric_layer_has_unit_jacobian_singular_values(shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    layer = nn.utils.parametrizations.orthogonal(nn.Linear(shape[1], shape[0]))
    net = nn.Sequential(layer, GroupSort(2), nn.Linear(shape[0], 3))
    probe = PlasticityProbe(net, MetricsConfig(probe_size=16, ntk_probe_size=4, jacobian_samples=16))
    scalars = probe(torch.randn(16, shape[1]))
    assert scalars["plasticity/jacobian_sv2_mean/0"] == pytest.approx(1.0, abs=1e-5)
    assert scalars["plasticity/jacobian_sv2_var/0"] == pytest.approx(0.0, abs=1e-5)
    assert scalars["plasticity/jacobian_sv2_mean"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    "act",
    [nn.Tanh(), nn.ReLU(inplace=True), nn.ELU(inplace=True), nn.LeakyReLU(0.1), GroupSort(2)],
    ids=["tanh", "relu_inplace", "elu_inplace", "leaky_relu", "groupsort"],
)
def test_probe_conv_jacobian_matches_the_svd_definition(act: nn.Module) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 3, padding=1, stride=2)
    net = nn.Sequential(conv, act, nn.Flatten(), nn.Linear(4 * 3 * 3, 2))
    x = torch.randn(12, 2, 6, 6)
    cfg = MetricsConfig(probe_size=12, ntk_probe_size=2, jacobian_samples=5)
    scalars = PlasticityProbe(net, cfg)(x)
    # Elementwise activations: closed form on all 12 samples; GroupSort: torch.func on the first 5.
    n = 5 if isinstance(act, GroupSort) else 12
    mean, var = reference_moments(layer_jacobian(nn.Sequential(conv, act), x[:n].clone()))
    assert scalars["plasticity/jacobian_sv2_mean/0"] == pytest.approx(mean, rel=1e-5)
    assert scalars["plasticity/jacobian_sv2_var/0"] == pytest.approx(var, rel=1e-4)


def test_probe_on_registered_isometric_mlp() -> None:
    pytest.importorskip("plasticrl.agents.isometric")  # registers isometric_mlp (orthogonal_ + GroupSort)
    torch.manual_seed(0)
    net = make_network(*spaces((12,)), NetworkConfig(name="isometric_mlp", hidden_sizes=(16, 8)))
    probe = PlasticityProbe(net, MetricsConfig(probe_size=8, ntk_probe_size=2, jacobian_samples=4))
    scalars = probe(torch.randn(8, 12), ntk=True)
    layers = [key.removeprefix("plasticity/jacobian_sv2_mean/") for key in scalars if "sv2_mean/" in key]
    assert len(layers) == 2
    for layer in layers:  # tall 16 × 12 and wide 8 × 16, both orthogonal, GroupSort after each
        assert scalars[f"plasticity/jacobian_sv2_mean/{layer}"] == pytest.approx(1.0, abs=1e-5)
        assert scalars[f"plasticity/isometry_gap/{layer}"] == pytest.approx(0.0, abs=1e-5)
    assert math.isfinite(scalars["plasticity/ntk_condition_number"])


# ----------------------------------------------------------------------------- NTK


def test_ntk_of_a_linear_model_is_its_closed_form() -> None:
    lin = nn.Linear(3, 2)
    x = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 1.0], [2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    # Θ((x, i), (x', j)) = δ_ij (xᵀx' + 1); rows are sample-major: row n·A + a.
    expected = torch.kron(x @ x.T + 1.0, torch.eye(2)).to(torch.float64)
    with torch.no_grad():
        assert_close(empirical_ntk(lin, x), expected)
    stats = ntk_stats(expected)
    eig = torch.linalg.eigvalsh(expected)
    assert stats["ntk_condition_number"] == pytest.approx(float(eig[-1] / eig[0]))
    assert stats["ntk_rank"] == 8.0
    assert stats["ntk_lambda_max"] == pytest.approx(float(eig[-1]))


def test_ntk_stats_ignore_numerically_zero_eigenvalues() -> None:
    stats = ntk_stats(torch.diag(torch.tensor([4.0, 2.0, 1.0, 1e-9, 0.0], dtype=torch.float64)))
    assert stats["ntk_condition_number"] == 4.0  # 1e-9 < 1e-6 · λ_max
    assert stats["ntk_rank"] == 3.0
    p = [4 / 7, 2 / 7, 1 / 7]
    assert stats["ntk_effective_rank"] == pytest.approx(math.exp(-sum(v * math.log(v) for v in p)), rel=1e-6)


# ----------------------------------------------------------------------------- optimisation


def test_adam_and_rmsprop_second_moment_stats_read_real_state() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    adam = torch.optim.Adam(param_groups(net), lr=1e-3, betas=(0.9, 0.99))
    rms = torch.optim.RMSprop(net.parameters(), lr=1e-3, alpha=0.9)
    sgd = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    assert optimizer_stats(adam) == {}  # no state before the first step
    net(torch.randn(5, 4)).square().sum().backward()
    grads = {id(p): p.grad.clone() for p in net.parameters()}
    for opt in (adam, rms, sgd):
        opt.step()
    # After one Adam step v = (1 − β₂) g², so √v̂ = |g| exactly (bias-corrected).
    matrix = grads[id(net[0].weight)].abs()
    got = optimizer_stats(adam)
    assert set(got) == {
        f"sqrt_v_{s}/{k}" for s in ("mean", "max", "min") for k in ("matrix", "head", "vector")
    }
    assert got["sqrt_v_mean/matrix"] == pytest.approx(float(matrix.mean()), rel=1e-5)
    assert got["sqrt_v_max/matrix"] == pytest.approx(float(matrix.max()), rel=1e-5)
    head = grads[id(net[2].weight)].abs()
    assert got["sqrt_v_min/head"] == pytest.approx(float(head.min()), rel=1e-5, abs=1e-12)
    # RMSprop: square_avg = (1 − α) g², no bias correction; an untagged group is group_0.
    all_grads = torch.cat([g.flatten() for g in grads.values()]).abs()
    assert optimizer_stats(rms)["sqrt_v_mean/group_0"] == pytest.approx(
        math.sqrt(0.1) * float(all_grads.mean()), rel=1e-5
    )
    assert optimizer_stats(sgd) == {}


def test_grad_norm_and_param_rms() -> None:
    net = nn.Linear(2, 2)
    assert grad_norm(net) is None
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
        net.bias.copy_(torch.tensor([3.0, 3.0]))
    assert param_rms(net) == pytest.approx(math.sqrt((4 + 18) / 6))
    net(torch.tensor([[3.0, 4.0]])).sum().backward()  # dW rows = x, db = 1
    assert grad_norm(net) == pytest.approx(math.sqrt(2 * 25 + 2))
    assert grad_norm(net) == pytest.approx(float(nn.utils.clip_grad_norm_(net.parameters(), 1e9)))


# ----------------------------------------------------------------------------- the collector


def spaces(obs_shape: tuple[int, ...], n: int = 6) -> tuple[gym.Space, gym.Space]:
    return gym.spaces.Box(0, 1, obs_shape, np.float32), gym.spaces.Discrete(n)


def bits(*shape: int, seed: int = 0) -> Tensor:
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < 0.3).float()


def capture(net: nn.Module, names: list[str], x: Tensor) -> dict[str, Tensor]:
    """Outputs of the named modules, captured independently of the probe."""
    modules, acts = dict(net.named_modules()), {}
    handles = [modules[n].register_forward_hook(lambda m, a, o, n=n: acts.__setitem__(n, o)) for n in names]
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return acts


def test_probe_on_mlp_finds_layers_and_agrees_with_pure_functions() -> None:
    torch.manual_seed(0)
    net = make_network(*spaces((4, 3)), NetworkConfig(name="mlp", hidden_sizes=(32, 16)))
    probe = PlasticityProbe(net, MetricsConfig(probe_size=64, ntk_probe_size=4))
    assert probe.unit_layers == ("2", "4")  # the ReLUs of Sequential(Flatten, Linear, ReLU, ...)
    assert probe.weight_layers == ("1", "3", "5")
    x = torch.randn(64, 4, 3)
    scalars = probe(x, ntk=True)
    acts = capture(net, ["2", "4", "3"], x)
    for key, value in dormant_fraction({n: acts[n] for n in ("2", "4")}).items():
        assert scalars[f"plasticity/{key}"] == value
    assert scalars["plasticity/srank"] == feature_rank(acts["4"])["srank"]  # the head's input
    # Layer "3" (Linear 32 → 16, ReLU): the closed form on every probe sample equals the SVD.
    jac = relu_linear_jacobian(net[3].weight.detach(), acts["3"])
    mean, var = reference_moments(jac)
    assert scalars["plasticity/jacobian_sv2_mean/3"] == pytest.approx(mean, rel=1e-5)
    assert scalars["plasticity/jacobian_sv2_var/3"] == pytest.approx(var, rel=1e-4)
    assert {"plasticity/ntk_condition_number", "plasticity/param_rms", "plasticity/isometry_gap/5"} <= set(
        scalars
    )
    assert not any(key.startswith("plasticity/jacobian_sv2_mean/5") for key in scalars)  # the head


def test_probe_on_minatar_cnn() -> None:
    torch.manual_seed(0)
    cfg = NetworkConfig(name="minatar_cnn", channels=4, hidden_sizes=(32,))
    net = make_network(*spaces((4, 10, 10)), cfg)
    probe = PlasticityProbe(net, MetricsConfig(probe_size=32, ntk_probe_size=2, jacobian_samples=3))
    assert probe.unit_layers == ("conv_act", "fc_act")
    assert probe.weight_layers == ("conv", "fc", "head")
    x = bits(32, 4, 10, 10)
    scalars = probe(x)
    acts = capture(net, ["conv_act", "fc_act"], x)
    for key, value in dormant_fraction(acts).items():
        assert scalars[f"plasticity/{key}"] == value
    # The conv layer's Jacobian is that of the whole feature map (closed form, every sample).
    jac = layer_jacobian(nn.Sequential(net.conv, net.conv_act), x)
    assert jac.shape == (32, 4 * 8 * 8, 4 * 10 * 10)
    mean, var = reference_moments(jac)
    assert scalars["plasticity/jacobian_sv2_mean/conv"] == pytest.approx(mean, rel=1e-5)
    assert scalars["plasticity/jacobian_sv2_var/conv"] == pytest.approx(var, rel=1e-4)
    assert "plasticity/jacobian_sv2_mean/fc" in scalars
    assert scalars["plasticity/weight_dist_init/fc"] == 0.0


def autograd_moments(fn: nn.Module, x: Tensor) -> tuple[float, float]:
    """σ² mean and variance of ``fn``'s per-sample Jacobians, each from torch.autograd and an SVD."""
    jacobians = []
    for sample in x:
        out_shape = fn(sample.unsqueeze(0)).shape[1:]
        jac = torch.autograd.functional.jacobian(lambda v: fn(v.unsqueeze(0))[0], sample)
        jacobians.append(jac.reshape(math.prod(out_shape), sample.numel()))
    return reference_moments(torch.stack(jacobians))


def test_probe_jacobian_of_layers_normalised_before_their_activation() -> None:
    """A layer L → LayerNorm/GroupNorm → φ is one hidden layer, its Jacobian that of the chain."""
    torch.manual_seed(0)
    mlp = make_network(*spaces((7,)), NetworkConfig(name="mlp", hidden_sizes=(9, 5), layernorm=True))
    assert [type(m).__name__ for m in mlp][1:4] == ["Linear", "LayerNorm", "ReLU"]
    x = torch.randn(10, 7)
    scalars = PlasticityProbe(mlp, MetricsConfig(probe_size=10, ntk_probe_size=2, jacobian_samples=4))(x)
    hidden = mlp[1:4](x)  # the second hidden layer's input
    for name, chain, inputs in (("1", mlp[1:4], x), ("4", mlp[4:7], hidden)):
        mean, var = autograd_moments(chain.eval(), inputs[:4])
        assert scalars[f"plasticity/jacobian_sv2_mean/{name}"] == pytest.approx(mean, rel=1e-5)
        assert scalars[f"plasticity/jacobian_sv2_var/{name}"] == pytest.approx(var, rel=1e-4, abs=1e-7)
    # MinAtarCNN: conv → GroupNorm(1, C) → ReLU and fc → LayerNorm → ReLU
    cfg = NetworkConfig(name="minatar_cnn", channels=4, hidden_sizes=(8,), layernorm=True)
    cnn = make_network(*spaces((3, 10, 10)), cfg)
    x = bits(6, 3, 10, 10)
    scalars = PlasticityProbe(cnn, MetricsConfig(probe_size=6, ntk_probe_size=2, jacobian_samples=2))(x)
    mean, var = autograd_moments(nn.Sequential(cnn.conv, cnn.conv_norm, cnn.conv_act), x[:2])
    assert scalars["plasticity/jacobian_sv2_mean/conv"] == pytest.approx(mean, rel=1e-5)
    assert scalars["plasticity/jacobian_sv2_var/conv"] == pytest.approx(var, rel=1e-4)
    assert "plasticity/jacobian_sv2_mean/fc" in scalars and "plasticity/jacobian_sv2_mean" in scalars


class SharedActivation(nn.Module):
    """A user network: one ReLU module applied twice, a BatchNorm, and a two-head readout."""

    head_names = ("out",)

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 12), nn.Linear(12, 6)
        self.norm = nn.BatchNorm1d(6)
        self.act = nn.ReLU()
        self.out = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.norm(self.act(self.fc2(self.act(self.fc1(x))))))


class FunctionalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(5, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.body(x)))


def test_probe_on_user_modules_shared_activation_and_functional_fallback() -> None:
    torch.manual_seed(0)
    net = SharedActivation()
    probe = PlasticityProbe(net, MetricsConfig(probe_size=16, ntk_probe_size=2))
    scalars = probe(torch.randn(16, 5))
    assert {
        "plasticity/dormant_fraction/tau_0/act/call_0",
        "plasticity/dormant_fraction/tau_0/act/call_1",
    } <= set(scalars)
    assert {"plasticity/jacobian_sv2_mean/fc1", "plasticity/jacobian_sv2_mean/fc2"} <= set(scalars)
    # Functional activations: the pre-activations of the non-head weight modules are reported.
    fnet = FunctionalNet()
    with pytest.warns(UserWarning, match="layer 'body': no activation module lies between it and 'head'"):
        fprobe = PlasticityProbe(fnet, MetricsConfig(probe_size=16, ntk_probe_size=2))
    assert fprobe.unit_layers == ("body",)
    fscalars = fprobe(torch.randn(16, 5))
    assert "plasticity/dormant_fraction/tau_0/body" in fscalars
    w = fnet.body.weight.detach()  # the layer is the Linear alone: J = W
    expected = reference_moments(w.expand(1, *w.shape))
    assert fscalars["plasticity/jacobian_sv2_mean/body"] == pytest.approx(expected[0], rel=1e-5)
    with pytest.raises(ValueError, match="not modules"):
        PlasticityProbe(fnet, layers=["nope"])


def test_probe_changes_nothing_in_the_model() -> None:
    torch.manual_seed(0)
    net = SharedActivation().train()
    x = torch.randn(16, 5)
    fresh = PlasticityProbe(net, MetricsConfig(probe_size=16, ntk_probe_size=4))
    fresh(x, ntk=True)
    assert all(p.grad is None for p in net.parameters())  # no gradient created
    net(x).square().sum().backward()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    grads = [p.grad.clone() for p in net.parameters()]
    rng = torch.get_rng_state()
    with torch.no_grad():
        out = net.eval()(x)
    net.train()
    scalars = fresh(x, ntk=True)
    assert net.training and net.norm.training  # training flags restored
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # BN stats included
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), grads, strict=True))
    assert torch.equal(torch.get_rng_state(), rng)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), out)
    assert scalars["plasticity/grad_norm"] == pytest.approx(
        float(torch.stack([g.norm() for g in grads]).norm())
    )


def dead_unit_net() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([-1.0, -1.0, 1.0, 1.0]))  # units 0 and 1 are dead
    return net


def test_probe_persistence_and_state_dict_round_trip() -> None:
    cfg = MetricsConfig(probe_size=8, taus=(0.0,), ntk_probe_size=2)
    net = dead_unit_net()
    probe = PlasticityProbe(net, cfg)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    first = probe(x)
    assert first["plasticity/dormant_fraction/tau_0"] == 0.5
    assert not any("persistent" in key for key in first)  # nothing to compare with yet
    with torch.no_grad():
        net[0].bias[1] = 1.0  # unit 1 revives
        net[0].weight[2, 0] = 2.0  # and the first layer moves away from its init
    state = probe.state_dict()
    second = probe(x)
    assert second["plasticity/dormant_fraction/tau_0"] == 0.25
    assert second["plasticity/dormant_persistent/tau_0"] == 0.25  # unit 0 only
    assert second["plasticity/weight_dist_init/0"] == pytest.approx(2.0)
    # A fresh probe built on the moved network, resumed from the checkpointed state, agrees.
    resumed = PlasticityProbe(net, cfg)
    resumed.load_state_dict(state)
    assert resumed.measurements == 1
    assert resumed(x) == second
    with pytest.raises(ValueError, match="initial weights"):
        PlasticityProbe(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))).load_state_dict(state)


def test_features_per_head_when_heads_see_different_inputs() -> None:
    class TwoTrunks(nn.Module):
        head_names = ("actor", "critic")

        def __init__(self) -> None:
            super().__init__()
            self.a, self.c = nn.Linear(3, 4), nn.Linear(3, 4)
            self.actor, self.critic = nn.Linear(4, 2), nn.Linear(4, 1)

        def forward(self, x: Tensor) -> Tensor:
            return torch.cat([self.actor(torch.relu(self.a(x))), self.critic(torch.tanh(self.c(x)))], 1)

    with pytest.warns(UserWarning, match="layer 'a': .* 'actor'.*; layer 'c': .* 'critic'"):
        probe = PlasticityProbe(TwoTrunks(), MetricsConfig(probe_size=8, ntk_probe_size=2))
    scalars = probe(torch.randn(8, 3))
    assert {"plasticity/srank/actor", "plasticity/srank/critic"} <= set(scalars)
    assert "plasticity/srank" not in scalars


# ----------------------------------------------------------------------------- config and layout


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("every", -1),
        ("probe_size", 0),
        ("taus", (0.1, -0.1)),
        ("taus", (0.1, 0.1)),
        ("srank_delta", 1.0),
        ("jacobian_samples", 0),
        ("ntk_every", 7000),  # not a multiple of every = 5000
        ("ntk_probe_size", 512),
        ("iso_target", float("nan")),
    ],
)
def test_metrics_config_rejects_bad_values(key: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"metrics\.{key}"):
        MetricsConfig(**{key: value})


def test_cadence() -> None:
    probe = PlasticityProbe(
        dead_unit_net(), MetricsConfig(every=100, ntk_every=300, probe_size=8, ntk_probe_size=2)
    )
    assert [u for u in range(0, 701) if probe.due(u)] == [100, 200, 300, 400, 500, 600, 700]
    assert [u for u in range(0, 701) if probe.ntk_due(u)] == [300, 600]
    assert not PlasticityProbe(dead_unit_net(), MetricsConfig(every=0, ntk_every=0)).due(100)


def test_custom_scalars_layout() -> None:
    layout = custom_scalars_layout(["conv_act", "fc_act"], (0.0, 0.025), ["conv", "fc"])
    dormant = layout["plasticity/dormant"]
    assert list(dormant) == ["dormant fraction, tau_0", "dormant fraction, tau_0.025"]
    kind, regexes = dormant["dormant fraction, tau_0.025"]
    assert kind == "Multiline" and len(regexes) == 3

    def matches(tag: str) -> bool:
        return any(re.search(r, tag) for r in regexes)

    assert matches("plasticity/dormant_fraction/tau_0.025")
    assert matches("plasticity/dormant_fraction/tau_0.025/fc_act")
    assert matches("plasticity/dormant_fraction/tau_0.025/fc_act/call_1")
    assert not matches("plasticity/dormant_fraction/tau_0/fc_act")
    assert not matches("plasticity/dormant_fraction/tau_0x025/fc_act")
    assert not matches("plasticity/dormant_persistent/tau_0.025/fc_act")
    kind, iso = layout["plasticity/isometry"]["isometry gap"]
    assert [bool(re.search(r, "plasticity/isometry_gap/fc")) for r in iso] == [False, True]
