"""Recycled units' Adam step count: per-slice bias correction (Note [Step count] in surgery, issue 17)."""

from __future__ import annotations

import copy

import pytest
import torch
from plasticrl.plasticity.cbp import CBPOptions
from plasticrl.plasticity.redo import ReDoOptions
from plasticrl.plasticity.surgery import SliceSteps, reinit_units_
from torch import nn


def _grads(steps: int, shape: tuple[int, ...], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(steps)]


@pytest.mark.parametrize("opt_class", [torch.optim.Adam, torch.optim.AdamW])
@pytest.mark.parametrize("fused", [False, True])
def test_reset_slices_step_like_a_fresh_adam(opt_class: type, fused: bool) -> None:
    p = nn.Parameter(torch.randn(4, 3))
    opt = opt_class([p], lr=1e-2, weight_decay=0.1, fused=fused)
    steps = SliceSteps(opt, {"w": p})
    grads = _grads(40, (4, 3))
    for g in grads[:25]:
        p.grad = g.clone()
        opt.step()
    rows = torch.tensor([1, 3])
    with torch.no_grad():
        for key in ("exp_avg", "exp_avg_sq"):
            opt.state[p][key][rows] = 0
    steps.reset(p, (rows,))
    ref = nn.Parameter(p.detach()[rows].clone())
    ref_opt = opt_class([ref], lr=1e-2, weight_decay=0.1, fused=fused)
    plain = nn.Parameter(p.detach().clone())  # the same state, no correction
    plain_opt = opt_class([plain], lr=1e-2, weight_decay=0.1, fused=fused)
    plain_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for g in grads[25:]:
        for q, o in ((p, opt), (ref, ref_opt), (plain, plain_opt)):
            q.grad = g[rows].clone() if q is ref else g.clone()
            o.step()
    torch.testing.assert_close(p.detach()[rows], ref.detach(), rtol=1e-5, atol=1e-6)
    # the other rows are exactly torch's own trajectory
    assert torch.equal(p.detach()[[0, 2]], plain.detach()[[0, 2]])
    assert not torch.allclose(plain.detach()[rows], ref.detach(), rtol=1e-5, atol=1e-6)
    assert set(steps.state_dict()) == {"w"}


def test_first_step_after_recycling_is_the_nominal_lr_only_with_reset() -> None:
    torch.manual_seed(0)

    def first_step(adam_step: str) -> float:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        x = torch.randn(64, 3)
        for _ in range(200):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
        steps = SliceSteps(opt, dict(net.named_parameters())) if adam_step == "reset" else None
        reinit_units_(net[0], [0], [net[2]], opt, generator=torch.Generator().manual_seed(1), steps=steps)
        before = net[0].weight.detach()[0].clone()
        opt.zero_grad()
        (net(x)[:, 0].sum() + net[0](x)[:, 0].sum()).backward()  # a gradient on the recycled row
        opt.step()
        return float((net[0].weight.detach()[0] - before).abs().max())

    assert first_step("reset") == pytest.approx(1e-3, rel=1e-3)
    # keep: (1 − β1)/(1 − β1^t) / √((1 − β2)/(1 − β2^t)) · η ≈ 1.35 η at t = 200 (→ 3.16 η for t ≫ 1000)
    assert first_step("keep") == pytest.approx(1.35e-3, rel=0.02)


def test_defaults_follow_the_papers_and_state_round_trips() -> None:
    assert ReDoOptions().adam_step == "keep"  # Dopamine's ReDo keeps the count
    assert CBPOptions().adam_step == "reset"  # Dohare et al.'s AdamGnT resets it per feature
    p = nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.Adam([p])
    p.grad = torch.ones_like(p)
    opt.step()
    steps = SliceSteps(opt, {"w": p})
    steps.reset(p, (torch.tensor([0]),))
    again = SliceSteps(opt, {"w": p})
    again.load_state_dict(steps.state_dict())
    assert torch.equal(again.start["w"], steps.start["w"])
    with pytest.raises(ValueError, match="does not have"):
        again.load_state_dict({"nope": torch.zeros(1)})
    sgd = torch.optim.SGD([p], lr=0.1)
    assert not SliceSteps(sgd, {"w": p}).active  # nothing to correct without bias correction
