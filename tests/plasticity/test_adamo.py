"""AdamO, tested in the shape of torch's test/test_optim.py: input and error tables, generic tests.

The paper checks are ``test_one_step_by_hand`` (the update rule on a 2×3 and a 3×2 matrix, written
out by hand) and ``test_zero_task_gradient_drives_to_isometry``. The subclass checks (Note [Adam
part] in plasticrl.plasticity.adamo) are bit-for-bit: λ = 0 is torch's AdamW (Adam without decay),
λ > 0 is torch's AdamW step plus exactly ``−η λ ∇R(θ_{t−1})``, and a checkpoint written by the
first AdamO (before it subclassed Adam; ``data/adamo_state_v1.pt``) loads and continues exactly.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from plasticrl.plasticity.adamo import AdamO
from plasticrl.plasticity.isometry import isometry_gap, isometry_grad
from plasticrl.plasticity.optimizers import OPTIMIZERS, OptimizerConfig, make_optimizer, param_groups
from torch import Tensor, nn
from torch.nn.utils import parametrizations
from torch.testing import assert_close


@dataclass(frozen=True)
class OptimInput:
    kwargs: dict[str, Any] = field(default_factory=dict)
    desc: str = "default"


ADAMO_INPUTS = [
    OptimInput({}, "default"),
    OptimInput({"lr": 1e-2}, "lr"),
    OptimInput({"lr": 1e-2, "weight_decay": 0.1}, "decoupled weight_decay"),
    OptimInput({"lr": 1e-2, "maximize": True}, "maximize"),
    OptimInput({"lr": 1e-2, "iso_coef": 0.0}, "iso_coef=0 (Adam)"),
    OptimInput({"lr": 1e-2, "iso_coef": 0.1, "iso_target": 2.0}, "iso_target=2"),
    OptimInput({"lr": 1e-2, "iso_lr": 1e-3}, "iso_lr"),
    OptimInput({"lr": 1e-2, "iso_every": 3}, "iso_every=3"),
    OptimInput({"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6}, "betas, eps"),
    OptimInput({"lr": 1e-2, "iso_prefetch": True}, "iso_prefetch"),
]
INPUT_IDS = [i.desc for i in ADAMO_INPUTS]

# (kwargs, error, match, when): "construct" raises in __init__, "step" in the first step.
ADAMO_ERRORS: list[tuple[dict[str, Any], type[Exception], str, str]] = [
    ({"lr": -1e-2}, ValueError, r"Invalid lr: -0.01", "construct"),
    ({"lr": torch.tensor(1e-3)}, ValueError, r"Invalid lr: 0.001", "construct"),
    ({"betas": (1.0, 0.999)}, ValueError, r"Invalid betas: \(1.0, 0.999\)", "construct"),
    ({"betas": (0.9,)}, ValueError, r"Invalid betas", "construct"),
    ({"eps": -1.0}, ValueError, r"Invalid eps: -1.0", "construct"),
    ({"weight_decay": -0.5}, ValueError, r"Invalid weight_decay: -0.5", "construct"),
    ({"iso_coef": -1e-2}, ValueError, r"Invalid iso_coef: -0.01", "construct"),
    ({"iso_coef": float("nan")}, ValueError, r"Invalid iso_coef: nan", "construct"),
    ({"iso_target": -1.0}, ValueError, r"Invalid iso_target: -1.0", "construct"),
    ({"iso_lr": -1.0}, ValueError, r"Invalid iso_lr: -1.0", "construct"),
    ({"iso_every": 0}, ValueError, r"Invalid iso_every: 0", "construct"),
    ({"iso_every": 2.0}, ValueError, r"Invalid iso_every: 2.0", "construct"),
    ({"iso_prefetch": 1}, ValueError, r"Invalid iso_prefetch: 1", "construct"),
    ({"foreach": "yes"}, ValueError, r"Invalid foreach: yes", "construct"),
    ({"fused": True, "foreach": True}, ValueError, r"Invalid fused: True", "construct"),
    ({"maximize": None}, ValueError, r"Invalid maximize: None", "construct"),
    ({"amsgrad": 1}, ValueError, r"Invalid amsgrad: 1", "construct"),
    ({"sparse": True}, RuntimeError, r"does not support sparse gradients", "step"),
    ({"complex": True}, RuntimeError, r"does not support complex parameters", "step"),
]


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def _closure_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor) -> None:
    opt.zero_grad()
    model(x).square().sum().backward()
    opt.step()


@pytest.mark.parametrize(
    ("kwargs", "error", "match", "when"),
    ADAMO_ERRORS,
    ids=[f"{e[3]}-{i}" for i, e in enumerate(ADAMO_ERRORS)],
)
def test_errors(kwargs: dict[str, Any], error: type[Exception], match: str, when: str) -> None:
    if when == "construct":
        with pytest.raises(error, match=match):
            AdamO([nn.Parameter(torch.randn(2, 2))], **kwargs)
        return
    if kwargs.get("complex"):
        param = nn.Parameter(torch.randn(2, 2, dtype=torch.complex64))
        param.grad = torch.ones_like(param)
    else:
        param = nn.Parameter(torch.randn(2, 2))
        param.grad = torch.eye(2).to_sparse()
    with pytest.raises(error, match=match):
        AdamO([param]).step()


@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("inp", ADAMO_INPUTS, ids=INPUT_IDS)
def test_right_direction(inp: OptimInput, contiguous: bool) -> None:
    torch.manual_seed(0)
    weight = torch.randn(10, 5) if contiguous else torch.randn(5, 10).t()
    weight = nn.Parameter(weight.detach())
    bias = nn.Parameter(torch.randn(10))
    assert weight.is_contiguous() == contiguous
    x = torch.randn(5)
    opt = AdamO([weight, bias], **inp.kwargs)
    sign = -1.0 if inp.kwargs.get("maximize") else 1.0

    def objective() -> Tensor:
        return (weight @ x + bias).square().sum()

    initial = objective().item()
    for _ in range(20):
        opt.zero_grad()
        (sign * objective()).backward()
        opt.step()
    assert objective().item() < initial


# Implementation flags, passed alike to AdamO and torch's Adam. {} compares AdamO's default
# (fused on the CPU) with torch's default (the single-tensor loop).
IMPLEMENTATIONS = [{"foreach": False}, {"foreach": True}, {"fused": True}, {}]
IMPL_IDS = ["single", "foreach", "fused", "defaults"]


# AdamO's default kernel is fused on the CPU (Note [Adam part]); torch's is the single-tensor loop.
TORCH_FLAGS = {"single": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
TORCH_FLAGS["defaults"] = TORCH_FLAGS["fused"]


def _conv_net(seed: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 2)
    )


def _inputs(model: nn.Module) -> Tensor:
    return torch.randn(6, 3) if isinstance(model[0], nn.Linear) else torch.randn(6, 2, 3, 3)


def _assert_identical(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    """Same parameters and same state, bit for bit."""
    for group_a, group_b in zip(a.param_groups, b.param_groups, strict=True):
        for p, q in zip(group_a["params"], group_b["params"], strict=True):
            assert torch.equal(p, q)
            assert a.state[p].keys() == b.state[q].keys()
            for key in a.state[p]:
                assert torch.equal(a.state[p][key], b.state[q][key]), key


@pytest.mark.parametrize("model_fn", [_mlp, _conv_net], ids=["mlp", "conv"])
@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=IMPL_IDS)
@pytest.mark.parametrize(
    ("weight_decay", "maximize", "amsgrad"),
    [(0.0, False, False), (0.1, False, False), (0.0, True, False), (0.1, False, True)],
)
def test_iso_coef_zero_is_torch_adamw_bit_for_bit(
    model_fn: Callable[[], nn.Module],
    impl: dict[str, bool],
    weight_decay: float,
    maximize: bool,
    amsgrad: bool,
) -> None:
    """λ = 0 is torch's AdamW exactly (and Adam without decay), 50 steps, params and state."""
    flags = TORCH_FLAGS[IMPL_IDS[IMPLEMENTATIONS.index(impl)]]
    models = [model_fn() for _ in range(3)]
    kwargs = {"lr": 1e-2, "weight_decay": weight_decay, "maximize": maximize, "amsgrad": amsgrad}
    opts: list[torch.optim.Optimizer] = [
        AdamO(models[0].parameters(), iso_coef=0.0, **impl, **kwargs),
        torch.optim.AdamW(models[1].parameters(), **flags, **kwargs),
    ]
    if weight_decay == 0:
        opts.append(torch.optim.Adam(models[2].parameters(), **flags, **kwargs))
    torch.manual_seed(1)
    for _ in range(50):
        x = _inputs(models[0])
        for model, opt in zip(models, opts, strict=False):
            _closure_step(model, opt, x)
    for reference in opts[1:]:
        _assert_identical(opts[0], reference)


