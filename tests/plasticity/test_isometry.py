"""Isometry maths (penalty, analytic gradient, gap) and the coupled ``isometry`` regularizer."""

from __future__ import annotations

import pytest
import torch
from plasticrl.plasticity.isometry import IsometryPenalty, isometry_gap, isometry_grad, isometry_penalty
from plasticrl.plasticity.optimizers import param_groups
from plasticrl.plasticity.regularizers import REGULARIZERS, Regularizer, RegularizerConfig, make_regularizers
from torch import nn
from torch.testing import assert_close

# (shape, description): wide, tall, square, conv kernels read as (C_out, C_in·kh·kw).
SHAPES = [
    ((3, 5), "wide"),
    ((5, 3), "tall"),
    ((4, 4), "square"),
    ((6, 2, 3, 3), "conv, wide as a matrix (6 x 18)"),
    ((20, 1, 2, 2), "conv, tall as a matrix (20 x 4)"),
    ((1, 7), "single row"),
]


@pytest.mark.parametrize("target", [1.0, 2.0])
@pytest.mark.parametrize(("shape", "desc"), SHAPES, ids=[d for _, d in SHAPES])
def test_analytic_grad_equals_autograd(shape: tuple[int, ...], desc: str, target: float) -> None:
    torch.manual_seed(0)
    weight = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    (expected,) = torch.autograd.grad(isometry_penalty(weight, target), weight)
    got = isometry_grad(weight, target)
    assert got.shape == weight.shape and got.grad_fn is None
    assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_penalty_and_grad_by_hand() -> None:
    # Square: W Wᵀ = [[5, 2], [2, 1]]; G − I = [[4, 2], [2, 0]].
    w = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
    assert isometry_penalty(w).item() == 16 + 4 + 4 + 0
    # ∇R = 4 (G − I) W = 4 [[4, 10], [2, 4]].
    assert_close(isometry_grad(w), torch.tensor([[16.0, 40.0], [8.0, 16.0]], dtype=torch.float64))
    # Tall 3x1: Gram on the small side, WᵀW = 2; R = (2 − 1)² = 1; ∇R = 4 W (2 − 1).
    tall = torch.tensor([[1.0], [1.0], [0.0]], dtype=torch.float64)
    assert isometry_penalty(tall).item() == 1.0
    assert_close(isometry_grad(tall), torch.tensor([[4.0], [4.0], [0.0]], dtype=torch.float64))
    # Target s = 2: R = (2 − 2)² = 0 and the gradient vanishes.
    assert isometry_penalty(tall, target=2.0).item() == 0.0
    assert isometry_grad(tall, target=2.0).abs().max().item() == 0.0


@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (4, 2, 3, 3)])
def test_zero_matrix_has_zero_grad(shape: tuple[int, ...]) -> None:
    grad = isometry_grad(torch.zeros(shape), target=1.0)
    assert torch.equal(grad, torch.zeros(shape))
    # The penalty is dim · s² (G = 0), the gap is s.
    dim = min(shape[0], int(torch.tensor(shape[1:]).prod()))
    assert isometry_penalty(torch.zeros(shape), target=2.0).item() == dim * 4.0
    assert isometry_gap(torch.zeros(shape), target=2.0).item() == pytest.approx(2.0)


def test_grad_of_non_contiguous_weight_and_input_untouched() -> None:
    torch.manual_seed(1)
    base = torch.randn(6, 4)
    weight = base.t()  # (4, 6), non-contiguous
    before = weight.clone()
    assert not weight.is_contiguous()
    assert_close(isometry_grad(weight), isometry_grad(weight.contiguous()))
    assert torch.equal(weight, before)
    conv = torch.randn(8, 3, 3, 3).to(memory_format=torch.channels_last)
    assert_close(isometry_grad(conv), isometry_grad(conv.contiguous()))


def test_gap_values() -> None:
    torch.manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    assert isometry_gap(q).item() == pytest.approx(0.0, abs=1e-12)
    # Orthonormal columns of a tall matrix: the Gram of the small side is exactly I.
    assert isometry_gap(q[:, :2]).item() == pytest.approx(0.0, abs=1e-12)
    assert isometry_gap(q[:2]).item() == pytest.approx(0.0, abs=1e-12)  # orthonormal rows
    # √s · orthogonal is isometric for target s.
    assert isometry_gap(2.0**0.5 * q, target=2.0).item() == pytest.approx(0.0, abs=1e-12)
    # 2I: G = 4I, ‖3I‖_F / √3 = 3.
    assert isometry_gap(2 * torch.eye(3)).item() == pytest.approx(3.0)


def test_not_a_matrix_raises() -> None:
    with pytest.raises(ValueError, match="needs a tensor with >= 2 dims"):
        isometry_grad(torch.ones(3))


# -- the coupled regularizer ---------------------------------------------------------------------


def _net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(2, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 2)
    )


def test_registered_and_follows_the_protocol() -> None:
    net = _net()
    (reg,) = make_regularizers(net, param_groups(net), [RegularizerConfig("isometry", 0.1)])
    assert REGULARIZERS.get("isometry") is IsometryPenalty
    assert isinstance(reg, Regularizer) and reg.name == "isometry"
    assert reg.state_dict() == {}
    reg.load_state_dict({})
    with pytest.raises(ValueError, match="has no state"):
        reg.load_state_dict({"u": 1})


@pytest.mark.parametrize("iso_head", [False, True])
def test_coupled_value_and_gradient(iso_head: bool) -> None:
    net = _net()
    conv, hidden, head = net[0], net[3], net[5]
    cfg = RegularizerConfig.from_dict({"name": "isometry", "coef": 0.1, "target": 2.0})
    (reg,) = make_regularizers(net, param_groups(net, iso_head=iso_head), [cfg])
    penalised = [conv.weight, hidden.weight] + ([head.weight] if iso_head else [])
    assert [id(p) for p in reg.params] == [id(p) for p in penalised]

    value = reg()
    expected = 0.1 * sum(isometry_penalty(p.detach(), 2.0) for p in penalised)
    assert_close(value, expected)
    value.backward()
    for p in penalised:
        assert_close(p.grad, 0.1 * isometry_grad(p, 2.0), rtol=1e-5, atol=1e-6)
    assert head.weight.grad is None or iso_head
    assert all(m.bias.grad is None for m in (conv, hidden, head))


def test_coupled_gradient_equals_plain_autograd_in_double() -> None:
    torch.manual_seed(4)
    for shape in [(3, 5), (5, 3), (6, 2, 3, 3)]:
        layer = nn.Parameter(torch.randn(shape, dtype=torch.float64))
        holder = nn.Module()
        holder.w = layer
        groups = [{"params": [layer], "kind": "matrix", "isometry": True}]
        reg = IsometryPenalty(holder, groups, RegularizerConfig("isometry", 0.5, {"target": 1.5}))
        (got,) = torch.autograd.grad(reg(), layer)
        (expected,) = torch.autograd.grad(0.5 * isometry_penalty(layer, 1.5), layer)
        assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_bad_option_and_empty() -> None:
    net = _net()
    with pytest.raises(ValueError, match="bad options"):
        make_regularizers(net, param_groups(net), [RegularizerConfig("isometry", 0.1, {"s": 2})])
    with pytest.raises(ValueError, match="Invalid target: -1"):
        IsometryPenalty(net, param_groups(net), RegularizerConfig("isometry", 0.1, {"target": -1}))
    only_biases = [g for g in param_groups(net) if g["kind"] == "vector"]
    reg = IsometryPenalty(net, only_biases, RegularizerConfig("isometry", 0.1))
    assert reg().item() == 0.0
