import copy

import pytest
import torch
from plasticrl.plasticity.optimizers import OptimizerConfig, make_optimizer, param_groups
from plasticrl.plasticity.rmsprop import RMSprop

SETTINGS = [
    dict(),
    dict(centered=True, alpha=0.95, eps=0.01),
    dict(momentum=0.9),
    dict(centered=True, momentum=0.5, weight_decay=0.1),
]


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))


@pytest.mark.parametrize("kwargs", SETTINGS)
def test_equals_torch_rmsprop(kwargs: dict) -> None:
    ours_model, torch_model = _model(0), _model(0)
    ours = RMSprop(ours_model.parameters(), lr=1e-2, **kwargs)
    ref = torch.optim.RMSprop(torch_model.parameters(), lr=1e-2, foreach=False, **kwargs)
    x = torch.randn(16, 5)
    for _ in range(20):
        for model, opt in ((ours_model, ours), (torch_model, ref)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for a, b in zip(ours_model.parameters(), torch_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for p_ours, p_ref in zip(ours_model.parameters(), torch_model.parameters(), strict=True):
        for key in ref.state[p_ref]:
            torch.testing.assert_close(ours.state[p_ours][key], ref.state[p_ref][key], rtol=1e-5, atol=1e-7)


def test_constant_gradient_stays_finite_where_torch_writes_nan() -> None:
    # A constant gradient makes E[g^2] - E[g]^2 rounding noise; torch's centred RMSprop takes the
    # square root of the negative part (the plasticity case: a regulariser's gradient on a dead unit).
    g = torch.rand(1000, generator=torch.Generator().manual_seed(0)) * 0.5
    results = {}
    for name, cls in (("ours", RMSprop), ("torch", torch.optim.RMSprop)):
        p = torch.zeros(1000, requires_grad=True)
        opt = cls([p], lr=1e-3, alpha=0.95, eps=0.01, centered=True)  # MinAtar reference
        for _ in range(300):
            p.grad = g.clone()
            opt.step()
        results[name] = p.detach().clone()
    assert torch.isfinite(results["ours"]).all()
    # The point of the class: the reference really does produce NaN on this input.
    assert not torch.isfinite(results["torch"]).all()


def test_registered_factory_builds_ours() -> None:
    model = _model(1)
    opt = make_optimizer(param_groups(model), OptimizerConfig(name="rmsprop", centered=True, alpha=0.95))
    assert isinstance(opt, RMSprop)
    assert all(g["centered"] and g["alpha"] == 0.95 for g in opt.param_groups)


def test_state_dict_round_trip_continues_identically() -> None:
    a, b = _model(2), _model(2)
    opt_a = RMSprop(a.parameters(), lr=1e-2, centered=True, momentum=0.9)
    x = torch.randn(8, 5)
    for _ in range(5):
        opt_a.zero_grad()
        a(x).sum().backward()
        opt_a.step()
    b.load_state_dict(a.state_dict())
    opt_b = RMSprop(b.parameters(), lr=1e-2, centered=True, momentum=0.9)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as a checkpoint on disk would
    for _ in range(5):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            model(x).sum().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    ("kwargs", "name"), [({"lr": -1.0}, "lr"), ({"alpha": 1.5}, "alpha"), ({"eps": -1.0}, "eps")]
)
def test_invalid_values(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        RMSprop([torch.zeros(2, requires_grad=True)], **kwargs)


@pytest.mark.parametrize(
    "kwargs", [dict(centered=True, alpha=0.95, eps=0.01), dict(momentum=0.9, weight_decay=0.1)]
)
def test_compiled_update_equals_eager_and_follows_the_schedule(kwargs: dict) -> None:
    eager_model, compiled_model = _model(3), _model(3)
    eager = RMSprop(eager_model.parameters(), lr=1e-2, **kwargs)
    compiled = RMSprop(compiled_model.parameters(), lr=1e-2, compile=True, **kwargs)
    schedules = [torch.optim.lr_scheduler.LambdaLR(o, lambda t: 1.0 / (1 + t)) for o in (eager, compiled)]
    x = torch.randn(16, 5)
    for _ in range(6):
        for model, opt in ((eager_model, eager), (compiled_model, compiled)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        for s in schedules:
            s.step()
    for a, b in zip(eager_model.parameters(), compiled_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert compiled.param_groups[0]["lr"] == pytest.approx(1e-2 / 7)
    assert copy.deepcopy(compiled)._compiled is None  # a copy runs the eager update


def test_compile_key_is_accepted_by_fused_optimizers_and_rejected_by_others() -> None:
    groups = param_groups(_model(4))
    adam = make_optimizer(groups, OptimizerConfig(name="adam", compile=True))  # one-key switch from rmsprop
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["fused"] is True
    with pytest.raises(ValueError, match="'sgd' has no fused update"):
        make_optimizer(param_groups(_model(4)), OptimizerConfig(name="sgd", compile=True))