@pytest.mark.parametrize("model_fn", [_mlp, _conv_net], ids=["mlp", "conv"])
@pytest.mark.parametrize("impl", IMPLEMENTATIONS, ids=IMPL_IDS)
@pytest.mark.parametrize(
    "kwargs", [{}, {"weight_decay": 0.1, "iso_lr": 3e-3, "iso_target": 2.0}], ids=["plain", "wd"]
)
@pytest.mark.parametrize("prefetch", [False, True])
def test_isometry_step_is_added_to_torch_adamw_exactly(
    model_fn: Callable[[], nn.Module], impl: dict[str, bool], kwargs: dict[str, Any], prefetch: bool
) -> None:
    """AdamO = torch's AdamW step, then θ ← θ − η_iso λ ∇R(θ_{t−1}) on the matrices, bit for bit."""
    flags = TORCH_FLAGS[IMPL_IDS[IMPLEMENTATIONS.index(impl)]]
    model, reference = model_fn(), model_fn()
    lr, coef = 1e-2, 0.3
    opt = AdamO(model.parameters(), lr=lr, iso_coef=coef, iso_prefetch=prefetch, **impl, **kwargs)
    adamw_kwargs = {"weight_decay": kwargs.get("weight_decay", 0.0)}
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=lr, **flags, **adamw_kwargs)
    iso_lr, target = kwargs.get("iso_lr", lr), kwargs.get("iso_target", 1.0)
    torch.manual_seed(2)
    for _ in range(20):
        x = _inputs(model)
        _closure_step(model, opt, x)
        ref_opt.zero_grad()
        reference(x).square().sum().backward()
        matrices = [p for p in reference.parameters() if p.dim() >= 2]
        grads = [isometry_grad(p, target) for p in matrices]  # at θ_{t−1}
        ref_opt.step()
        with torch.no_grad():
            for p, g in zip(matrices, grads, strict=True):
                p.add_(g, alpha=-iso_lr * coef)
    _assert_identical(opt, ref_opt)


