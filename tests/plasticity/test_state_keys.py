"""Optimizer state keys are declared on registry entries; surgery and the √v̂ metrics read them there."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from plasticrl.plasticity.adamo import AdamO
from plasticrl.plasticity.metrics import optimizer_stats
from plasticrl.plasticity.optimizers import (
    OPTIMIZERS,
    OptimizerConfig,
    StateKeys,
    make_optimizer,
    param_groups,
    state_keys_of,
)
from plasticrl.plasticity.surgery import check_optimizer, reset_state_
from torch import Tensor, nn


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _step(net: nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    net(torch.randn(5, 3)).square().sum().backward()
    opt.step()


CONFIGS = {
    "adam": {"name": "adam"},
    "adamw": {"name": "adamw", "weight_decay": 0.1},
    "adamo": {"name": "adamo"},
    "sgd": {"name": "sgd", "momentum": 0.9},
    "rmsprop": {"name": "rmsprop", "centered": True, "momentum": 0.9},
}


def test_every_registered_optimizer_declares_its_state() -> None:
    assert set(CONFIGS) == set(OPTIMIZERS.names())
    for name, kwargs in CONFIGS.items():
        net = _net()
        opt = make_optimizer(param_groups(net), OptimizerConfig(**kwargs))
        _step(net, opt)
        keys = OPTIMIZERS.state_keys(name)
        assert keys is not None and type(opt) in keys.optimizers, name
        assert state_keys_of(opt) is keys
        for state in opt.state.values():
            held = {k for k, v in state.items() if isinstance(v, Tensor) and v.shape != ()}
            assert held <= keys.tensors, name
            assert set(state) - held <= {keys.step}, name
            if keys.second_moment is not None:
                assert keys.second_moment in state, name
        check_optimizer(opt)


def test_subclasses_are_exact_for_surgery_and_inherited_for_metrics() -> None:
    class MyAdam(torch.optim.Adam):
        pass

    net = _net()
    opt = MyAdam(param_groups(net), lr=1e-2)
    _step(net, opt)
    assert state_keys_of(opt) is None
    assert state_keys_of(opt, exact=False) is OPTIMIZERS.state_keys("adam")
    assert set(optimizer_stats(opt)) == {
        f"sqrt_v_{s}/{k}" for s in ("mean", "max", "min") for k in ("matrix", "head", "vector")
    }
    assert optimizer_stats(torch.optim.Adagrad(net.parameters())) == {}  # declares nothing


def test_adamo_sqrt_v_equals_adams() -> None:
    a, b = _net(), _net()
    adamo, adam = (
        AdamO(param_groups(a), lr=1e-2, iso_coef=0.0),
        torch.optim.Adam(param_groups(b), lr=1e-2, fused=True),
    )
    torch.manual_seed(1)
    for _ in range(3):
        x = torch.randn(5, 3)
        for net, opt in ((a, adamo), (b, adam)):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    assert optimizer_stats(adamo) == optimizer_stats(adam)


class Toy(torch.optim.Optimizer):
    """Sign descent with a running mean square under its own key names: ``t`` and ``ms``."""

    def __init__(self, params: Any) -> None:
        super().__init__(params, {"lr": 0.1})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    state["t"], state["ms"] = torch.tensor(0.0), torch.zeros_like(p)
                state["t"] += 1
                state["ms"].mul_(0.5).addcmul_(p.grad, p.grad, value=0.5)
                p.sub_(group["lr"] * p.grad.sign())


@pytest.fixture
def toy_registered() -> Any:
    keys = StateKeys(optimizers=(Toy,), step="t", second_moment="ms")
    OPTIMIZERS.register("toy", state_keys=keys)(lambda groups, cfg: Toy(groups))
    yield keys
    OPTIMIZERS.unregister("toy")


def test_a_new_optimizer_is_supported_by_declaring_its_keys(toy_registered: StateKeys) -> None:
    net = _net()
    opt = Toy(net.parameters())
    _step(net, opt)
    check_optimizer(opt)
    weight = net[0].weight
    before = opt.state[weight]["ms"].clone()
    assert before[1:3].abs().sum() > 0
    reset_state_(opt, weight, (torch.tensor([1, 2]),))
    after = opt.state[weight]["ms"]
    assert torch.all(after[1:3] == 0) and torch.equal(after[[0, 3]], before[[0, 3]])
    assert opt.state[weight]["t"].item() == 1.0  # the counter is left alone
    stats = optimizer_stats(opt)
    assert stats["sqrt_v_max/group_0"] > 0  # read through the declared second moment
