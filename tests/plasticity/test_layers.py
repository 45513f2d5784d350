"""GroupSort, the orthogonal constraint (shapes × maps, optimizer steps, conv measurement), acting cache."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from plasticrl.plasticity.layers import (
    ORTHOGONAL_MAPS,
    GroupSort,
    acting_cache,
    clear_acting_cache,
    orthogonal_,
    retract_,
)
from plasticrl.plasticity.optimizers import param_groups
from torch import nn
from torch.func import jacrev
from torch.nn.utils import parametrize

# ---------------------------------------------------------------------------------------------
# GroupSort


@pytest.mark.parametrize(
    ("group_size", "x", "expected"),
    [
        (2, [[3.0, 1.0, -2.0, 5.0]], [[1.0, 3.0, -2.0, 5.0]]),
        (2, [[4.0, 4.0, 0.0, -0.0]], [[4.0, 4.0, 0.0, -0.0]]),
        (3, [[3.0, 1.0, 2.0, 0.0, -1.0, 9.0]], [[1.0, 2.0, 3.0, -1.0, 0.0, 9.0]]),
        (4, [[3.0, 1.0, -2.0, 5.0]], [[-2.0, 1.0, 3.0, 5.0]]),
    ],
)
def test_groupsort_values(group_size: int, x: list, expected: list) -> None:
    torch.testing.assert_close(GroupSort(group_size)(torch.tensor(x)), torch.tensor(expected))


def test_groupsort_sorts_channels_per_pixel() -> None:
    x = torch.randn(2, 6, 3, 4, generator=torch.Generator().manual_seed(0))
    y = GroupSort(3, dim=1)(x)
    expected = x.view(2, 2, 3, 3, 4).sort(dim=2).values.view(2, 6, 3, 4)
    torch.testing.assert_close(y, expected)


def test_maxmin_matches_sort() -> None:
    x = torch.randn(5, 8, 6, generator=torch.Generator().manual_seed(0))
    for dim in (1, -1):
        d = dim % x.dim()
        ref = x.unflatten(d, (x.shape[d] // 2, 2)).sort(dim=d + 1).values.flatten(d, d + 1)
        torch.testing.assert_close(GroupSort(2, dim=dim)(x), ref)


@pytest.mark.parametrize("group_size", [2, 3, 4])
@pytest.mark.parametrize("ties", [False, True])
def test_groupsort_jacobian_is_a_permutation(group_size: int, ties: bool) -> None:
    g = torch.Generator().manual_seed(group_size)
    x = torch.randn(12, generator=g)
    if ties:  # binary-like inputs: many equal entries inside groups
        x = (x > 0).float()
    jac = jacrev(lambda t: GroupSort(group_size, dim=0)(t))(x)
    assert set(jac.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(jac.sum(0), torch.ones(12)) and torch.equal(jac.sum(1), torch.ones(12))
    torch.testing.assert_close(jac @ x, GroupSort(group_size, dim=0)(x))


def test_groupsort_errors() -> None:
    with pytest.raises(ValueError, match="group_size must be an int >= 2"):
        GroupSort(1)
    with pytest.raises(ValueError, match=r"divisible by 4, got 6 \(input shape \(2, 6\)\)"):
        GroupSort(4)(torch.zeros(2, 6))
    with pytest.raises(ValueError, match="dim=3"):
        GroupSort(2, dim=3)(torch.zeros(2, 6))


# ---------------------------------------------------------------------------------------------
# Orthogonal constraint


def assert_orthogonal(w: torch.Tensor) -> None:
    q = w.detach().flatten(1)
    n = min(q.shape)
    gram = q.mT @ q if q.shape[0] >= q.shape[1] else q @ q.mT  # the smaller side
    torch.testing.assert_close(gram, torch.eye(n), atol=10 * max(q.shape) * torch.finfo(q.dtype).eps, rtol=0)


LINEAR_SHAPES = {"square": (6, 6), "tall": (3, 8), "wide": (8, 3)}  # (in, out)


@pytest.mark.parametrize("map_", [None, *ORTHOGONAL_MAPS])
@pytest.mark.parametrize("shape", list(LINEAR_SHAPES))
def test_linear_orthogonal_after_adam_steps(shape: str, map_: str | None) -> None:
    torch.manual_seed(0)
    fan_in, fan_out = LINEAR_SHAPES[shape]
    layer = orthogonal_(nn.Linear(fan_in, fan_out), map=map_)
    assert_orthogonal(layer.weight)
    w0 = layer.weight.detach().clone()
    opt = torch.optim.Adam(layer.parameters(), lr=0.1)
    x, y = torch.randn(16, fan_in), torch.randn(16, fan_out)
    for _ in range(10):
        opt.zero_grad()
        ((layer(x) - y) ** 2).mean().backward()
        opt.step()
    assert_orthogonal(layer.weight)
    assert (layer.weight - w0).abs().max() > 1e-2  # it did train


@pytest.mark.parametrize("map_", ORTHOGONAL_MAPS)
@pytest.mark.parametrize(("c_in", "c_out"), [(4, 16), (1, 16)])  # flattened: (16, 36) wide, (16, 9) tall
def test_conv_flattened_kernel_orthogonal_after_adam_steps(c_in: int, c_out: int, map_: str) -> None:
    torch.manual_seed(0)
    conv = orthogonal_(nn.Conv2d(c_in, c_out, 3), map=map_)
    assert conv.weight.shape == (c_out, c_in, 3, 3)
    assert conv.parametrizations.weight.original.shape == (c_out, c_in * 9)
    opt = torch.optim.Adam(conv.parameters(), lr=0.1)
    x = torch.randn(4, c_in, 6, 6)
    for _ in range(10):
        opt.zero_grad()
        conv(x).pow(2).mean().neg().backward()
        opt.step()
    assert_orthogonal(conv.weight)


@pytest.mark.parametrize("map_", ORTHOGONAL_MAPS)
@pytest.mark.parametrize("shape", list(LINEAR_SHAPES))
def test_initial_value_is_q_of_the_init(shape: str, map_: str) -> None:
    fan_in, fan_out = LINEAR_SHAPES[shape]
    layer = nn.Linear(fan_in, fan_out)
    w = layer.weight.detach().clone()
    tall = w if fan_out >= fan_in else w.T
    q, r = torch.linalg.qr(tall)
    q = q * r.diagonal().sign()  # the QR with a positive diagonal of R
    expected = q if fan_out >= fan_in else q.T
    orthogonal_(layer, map=map_)
    torch.testing.assert_close(layer.weight, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(7, 3), (3, 7), (4, 4)])
def test_qr_map_gradcheck(shape: tuple[int, int]) -> None:
    orth = orthogonal_(nn.Linear(shape[1], shape[0]).double()).parametrizations.weight[0]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(orth, (x,))


def test_assignment_round_trips() -> None:
    conv = orthogonal_(nn.Conv2d(2, 4, 3))
    q = torch.linalg.qr(torch.randn(18, 4))[0].T.reshape(4, 2, 3, 3)  # orthonormal rows
    conv.weight = q
    torch.testing.assert_close(conv.weight, q, atol=1e-5, rtol=0)


def test_optimizer_contract_constrained_group() -> None:
    net = nn.Sequential(orthogonal_(nn.Linear(4, 4)), nn.Linear(4, 2))
    groups = {g["kind"]: g for g in param_groups(net)}
    (original,) = groups["constrained"]["params"]
    assert original is net[0].parametrizations.weight.original
    assert groups["constrained"]["isometry"] is False
    assert net[0].parametrizations.weight.original.requires_grad
    assert "0.weight" not in dict(net.named_parameters())


def test_orthogonal_errors() -> None:
    valid = r"\['qr', 'matrix_exp', 'cayley', 'householder'\]"
    with pytest.raises(ValueError, match=rf"unknown orthogonal map 'svd'; valid: {valid}"):
        orthogonal_(nn.Linear(2, 2), map="svd")
    with pytest.raises(ValueError, match=">= 2 dimensions"):
        orthogonal_(nn.Linear(2, 2), name="bias")
    with pytest.raises(ValueError, match="no parameter or buffer named 'kernel'"):
        orthogonal_(nn.Linear(2, 2), name="kernel")
    with pytest.raises(ValueError, match="already parametrized"):
        orthogonal_(orthogonal_(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="transposed convolutions"):
        orthogonal_(nn.ConvTranspose2d(2, 3, 3))


def test_qr_original_drifts_and_retract_resets_it_without_changing_weights() -> None:
    # Note [Default map]: the QR map is scale-invariant, so Adam steps lengthen the original.
    torch.manual_seed(0)
    net = nn.Sequential(
        orthogonal_(nn.Linear(16, 16)),
        GroupSort(2),
        orthogonal_(nn.Linear(16, 16), map="cayley"),
        nn.Linear(16, 2),
    )
    original = net[0].parametrizations.weight.original
    torch_original = net[2].parametrizations.weight.original
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, y = torch.randn(64, 16), torch.randn(64, 2)
    for _ in range(100):
        opt.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        opt.step()
    assert original.norm().item() > 1.1 * math.sqrt(16)  # ‖Q‖_F = 4; measured 1.23×
    weights = [net[0].weight.detach().clone(), net[2].weight.detach().clone()]
    before_torch = torch_original.detach().clone()
    assert retract_(net) == 1
    torch.testing.assert_close(net[0].weight, weights[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(net[2].weight, weights[1], rtol=0, atol=0)
    assert torch.equal(torch_original, before_torch)  # torch's maps are left alone
    assert original.norm().item() == pytest.approx(4.0, rel=1e-6)
    assert_orthogonal(original)
    opt.zero_grad()  # the optimizer still trains the same tensor
    ((net(x) - y) ** 2).mean().backward()
    opt.step()
    assert_orthogonal(net[0].weight)


def coverage_counts(size: int, k: int) -> torch.Tensor:
    """How many k-wide valid windows cover each of ``size`` positions."""
    n_out = size - k + 1
    return torch.tensor([min(i, n_out - 1) - max(i - k + 1, 0) + 1 for i in range(size)], dtype=torch.float64)


def conv_singular_values(conv: nn.Conv2d, size: int = 10) -> torch.Tensor:
    x = torch.randn(conv.in_channels * size * size, dtype=torch.float64)
    conv = conv.double()
    jac = jacrev(lambda t: conv(t.view(1, conv.in_channels, size, size)).flatten())(x)
    return torch.linalg.svdvals(jac)


def test_conv_with_tall_flattened_kernel_is_not_an_isometry_exactly_sqrt_coverage() -> None:
    # K (16, 9) with KᵀK = I: ‖Jx‖² = Σ_i c_i x_i², so the singular values are √c_i exactly.
    torch.manual_seed(0)
    sv = conv_singular_values(orthogonal_(nn.Conv2d(1, 16, 3)))
    c = coverage_counts(10, 3)
    expected = (c[:, None] * c[None, :]).flatten().sqrt().sort(descending=True).values
    torch.testing.assert_close(sv, expected)
    assert sv.max().item() == pytest.approx(3.0) and sv.min().item() == pytest.approx(1.0)


def test_conv_with_wide_flattened_kernel_band() -> None:
    # MinAtar-like: K (16, 36) with KKᵀ = I. Bound σ_max ≤ √(kh·kw) = 3; measured over seeds 0–4:
    # σ_min ∈ [0.22, 0.29], σ_max ∈ [2.53, 2.66] — far from 1 in both directions.
    for seed in range(3):
        torch.manual_seed(seed)
        sv = conv_singular_values(orthogonal_(nn.Conv2d(4, 16, 3)))
        assert sv.max() <= 3.0 + 1e-9
        assert 2.4 < sv.max() < 2.8, sv.max()
        assert 0.15 < sv.min() < 0.35, sv.min()


# ---------------------------------------------------------------------------------------------
# Acting cache


def count_evaluations(model: nn.Module) -> list[int]:
    counter = [0]

    def hook(*_: object) -> None:
        counter[0] += 1

    for module in model.modules():
        if isinstance(module, parametrize.ParametrizationList):
            module[0].orth.register_forward_hook(hook)
    return counter


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        orthogonal_(nn.Conv2d(2, 4, 3)),
        GroupSort(2),
        nn.Flatten(),
        orthogonal_(nn.Linear(4 * 4 * 4, 8)),
        GroupSort(2),
        nn.Linear(8, 3),
    )


def test_acting_cache_computes_each_map_once_per_weight_change() -> None:
    net = small_net()
    x = torch.randn(1, 2, 6, 6)
    calls = count_evaluations(net)
    with torch.no_grad():
        reference = net(x)
        for _ in range(3):
            net(x)
    assert calls[0] == 8  # 2 maps × 4 forwards without the cache
    calls[0] = 0
    with torch.no_grad():
        for _ in range(2):  # two acting steps, each in its own context
            with acting_cache(net):
                for _ in range(5):
                    assert torch.equal(net(x), reference)
    assert calls[0] == 2  # once per map for all 10 forwards
    # An optimizer step changes the originals: the next acting forward recomputes, once.
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(x).sum().backward()
    assert calls[0] == 4
    opt.step()
    with torch.no_grad(), acting_cache(net):
        after = [net(x) for _ in range(3)]
    assert calls[0] == 6
    with torch.no_grad():
        torch.testing.assert_close(after[0], net(x), rtol=0, atol=0)
    assert not torch.equal(after[0], reference)


def test_acting_cache_keeps_training_forwards_differentiable() -> None:
    net = small_net()
    x = torch.randn(2, 2, 6, 6)
    calls = count_evaluations(net)
    with acting_cache(net):  # gradients enabled: computed every time, gradients flow
        net(x).sum().backward()
        net(x)
    assert calls[0] == 4
    assert net[0].parametrizations.weight.original.grad is not None


def test_acting_cache_invalidated_by_load_assignment_and_dtype() -> None:
    net, other = small_net(), small_net()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1)
    x = torch.randn(1, 2, 6, 6)
    with torch.no_grad(), acting_cache(net):
        net(x)
    net.load_state_dict(other.state_dict())
    with torch.no_grad(), acting_cache(net):
        torch.testing.assert_close(net(x), other(x), rtol=0, atol=0)
    q = torch.linalg.qr(torch.randn(64, 8))[0].T
    net[3].weight = q  # right_inverse: new base buffer
    with torch.no_grad(), acting_cache(net):
        torch.testing.assert_close(net[3].weight, q, atol=1e-5, rtol=0)
    net.double()
    with torch.no_grad(), acting_cache(net):
        assert net(x.double()).dtype == torch.float64


def test_data_writes_need_clear_acting_cache() -> None:
    net = small_net()
    x = torch.randn(1, 2, 6, 6)
    with torch.no_grad(), acting_cache(net):
        before = net(x)
    original = net[3].parametrizations.weight.original
    original.data.mul_(-1.0)  # invisible to version counters (as to autograd)
    with torch.no_grad(), acting_cache(net):
        assert torch.equal(net(x), before)  # the documented blind spot
    clear_acting_cache(net)
    with torch.no_grad():
        expected = net(x)
        with acting_cache(net):
            assert torch.equal(net(x), expected)
    assert not torch.equal(expected, before)


def test_acting_cache_under_inference_mode_then_deepcopy() -> None:
    net = small_net()
    x = torch.randn(1, 2, 6, 6)
    with torch.inference_mode(), acting_cache(net):
        expected = net(x)
    target = copy.deepcopy(net)  # DQN's target network after acting
    with torch.no_grad():
        torch.testing.assert_close(target(x), expected)
        torch.testing.assert_close(net(x), expected)


def test_acting_cache_is_a_no_op_without_constraints() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(2, 3)
    with acting_cache(net):
        y = net(x)
    assert y.requires_grad
    torch.testing.assert_close(y, net(x))


def test_acting_cache_nests() -> None:
    net = small_net()
    x = torch.randn(1, 2, 6, 6)
    calls = count_evaluations(net)
    with torch.no_grad(), acting_cache(net):
        with acting_cache(net):
            net(x)
        net(x)
    with torch.no_grad():
        net(x)  # outside every context: computed again
    assert calls[0] == 4
    assert all(m._acting == 0 for m in net.modules() if hasattr(m, "_acting"))


def test_tolerance_is_meaningful() -> None:
    # The orthogonality atol of assert_orthogonal must reject a 1e-3 perturbation.
    w = torch.linalg.qr(torch.randn(8, 8))[0] * (1 + 1e-3)
    with pytest.raises(AssertionError):
        assert_orthogonal(w)
    assert math.isclose(10 * 8 * torch.finfo(torch.float32).eps, 9.5367431640625e-06)