FIXTURE = Path(__file__).parent / "data" / "adamo_state_v1.pt"


def _fixture_model() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))


def test_checkpoint_of_the_first_adamo_loads_and_continues_exactly() -> None:
    """``data/adamo_state_v1.pt``: written by the AdamO before it subclassed torch's Adam.

    Model and optimizer state after 5 steps (tagged groups, iso_head, the head at iso_every=2,
    weight decay 0.1, the default fused kernel), the next 5 inputs, and the weights that AdamO
    reached after them. Loading it and taking the 5 steps must reach the same weights (bit for bit
    where it was written).
    """
    checkpoint = torch.load(FIXTURE, weights_only=True)
    group_keys = set(checkpoint["optimizer"]["param_groups"][0])
    assert {"amsgrad", "capturable", "differentiable", "decoupled_weight_decay"}.isdisjoint(group_keys)
    model = _fixture_model()
    model.load_state_dict(checkpoint["model"])
    opt = AdamO(param_groups(model, iso_head=True), lr=1.0, weight_decay=0.0, iso_coef=0.0)
    opt.load_state_dict(checkpoint["optimizer"])
    assert all(g["decoupled_weight_decay"] and g["fused"] is None for g in opt.param_groups)
    for x in checkpoint["inputs"]:
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    # Bit for bit on the CPU that wrote it; another CPU's kernels may round a product's last bit
    # differently (seen on one Xeon), so elsewhere the weights agree to float32 rounding.
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, checkpoint["expected"][name], rtol=2e-6, atol=1e-7, msg=name)


