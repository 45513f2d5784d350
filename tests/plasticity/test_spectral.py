"""Spectral regularization: σ_max estimates, gradients, hand values, checkpoints, tensor selection."""

from __future__ import annotations

import math

import pytest
import torch
from plasticrl.plasticity.layers import orthogonal_
from plasticrl.plasticity.optimizers import param_groups
from plasticrl.plasticity.regularizers import REGULARIZERS, Regularizer, RegularizerConfig, make_regularizers
from plasticrl.plasticity.spectral import SpectralRegularizer, spectral
from torch import nn

SHAPES = {"wide": (32, 128), "tall": (128, 32), "square": (64, 64), "conv": (16, 4, 3, 3)}


def exact_sigma(w: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(w.detach().flatten(1).double(), 2).item()


def random_weight(shape: tuple[int, ...], seed: int) -> nn.Parameter:
    g = torch.Generator().manual_seed(seed)
    fan_in = math.prod(shape[1:])
    return nn.Parameter(torch.randn(shape, generator=g) / math.sqrt(fan_in))


@pytest.mark.parametrize("kind", list(SHAPES))
def test_svd_start_is_exact_and_one_step_tracks_sgd(kind: str) -> None:
    w = random_weight(SHAPES[kind], seed=0)
    reg = SpectralRegularizer([("w", w, None)], coef=1.0)
    reg()
    assert reg.sigmas()["w"].item() == pytest.approx(exact_sigma(w), rel=1e-5)
    # Then the weights move (30 SGD steps on a regression) and one iteration per call follows.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, math.prod(w.shape[1:]), generator=g)
    y = torch.randn(64, w.shape[0], generator=g)
    opt = torch.optim.SGD([w], lr=0.05)
    errors = []
    for _ in range(30):
        opt.zero_grad()
        ((x @ w.flatten(1).T - y) ** 2).mean().backward()
        opt.step()
        reg()
        errors.append(abs(reg.sigmas()["w"].item() / exact_sigma(w) - 1.0))
    assert max(errors) < 0.01, errors


@pytest.mark.parametrize("kind", list(SHAPES))
def test_random_start_converges_monotonically(kind: str) -> None:
    # Note [Cold start]: the plain power method from random vectors, one step per call.
    w = random_weight(SHAPES[kind], seed=3)
    reg = SpectralRegularizer([("w", w, None)], coef=1.0, init="random", seed=3)
    exact = exact_sigma(w)
    estimates = []
    for _ in range(100):
        reg()
        estimates.append(reg.sigmas()["w"].item())
    calls_to_1pct = next(i + 1 for i, s in enumerate(estimates) if abs(s / exact - 1) < 0.01)
    assert calls_to_1pct <= 100
    # ‖W v_t‖ never decreases on a fixed matrix, and never exceeds σ_max.
    assert all(b >= a * (1 - 1e-6) for a, b in zip(estimates, estimates[1:], strict=False))
    assert max(estimates) <= exact * (1 + 1e-5)
    assert estimates[-1] == pytest.approx(exact, rel=0.01)


@pytest.mark.parametrize("power", [1.0, 2.0, 3.0])
def test_gradient_matches_autograd_of_exact_sigma(power: float) -> None:
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(5, 4, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(7, 4, generator=g, dtype=torch.float64))
    w0 = u @ torch.diag(torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=torch.float64)) @ v.T
    w = nn.Parameter(w0.clone())
    reg = SpectralRegularizer([("w", w, None)], coef=0.3, power=power, init="random")
    for _ in range(40):  # σ2/σ1 = 1/2: 40 steps converge to machine precision
        penalty = reg()
    (grad,) = torch.autograd.grad(penalty, w)
    w_ref = w0.clone().requires_grad_(True)
    sigma = torch.linalg.svdvals(w_ref)[0]
    (grad_ref,) = torch.autograd.grad(0.3 * (sigma**power - 1) ** 2, w_ref)
    torch.testing.assert_close(penalty.detach(), (0.3 * (sigma**power - 1) ** 2).detach())
    torch.testing.assert_close(grad, grad_ref, rtol=1e-7, atol=1e-9)