def test_step_hooks_run_once_per_step() -> None:
    """AdamO calls torch's functional Adam, not ``Adam.step``, so torch's step hooks run once."""
    torch.optim.Adam([nn.Parameter(torch.zeros(1))])  # wraps Adam.step with torch's hook runner
    model = _mlp()
    opt = AdamO(model.parameters())
    calls: list[str] = []
    opt.register_step_pre_hook(lambda *_: calls.append("pre"))
    opt.register_step_post_hook(lambda *_: calls.append("post"))
    _closure_step(model, opt, torch.randn(4, 3))
    assert calls == ["pre", "post"]


def test_one_step_by_hand() -> None:
    """One AdamO step on a 2×3 and a 3×2 matrix, each entry written out by hand.

    First Adam step: m̂ = g and v̂ = g², so the Adam part moves each entry by −η·sign(g) (0 where
    g = 0). lr η = 0.1, iso_coef λ = 0.01, iso_lr = η, so the isometry part is −0.001·∇R(W).
    """
    dt = torch.float64
    # Wide W (2×3): W Wᵀ = [[2, 0], [0, 1]], G − I = [[1, 0], [0, 0]],
    # ∇R = 4 (G − I) W = [[4, 0, 4], [0, 0, 0]].
    wide = nn.Parameter(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]], dtype=dt))
    wide.grad = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], dtype=dt)
    # Tall W (3×2), s = 2: WᵀW = [[1, 0], [0, 4]], G − 2I = [[−1, 0], [0, 2]],
    # ∇R = 4 W (G − 2I) = [[−4, 0], [0, 16], [0, 0]]; decoupled decay 1 − η·0.5 = 0.95.
    tall = nn.Parameter(torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=dt))
    tall.grad = torch.tensor([[2.0, 0.0], [-1.0, 1.0], [0.5, 0.0]], dtype=dt)
    for impl in IMPLEMENTATIONS:
        w, t = nn.Parameter(wide.detach().clone()), nn.Parameter(tall.detach().clone())
        w.grad, t.grad = wide.grad.clone(), tall.grad.clone()
        opt = AdamO(
            [{"params": [w]}, {"params": [t], "iso_target": 2.0, "weight_decay": 0.5}],
            lr=0.1,
            iso_coef=0.01,
            **impl,
        )
        opt.step()
        assert_close(
            w.detach(),
            torch.tensor(
                [
                    [1 - 0.1 - 0.004, 0 + 0.1 - 0.0, 1 - 0.1 - 0.004],
                    [0 - 0.0 - 0.0, 1 - 0.1 - 0.0, 0 + 0.1 - 0.0],
                ],
                dtype=dt,
            ),
            rtol=0,
            atol=1e-7,
        )
        assert_close(
            t.detach(),
            torch.tensor([[0.95 - 0.1 + 0.004, 0.0], [0 + 0.1, 1.9 - 0.1 - 0.016], [0 - 0.1, 0.0]], dtype=dt),
            rtol=0,
            atol=1e-7,
        )
        # The moments see the task gradient only.
        assert_close(opt.state[w]["exp_avg"], 0.1 * wide.grad)
        assert_close(opt.state[w]["exp_avg_sq"], 0.001 * wide.grad.square())
        assert opt.state[t]["step"].item() == 1.0


@pytest.mark.parametrize("shape", [(4, 6), (6, 4), (3, 2, 2, 2)])
@pytest.mark.parametrize("maximize", [False, True])
def test_zero_task_gradient_drives_to_isometry(shape: tuple[int, ...], maximize: bool) -> None:
    torch.manual_seed(5)
    # float64, so that the descent is not lost in float32 rounding near the fixed point.
    weight = nn.Parameter(0.5 * torch.randn(shape, dtype=torch.float64))
    opt = AdamO([weight], lr=1e-2, iso_coef=1.0, maximize=maximize)
    gaps = [isometry_gap(weight).item()]
    for _ in range(300):
        weight.grad = torch.zeros_like(weight)
        opt.step()
        gaps.append(isometry_gap(weight).item())
    assert gaps[0] > 0.3
    assert all(b <= a for a, b in zip(gaps, gaps[1:], strict=False)), "gap must not increase"
    assert gaps[-1] < 1e-6


def test_zero_grad_leaves_isometric_and_vector_params_unchanged() -> None:
    torch.manual_seed(6)
    q, _ = torch.linalg.qr(torch.randn(4, 4))
    isometric, bias = nn.Parameter(q[:3].clone()), nn.Parameter(torch.randn(3))
    before = [isometric.detach().clone(), bias.detach().clone()]
    opt = AdamO([isometric, bias], lr=1e-2, iso_coef=1.0)
    for _ in range(5):
        isometric.grad, bias.grad = torch.zeros_like(isometric), torch.zeros_like(bias)
        opt.step()
    assert_close(isometric.detach(), before[0], rtol=0, atol=1e-6)
    assert torch.equal(bias.detach(), before[1])


def test_no_grad_is_a_no_op() -> None:
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    opt = AdamO(model.parameters(), lr=1.0, iso_coef=1.0, weight_decay=1.0)
    opt.step()
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)
    assert len(opt.state) == 0


def test_step_returns_the_closure_loss() -> None:
    model = _mlp()
    opt = AdamO(model.parameters(), lr=1e-2)
    x = torch.randn(4, 3)

    def closure() -> float:
        opt.zero_grad()
        loss = model(x).square().sum()
        loss.backward()
        return loss.item()

    first = opt.step(closure)
    assert first == pytest.approx(_mlp()(x).square().sum().item())  # the loss before the step
    assert opt.step(closure) < first and opt.step() is None


def _foreach_model() -> tuple[nn.Module, list[nn.Parameter]]:
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    conv = nn.Parameter(torch.randn(2, 1, 2, 2))
    empty = nn.Parameter(torch.randn(0, 3))  # zero-size, takes the (empty) isometry step
    return model, [*model.parameters(), conv, empty]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS[1:3], ids=IMPL_IDS[1:3])
@pytest.mark.parametrize("inp", ADAMO_INPUTS, ids=INPUT_IDS)
def test_foreach_and_fused_match_single_tensor(inp: OptimInput, impl: dict[str, bool]) -> None:
    results = []
    for flags in ({"foreach": False}, impl):
        model, params = _foreach_model()
        opt = AdamO(params, **flags, **inp.kwargs)
        torch.manual_seed(8)
        for i in range(7):
            x = torch.randn(5, 3)
            opt.zero_grad()
            (model(x).square().sum() + params[-2].square().sum()).backward()
            params[-1].grad = torch.zeros_like(params[-1])
            if i == 3:
                params[0].grad = None  # skipped this step: no update, no step count
            opt.step()
        results.append((params, opt))
    (params_a, opt_a), (params_b, opt_b) = results
    for p, q in zip(params_a, params_b, strict=True):
        assert_close(p, q)
        assert set(opt_a.state[p]) == set(opt_b.state[q]) == {"step", "exp_avg", "exp_avg_sq"}
        for key in opt_a.state[p]:
            assert_close(opt_a.state[p][key], opt_b.state[q][key])
    assert opt_a.state[params_a[0]]["step"].item() == 6.0
    assert opt_a.state[params_a[1]]["step"].item() == 7.0


@pytest.mark.parametrize("inp", ADAMO_INPUTS, ids=INPUT_IDS)
def test_state_dict_round_trip(inp: OptimInput) -> None:
    model = _mlp()
    opt = AdamO(model.parameters(), **inp.kwargs)
    torch.manual_seed(9)
    xs = [torch.randn(4, 3) for _ in range(20)]
    for x in xs[:10]:
        _closure_step(model, opt, x)
    clone = copy.deepcopy(model)
    opt_clone = AdamO(clone.parameters(), **inp.kwargs)
    opt_clone.load_state_dict(copy.deepcopy(opt.state_dict()))
    for x in xs[10:]:
        _closure_step(model, opt, x)
        _closure_step(clone, opt_clone, x)
        for p, q in zip(model.parameters(), clone.parameters(), strict=True):
            assert_close(p, q)