def linear(weight: list[list[float]], bias: list[float] | None) -> nn.Linear:
    w = torch.tensor(weight)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(w)
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias))
    return layer


def test_penalty_hand_values() -> None:
    # diag(3, 1): σ_max = 3, so (3² − 1)² = 64.
    layer = linear([[3.0, 0.0], [0.0, 1.0]], [1.0, 2.0])
    no_bias = SpectralRegularizer([("w", layer.weight, None)], coef=0.5)
    assert no_bias().item() == pytest.approx(0.5 * 64)
    cubic = SpectralRegularizer([("w", layer.weight, None)], coef=1.0, power=3)
    assert cubic().item() == pytest.approx((27 - 1) ** 2)
    # bias="zero": + ‖b‖² = 1 + 4.
    zero = SpectralRegularizer([("w", layer.weight, layer.bias)], coef=0.5, bias="zero")
    assert zero().item() == pytest.approx(0.5 * (64 + 5))
    # bias="column": W̃ = [[3, 0, 1], [0, 1, 2]], W̃W̃ᵀ = [[10, 2], [2, 5]], σ² = (15 + √41) / 2.
    column = SpectralRegularizer([("w", layer.weight, layer.bias)], coef=0.5, bias="column")
    sigma_sq = (15 + math.sqrt(41)) / 2
    assert column().item() == pytest.approx(0.5 * (sigma_sq - 1) ** 2, rel=1e-6)
    # A layer exactly at σ_max = 1 costs nothing, and two layers add up.
    identity = linear([[1.0, 0.0], [0.0, 0.5]], None)
    both = SpectralRegularizer([("a", layer.weight, None), ("b", identity.weight, None)], coef=2.0)
    assert both().item() == pytest.approx(2.0 * 64)


def test_conv_kernel_read_as_flattened_matrix() -> None:
    conv = nn.Conv2d(1, 2, kernel_size=(1, 2), bias=False)
    with torch.no_grad():  # flattened: [[3, 0], [0, 1]] → σ_max = 3
        conv.weight.copy_(torch.tensor([[[[3.0, 0.0]]], [[[0.0, 1.0]]]]))
    reg = SpectralRegularizer([("conv.weight", conv.weight, None)], coef=1.0)
    assert reg().item() == pytest.approx(64.0)


def test_zero_layer_is_safe_and_recovers() -> None:
    w = nn.Parameter(torch.zeros(3, 4))
    reg = SpectralRegularizer([("w", w, None)], coef=1.0, init="random")
    penalty = reg()
    (grad,) = torch.autograd.grad(penalty, w)
    assert penalty.item() == 1.0  # (0^2 - 1)^2
    assert torch.equal(grad, torch.zeros_like(w))
    with torch.no_grad():
        w.copy_(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)))
    for _ in range(50):
        reg()
    assert reg.sigmas()["w"].item() == pytest.approx(exact_sigma(w), rel=1e-4)


def test_two_calls_before_backward() -> None:
    w = random_weight((6, 5), seed=0)
    reg = SpectralRegularizer([("w", w, None)], coef=1.0)
    first = reg()
    reg()  # updates the buffers in place; the first graph must not notice
    first.backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


def test_state_dict_round_trip_continues_identically() -> None:
    w = random_weight((16, 24), seed=0)
    b = nn.Parameter(torch.randn(16))
    a = SpectralRegularizer([("fc.weight", w, b)], coef=1.0, bias="column", init="random", seed=1)
    for _ in range(5):
        a()
    state = a.state_dict()
    assert set(state) == {"iterations.0.u", "iterations.0.v", "_extra_state"}
    restored = SpectralRegularizer([("fc.weight", w, b)], coef=1.0, bias="column", init="random", seed=2)
    assert not torch.equal(restored.iterations[0].v, a.iterations[0].v)
    restored.load_state_dict(state)
    for _ in range(5):
        assert torch.equal(a(), restored())
    assert torch.equal(a.iterations[0].u, restored.iterations[0].u)
    assert torch.equal(a.iterations[0].v, restored.iterations[0].v)