def test_pickle_and_deepcopy_with_pending_prefetch() -> None:
    model = _mlp()
    opt = AdamO(model.parameters(), lr=1e-2, iso_prefetch=True)
    x = torch.randn(4, 3)
    for _ in range(3):
        _closure_step(model, opt, x)
    assert opt._prefetch.pending  # a prefetch is in flight
    for restored in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        assert not restored._prefetch.pending
        assert restored.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
    # A deep copy of model and optimizer together continues exactly like the original.
    twin_model, twin_opt = copy.deepcopy((model, opt))
    for _ in range(3):
        _closure_step(model, opt, x)
        _closure_step(twin_model, twin_opt, x)
    for p, q in zip(model.parameters(), twin_model.parameters(), strict=True):
        assert_close(p, q)


def test_no_prefetch_without_isometry_work() -> None:
    model = _mlp()
    x = torch.randn(4, 3)
    for opt in (
        AdamO(model.parameters(), iso_prefetch=True, iso_coef=0.0),
        AdamO([{"params": model.parameters(), "isometry": False}], iso_prefetch=True),
    ):
        _closure_step(model, opt, x)
        assert not opt._prefetch.pending


def test_load_older_state_without_new_group_keys() -> None:
    model = _mlp()
    opt = AdamO(model.parameters(), lr=1e-2)
    _closure_step(model, opt, torch.randn(4, 3))
    state = opt.state_dict()
    new_keys = (
        "iso_coef",
        "iso_target",
        "iso_lr",
        "iso_every",
        "iso_prefetch",
        "isometry",
        "foreach",
        "fused",
        "maximize",
    )
    torch_keys = ("amsgrad", "capturable", "differentiable", "decoupled_weight_decay")
    for group in state["param_groups"]:
        for key in (*new_keys, *torch_keys):
            del group[key]
    fresh = AdamO(model.parameters(), lr=1e-2, iso_coef=0.5)
    fresh.load_state_dict(state)
    group = fresh.param_groups[0]
    # torch's Adam defaults, except that AdamO's weight decay is always decoupled
    assert {k: group[k] for k in torch_keys} == {
        "amsgrad": False,
        "capturable": False,
        "differentiable": False,
        "decoupled_weight_decay": True,
    }
    assert {k: group[k] for k in new_keys} == {
        "iso_coef": 1e-2,
        "iso_target": 1.0,
        "iso_lr": None,
        "iso_every": 1,
        "iso_prefetch": False,
        "isometry": None,
        "foreach": None,
        "fused": None,
        "maximize": False,
    }
    _closure_step(model, fresh, torch.randn(4, 3))
    assert fresh.state[next(model.parameters())]["step"].item() == 2.0


def test_param_groups_zero_lr_and_two_groups_equal_two_optimizers() -> None:
    model = _mlp()
    first, second = model[0], model[2]
    opt = AdamO(
        [{"params": first.parameters(), "lr": 0.0}, {"params": second.parameters()}], lr=1e-2, iso_coef=0.1
    )
    before = [first.weight.detach().clone(), second.weight.detach().clone()]
    _closure_step(model, opt, torch.randn(4, 3))
    assert torch.equal(first.weight, before[0])  # lr 0 also stops the isometry step (η_iso = η)
    assert not torch.equal(second.weight, before[1])

    # Two groups with different hyperparameters behave as two optimizers.
    a, b = _mlp(1), _mlp(1)
    grouped = AdamO(
        [
            {"params": a[0].parameters(), "lr": 1e-2, "iso_coef": 0.5},
            {"params": a[2].parameters(), "lr": 3e-2, "iso_target": 2.0},
        ],
        iso_coef=0.1,
    )
    separate = [
        AdamO(b[0].parameters(), lr=1e-2, iso_coef=0.5),
        AdamO(b[2].parameters(), lr=3e-2, iso_coef=0.1, iso_target=2.0),
    ]
    torch.manual_seed(10)
    for _ in range(5):
        x = torch.randn(4, 3)
        _closure_step(a, grouped, x)
        for o in separate:
            o.zero_grad()
        b(x).square().sum().backward()
        for o in separate:
            o.step()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert_close(p, q)


def _zero_grads(params: list[nn.Parameter]) -> None:
    for p in params:
        p.grad = torch.zeros_like(p)


def test_iso_every_and_iso_lr_and_schedule() -> None:
    torch.manual_seed(11)
    w0 = torch.randn(3, 5)
    # iso_every=3: nothing on steps 1, 2; step 3 applies 3 × η λ ∇R(W).
    w = nn.Parameter(w0.clone())
    opt = AdamO([w], lr=0.01, iso_coef=0.1, iso_every=3)
    for _ in range(2):
        _zero_grads([w])
        opt.step()
        assert torch.equal(w.detach(), w0)
    _zero_grads([w])
    opt.step()
    assert_close(w.detach(), w0 - 3 * 0.01 * 0.1 * isometry_grad(w0))
    # iso_lr overrides the group's lr for the isometry step only.
    w = nn.Parameter(w0.clone())
    opt = AdamO([w], lr=0.01, iso_coef=0.1, iso_lr=0.5)
    _zero_grads([w])
    opt.step()
    assert_close(w.detach(), w0 - 0.5 * 0.1 * isometry_grad(w0))
    # iso_lr=None reads the group's current lr, so LambdaLR schedules scale the isometry step.
    w = nn.Parameter(w0.clone())
    opt = AdamO([w], lr=0.01, iso_coef=0.1)
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.25)
    _zero_grads([w])
    opt.step()
    assert_close(w.detach(), w0 - 0.0025 * 0.1 * isometry_grad(w0))


def test_dead_relu_unit_moves_only_under_adamo() -> None:
    """A dead unit's incoming row has zero task gradient: Adam never moves it, AdamO does."""
    results = {}
    for name, make in [
        ("adam", lambda p: torch.optim.Adam(p, lr=1e-2)),
        ("adamo", lambda p: AdamO(p, lr=1e-2, iso_coef=0.1)),
    ]:
        torch.manual_seed(12)
        model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
        with torch.no_grad():
            model[0].weight[0] = -1.0  # inputs lie in [0, 1): pre-activation ≤ −1 < 0
            model[0].bias[0] = -1.0
        dead_row = model[0].weight[0].detach().clone()
        opt = make(model.parameters())
        for _ in range(10):
            x = torch.rand(16, 4)
            opt.zero_grad()
            model(x).square().mean().backward()
            assert model[0].weight.grad[0].abs().max().item() == 0.0  # dead: no task gradient
            opt.step()
        results[name] = (model[0].weight[0].detach() - dead_row).abs().max().item()
    assert results["adam"] == 0.0
    assert results["adamo"] > 1e-3


# -- integration with param_groups and parametrizations (STYLE R5, R8) --------------------------


def _net() -> nn.Module:
    torch.manual_seed(13)
    return nn.Sequential(
        nn.Conv2d(1, 2, 2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3)
    )


@pytest.mark.parametrize("iso_head", [False, True])
def test_registered_factory_over_param_groups(iso_head: bool) -> None:
    assert "adamo" in OPTIMIZERS
    net = _net()
    cfg = OptimizerConfig(
        name="adamo",
        lr=0.05,
        iso_coef=0.2,
        iso_target=2.0,
        iso_head=iso_head,
        weight_decay=0.0,
        foreach=True,
        iso_every=1,
        iso_prefetch=iso_head,
    )
    opt = make_optimizer(param_groups(net, iso_head=iso_head), cfg)
    assert isinstance(opt, AdamO)
    assert {g["kind"]: g["isometry"] for g in opt.param_groups} == {
        "matrix": True,
        "head": iso_head,
        "vector": False,
    }
    group = opt.param_groups[0]
    assert (
        group["lr"],
        group["iso_coef"],
        group["iso_target"],
        group["foreach"],
        group["fused"],
        group["iso_every"],
        group["iso_prefetch"],
    ) == (0.05, 0.2, 2.0, True, None, 1, iso_head)
    # Zero task gradients: only the isometry step acts, on exactly the tagged matrices.
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    _zero_grads(list(net.parameters()))
    opt.step()
    for name, p in net.named_parameters():
        takes_iso = name in ("0.weight", "3.weight") or (iso_head and name == "5.weight")
        if takes_iso:
            assert_close(p.detach(), before[name] - 0.05 * 0.2 * isometry_grad(before[name], 2.0))
        else:
            assert torch.equal(p.detach(), before[name]), name