def test_state_for_other_layers_is_rejected() -> None:
    w = random_weight((4, 4), seed=0)
    state = SpectralRegularizer([("a.weight", w, None)], coef=1.0).state_dict()
    other = SpectralRegularizer([("b.weight", w, None)], coef=1.0)
    with pytest.raises(ValueError, match=r"saved for layers \['a.weight'\]"):
        other.load_state_dict(state)


class Net(nn.Module):
    head_names = ("head",)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.norm = nn.LayerNorm(4 * 3 * 3)
        self.ortho = orthogonal_(nn.Linear(36, 8))
        self.fc = nn.Linear(8, 8, bias=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.ortho(self.norm(self.conv(x).flatten(1)))))


@pytest.mark.parametrize(
    ("options", "names", "with_grad"),
    [
        (
            {},
            ["conv.weight", "fc.weight", "head.weight"],
            {"conv.weight", "conv.bias", "fc.weight", "head.weight", "head.bias"},
        ),
        ({"include_head": False}, ["conv.weight", "fc.weight"], {"conv.weight", "conv.bias", "fc.weight"}),
        (
            {"bias": "column"},
            ["conv.weight", "fc.weight", "head.weight"],
            {"conv.weight", "conv.bias", "fc.weight", "head.weight", "head.bias"},
        ),
    ],
)
def test_only_intended_tensors_are_penalised(options: dict, names: list[str], with_grad: set[str]) -> None:
    torch.manual_seed(0)
    net = Net()
    reg = spectral(net, param_groups(net), RegularizerConfig("spectral", 1e-2, options))
    assert isinstance(reg, Regularizer) and reg.name == "spectral"
    assert reg.names == names
    reg().backward()
    got = {n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got == with_grad  # never the LayerNorm, never the constrained original


def test_registered_and_options_validated() -> None:
    net = Net()
    groups = param_groups(net)
    assert REGULARIZERS.get("spectral") is spectral
    (reg,) = make_regularizers(net, groups, [RegularizerConfig.from_dict({"name": "spectral", "coef": 0.1})])
    assert reg.names == ["conv.weight", "fc.weight", "head.weight"]
    with pytest.raises(ValueError, match="bad options"):
        make_regularizers(net, groups, [RegularizerConfig("spectral", 0.1, {"powr": 2})])
    with pytest.raises(ValueError, match=r"bias must be one of \['zero', 'column'\], got 'none'"):
        spectral(net, groups, RegularizerConfig("spectral", 0.1, {"bias": "none"}))
    with pytest.raises(ValueError, match="power must be a number > 0"):
        spectral(net, groups, RegularizerConfig("spectral", 0.1, {"power": 0}))
    with pytest.raises(ValueError, match="n_power_iterations"):
        spectral(net, groups, RegularizerConfig("spectral", 0.1, {"n_power_iterations": 0}))
    with pytest.raises(ValueError, match=r"init must be one of \['svd', 'random'\]"):
        spectral(net, groups, RegularizerConfig("spectral", 0.1, {"init": "ones"}))
    with pytest.raises(ValueError, match="include_head must be true or false"):
        spectral(net, groups, RegularizerConfig("spectral", 0.1, {"include_head": "yes"}))
    with pytest.raises(ValueError, match="not parameters of the model"):
        spectral(nn.Linear(2, 2), groups, RegularizerConfig("spectral", 0.1))


def test_no_layers_gives_zero() -> None:
    reg = spectral(nn.LayerNorm(3), param_groups(nn.LayerNorm(3)), RegularizerConfig("spectral", 1.0))
    assert reg.names == [] and reg().item() == 0.0