def test_orthogonal_parametrization_original_gets_no_isometry_step() -> None:
    torch.manual_seed(14)
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    parametrizations.orthogonal(net[0])
    reference = copy.deepcopy(net)
    groups = param_groups(net)
    (constrained,) = [g for g in groups if g["kind"] == "constrained"]
    original = net[0].parametrizations.weight.original
    assert constrained["isometry"] is False and any(p is original for p in constrained["params"])

    # One step from identical weights: `original` moves exactly as under Adam, the hidden
    # matrix additionally takes −η λ ∇R.
    opt = AdamO(groups, lr=1e-2, iso_coef=0.5)
    ref_opt = torch.optim.Adam(param_groups(reference), lr=1e-2, fused=True)  # AdamO's default
    hidden_before = net[2].weight.detach().clone()
    x = torch.randn(8, 4)
    _closure_step(net, opt, x)
    _closure_step(reference, ref_opt, x)
    assert_close(original, reference[0].parametrizations.weight.original, rtol=0, atol=0)
    assert_close(net[2].weight, reference[2].weight - 1e-2 * 0.5 * isometry_grad(hidden_before))

    # More steps run without error and the constrained layer stays orthogonal.
    for _ in range(5):
        _closure_step(net, opt, torch.randn(8, 4))
    weight = net[0].weight
    assert_close(weight @ weight.T, torch.eye(4), rtol=0, atol=1e-5)


# -- Note [Isometry prefetch] -----------------------------------------------------------------


def _run_pair(
    edit: Callable[[nn.Module, AdamO], None] | None = None, **kwargs: Any
) -> tuple[nn.Module, nn.Module]:
    """The same 8 steps with and without prefetch; ``edit`` runs on both after step 4."""
    models = []
    for prefetch in (False, True):
        model = _mlp()
        opt = AdamO(model.parameters(), lr=1e-2, iso_coef=0.5, iso_prefetch=prefetch, **kwargs)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
        torch.manual_seed(16)
        for i in range(8):
            _closure_step(model, opt, torch.randn(4, 3))
            sched.step()
            if i == 3 and edit is not None:
                edit(model, opt)
        models.append(model)
    return models[0], models[1]


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_prefetch_equals_synchronous() -> None:
    _assert_same(*_run_pair())
    _assert_same(*_run_pair(iso_every=2))


def _scale_in_place(model: nn.Module, opt: AdamO) -> None:
    with torch.no_grad():
        model[0].weight.mul_(0.5)


def _load_weights(model: nn.Module, opt: AdamO) -> None:
    model.load_state_dict({k: v * 2 for k, v in model.state_dict().items()})


def _edit_data_and_discard(model: nn.Module, opt: AdamO) -> None:
    model[0].weight.data[0] = 3.0  # invisible to _version...
    opt.discard_prefetch()  # ...so the editor discards the prefetch


def _change_target(model: nn.Module, opt: AdamO) -> None:
    opt.param_groups[0]["iso_target"] = 2.0


@pytest.mark.parametrize("edit", [_scale_in_place, _load_weights, _edit_data_and_discard, _change_target])
def test_prefetch_is_discarded_when_weights_or_target_change(
    edit: Callable[[nn.Module, AdamO], None],
) -> None:
    sync, prefetched = _run_pair(edit)
    _assert_same(sync, prefetched)
