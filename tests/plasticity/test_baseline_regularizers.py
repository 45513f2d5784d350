"""The plasticity-baseline regularizers ``l2_init`` (Kumar et al.) and ``parseval`` (Chung et al.)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import torch
from plasticrl.agents.isometric import isometric_mlp
from plasticrl.agents.networks import NetworkConfig, make_network
from plasticrl.plasticity.isometry import isometry_grad, isometry_penalty
from plasticrl.plasticity.l2_init import L2InitRegularizer, l2_init_penalty
from plasticrl.plasticity.optimizers import param_groups
from plasticrl.plasticity.parseval import ParsevalRegularizer, parseval_grad, parseval_penalty
from plasticrl.plasticity.regularizers import REGULARIZERS, Regularizer, RegularizerConfig, make_regularizers
from plasticrl.trainers.config import load_config
from torch import nn
from torch.testing import assert_close

from tests.conftest import run_minatar_preset

MINATAR_OBS = gym.spaces.Box(0.0, 1.0, (4, 10, 10))
CARTPOLE_OBS = gym.spaces.Box(-4.0, 4.0, (4,))
ACTIONS = gym.spaces.Discrete(6)
PRESETS = Path(__file__).resolve().parents[2] / "configs" / "minatar"
PRESET_RUN = ("total_steps=2000", "metrics.every=0")
"""Added to the tiny MinAtar overrides: ~1900 updates of each preset's method."""


def build(name: str, coef: float, model: nn.Module, **options: object) -> Regularizer:
    groups = param_groups(model)
    (reg,) = make_regularizers(model, groups, [RegularizerConfig(name, coef, options)])
    return reg


def small_nets() -> list[tuple[str, nn.Module]]:
    torch.manual_seed(0)
    return [
        ("mlp", make_network(CARTPOLE_OBS, ACTIONS, NetworkConfig(hidden_sizes=(8, 5)))),
        ("minatar_cnn", make_network(MINATAR_OBS, ACTIONS, NetworkConfig("minatar_cnn", (16,), channels=4))),
    ]


def perturb_(model: nn.Module, scale: float = 0.1, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", ["l2_init", "parseval"])
def test_registered_and_satisfy_the_protocol(name: str) -> None:
    assert name in REGULARIZERS.names()
    assert {"isometry", "spectral"} <= set(REGULARIZERS.names())
    model = small_nets()[0][1]
    reg = build(name, 1e-3, model)
    assert isinstance(reg, Regularizer) and reg.name == name


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("l2_init", {"nope": 1}, "bad options"),
        ("l2_init", {"kinds": ["matrix", "weights"]}, "kinds must be a list"),
        ("l2_init", {"kinds": "matrix"}, "kinds must be a list"),
        ("parseval", {"nope": 1}, "bad options"),
        ("parseval", {"target": -1.0}, "target must be"),
        ("parseval", {"target": float("inf")}, "target must be"),
        ("parseval", {"include_head": "yes"}, "include_head must be"),
    ],
)
def test_bad_options_are_clear_errors(name: str, options: dict[str, object], match: str) -> None:
    model = small_nets()[0][1]
    with pytest.raises(ValueError, match=match):
        build(name, 1e-3, model, **options)


# ----------------------------------------------------------------------------- L2-Init


def test_l2_init_value_by_hand() -> None:
    layer = nn.Linear(2, 1)
    reg = L2InitRegularizer(list(layer.named_parameters()), coef=0.25)
    assert reg().item() == 0.0
    with torch.no_grad():
        layer.weight.add_(torch.tensor([[1.0, -2.0]]))
        layer.bias.add_(3.0)
    # 0.25 · (1 + 4 + 9)
    assert reg().item() == pytest.approx(3.5)
    assert reg.distance() == pytest.approx(14.0**0.5)


@pytest.mark.parametrize(("net_name", "model"), small_nets(), ids=lambda v: v if isinstance(v, str) else "")
def test_l2_init_grad_is_2_lambda_theta_minus_theta0(net_name: str, model: nn.Module) -> None:
    lam = 1e-2
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    reg = build("l2_init", lam, model)
    perturb_(model)
    model.zero_grad()
    reg().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, n
        assert_close(p.grad, 2 * lam * (p.detach() - theta0[n]), rtol=1e-6, atol=1e-9)
    # The same value as the plain definition, through autograd.
    params = list(model.parameters())
    expected = lam * l2_init_penalty(params, [theta0[n] for n, _ in model.named_parameters()])
    assert_close(reg(), expected)


def test_l2_init_covers_every_trainable_parameter_by_default_and_kinds_restricts() -> None:
    model = make_network(
        MINATAR_OBS, ACTIONS, NetworkConfig("minatar_cnn", (16,), channels=4, layernorm=True)
    )
    reg = build("l2_init", 1e-2, model)
    assert isinstance(reg, L2InitRegularizer)
    assert reg.names == [n for n, _ in model.named_parameters()]  # head, biases and norms included
    weights_only = build("l2_init", 1e-2, model, kinds=["matrix", "head"])
    assert isinstance(weights_only, L2InitRegularizer)
    assert weights_only.names == ["conv.weight", "fc.weight", "head.weight"]


def test_one_gradient_step_of_size_1_over_2_lambda_lands_on_theta0() -> None:
    # θ ← θ − η · 2λ(θ − θ₀) with η = 1/(2λ) is θ₀: the penalty pulls exactly toward the anchor.
    torch.manual_seed(3)
    model = make_network(CARTPOLE_OBS, ACTIONS, NetworkConfig(hidden_sizes=(8,)))
    theta0 = [p.detach().clone() for p in model.parameters()]
    lam = 0.05
    reg = build("l2_init", lam, model)
    perturb_(model, scale=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=1 / (2 * lam))
    opt.zero_grad()
    reg().backward()
    opt.step()
    for p, p0 in zip(model.parameters(), theta0, strict=True):
        assert_close(p.detach(), p0, rtol=0, atol=1e-6)
    assert reg().item() == pytest.approx(0.0, abs=1e-10)


def test_theta0_is_captured_at_construction_and_unchanged_by_training() -> None:
    torch.manual_seed(4)
    model = make_network(CARTPOLE_OBS, ACTIONS, NetworkConfig(hidden_sizes=(16,)))
    initial = [p.detach().clone() for p in model.parameters()]
    reg = build("l2_init", 1e-2, model)
    assert isinstance(reg, L2InitRegularizer)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 4), torch.randn(32, 6)
    for _ in range(20):
        loss = nn.functional.mse_loss(model(x), y) + reg()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(not torch.equal(p, p0) for p, p0 in zip(model.parameters(), initial, strict=True))
    for init, p0 in zip(reg.inits, initial, strict=True):
        assert torch.equal(init, p0)
        assert not init.requires_grad
    assert reg().item() > 0.0


def test_l2_init_state_dict_round_trip_restores_the_anchor() -> None:
    torch.manual_seed(5)
    cfg = NetworkConfig("minatar_cnn", (16,), channels=4)
    first = make_network(MINATAR_OBS, ACTIONS, cfg)
    reg = build("l2_init", 1e-2, first)
    perturb_(first)
    state = reg.state_dict()
    assert sum(k.startswith("init_") for k in state) == len(list(first.parameters()))
    # A resumed run: a fresh network (another init), its weights loaded, then the regularizer state.
    second = make_network(MINATAR_OBS, ACTIONS, cfg)
    restored = build("l2_init", 1e-2, second)
    assert not torch.equal(restored().detach(), reg().detach())
    second.load_state_dict(first.state_dict())
    restored.load_state_dict(state)
    assert isinstance(restored, L2InitRegularizer) and isinstance(reg, L2InitRegularizer)
    for a, b in zip(restored.inits, reg.inits, strict=True):
        assert torch.equal(a, b)
    assert_close(restored(), reg())


def test_l2_init_state_of_other_parameters_is_rejected() -> None:
    big = make_network(CARTPOLE_OBS, ACTIONS, NetworkConfig(hidden_sizes=(16,)))
    small = make_network(CARTPOLE_OBS, ACTIONS, NetworkConfig(hidden_sizes=(8,)))
    state = build("l2_init", 1e-2, big).state_dict()
    with pytest.raises((ValueError, RuntimeError)):
        build("l2_init", 1e-2, small).load_state_dict(state)


def test_l2_init_zero_coef_and_empty() -> None:
    model = small_nets()[0][1]
    perturb_(model)
    assert build("l2_init", 0.0, model)().item() == 0.0
    assert L2InitRegularizer([], coef=1.0)().item() == 0.0


# ----------------------------------------------------------------------------- Parseval

# (shape, description): the rows Gram is (out × out) whatever the shape.
SHAPES = [
    ((3, 5), "wide"),
    ((5, 3), "tall"),
    ((4, 4), "square"),
    ((6, 2, 3, 3), "conv, wide as a matrix (6 x 18)"),
    ((20, 1, 2, 2), "conv, tall as a matrix (20 x 4)"),
]


def test_parseval_penalty_and_grad_by_hand() -> None:
    # W Wᵀ = [[5, 2], [2, 1]]; W Wᵀ − 2I = [[3, 2], [2, −1]]: R = 9 + 4 + 4 + 1.
    w = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
    assert parseval_penalty(w, target=2.0).item() == 18.0
    # ∇R = 4 (W Wᵀ − 2I) W = 4 [[3, 8], [2, 3]].
    assert_close(parseval_grad(w, target=2.0), torch.tensor([[12.0, 32.0], [8.0, 12.0]], dtype=torch.float64))
    # Tall 3 × 1 column (1, 1, 0): W Wᵀ has a zero row/column; the rows Gram keeps them.
    tall = torch.tensor([[1.0], [1.0], [0.0]], dtype=torch.float64)
    # W Wᵀ − 2I = [[−1, 1, 0], [1, −1, 0], [0, 0, −2]]: 1 + 1 + 1 + 1 + 4.
    assert parseval_penalty(tall, target=2.0).item() == 8.0


@pytest.mark.parametrize("target", [1.0, 2.0])
@pytest.mark.parametrize(("shape", "desc"), SHAPES, ids=[d for _, d in SHAPES])
def test_parseval_closed_form_equals_autograd(shape: tuple[int, ...], desc: str, target: float) -> None:
    torch.manual_seed(0)
    weight = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    (expected,) = torch.autograd.grad(parseval_penalty(weight, target), weight)
    assert_close(parseval_grad(weight, target), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("shape", "desc"), SHAPES, ids=[d for _, d in SHAPES])
def test_regularizer_value_and_grad_equal_the_rows_gram_definition(shape: tuple[int, ...], desc: str) -> None:
    torch.manual_seed(1)
    weight = nn.Parameter(torch.randn(shape, dtype=torch.float64))
    reg = ParsevalRegularizer([weight], coef=0.3, target=2.0)
    value = reg()
    assert_close(value, 0.3 * parseval_penalty(weight.detach(), 2.0))
    value.backward()
    assert_close(weight.grad, 0.3 * parseval_grad(weight, 2.0), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("target", [1.0, 2.0])
def test_parseval_vs_isometry_on_tall_and_wide(target: float) -> None:
    # Note [Parseval vs the isometry penalty]: same gradient, values differ by (out − in)·s².
    torch.manual_seed(2)
    tall, wide = torch.randn(7, 3, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    gap = parseval_penalty(tall, target) - isometry_penalty(tall, target)
    assert gap.item() == pytest.approx((7 - 3) * target**2)
    assert_close(parseval_grad(tall, target), isometry_grad(tall, target))
    assert_close(parseval_penalty(wide, target), isometry_penalty(wide, target))


def test_parseval_is_zero_at_scaled_orthogonal_rows() -> None:
    torch.manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(8, 4, dtype=torch.float64))  # orthonormal columns
    rows = nn.Parameter((2.0**0.5) * q.T.contiguous())  # (4, 8): W Wᵀ = 2I
    reg = ParsevalRegularizer([rows], coef=1.0, target=2.0)
    value = reg()
    assert value.item() == pytest.approx(0.0, abs=1e-12)
    value.backward()
    assert rows.grad is not None and rows.grad.abs().max().item() < 1e-12


def test_parseval_penalises_hidden_weights_only() -> None:
    torch.manual_seed(4)
    cfg = NetworkConfig("minatar_cnn", (16,), channels=4, layernorm=True, activation="crelu")
    model = make_network(MINATAR_OBS, ACTIONS, cfg)
    reg = build("parseval", 1e-3, model)
    assert isinstance(reg, ParsevalRegularizer) and reg.target == 2.0
    assert [p is model.conv.weight or p is model.fc.weight for p in reg.params] == [True, True]
    with_head = build("parseval", 1e-3, model, include_head=True, target=1.0)
    assert isinstance(with_head, ParsevalRegularizer) and with_head.target == 1.0
    assert [tuple(p.shape) for p in with_head.params] == [(4, 4, 3, 3), (16, 512), (6, 32)]
    # Constrained (orthogonal) layers are isometric by construction: nothing to penalise.
    iso = isometric_mlp(CARTPOLE_OBS, ACTIONS, NetworkConfig("isometric_mlp", (8,)))
    assert build("parseval", 1e-3, iso).params == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(("net_name", "model"), small_nets(), ids=lambda v: v if isinstance(v, str) else "")
def test_parseval_on_standard_nets(net_name: str, model: nn.Module) -> None:
    reg = build("parseval", 1e-3, model)
    assert isinstance(reg, ParsevalRegularizer)
    value = reg()
    expected = 1e-3 * sum(parseval_penalty(p.detach(), 2.0) for p in reg.params)
    assert_close(value, expected)
    model.zero_grad()
    value.backward()
    grads = {id(p): p.grad for p in model.parameters()}
    for p in reg.params:
        assert_close(grads[id(p)], 1e-3 * parseval_grad(p, 2.0), rtol=1e-5, atol=1e-8)
    penalised = {id(p) for p in reg.params}
    assert all(g is None for i, g in grads.items() if i not in penalised)
    # Descending the penalty alone brings the rows toward W Wᵀ = 2I: the removable part (above the
    # floor (out − in)⁺·s² of tall layers) shrinks.
    floor = 1e-3 * sum(4.0 * max(p.shape[0] - p[0].numel(), 0) for p in reg.params)
    opt = torch.optim.SGD(model.parameters(), lr=10.0)  # η·λ = 1e-2
    before = value.item() - floor
    for _ in range(50):
        opt.zero_grad()
        reg().backward()
        opt.step()
    assert 0.0 <= reg().item() - floor < 0.1 * before


def test_parseval_state_is_empty() -> None:
    reg = build("parseval", 1e-3, small_nets()[0][1])
    assert reg.state_dict() == {}
    reg.load_state_dict({})
    with pytest.raises(ValueError, match="no state"):
        reg.load_state_dict({"u": torch.zeros(1)})


# ----------------------------------------------------------------------------- presets


def run_preset(method: str, runs_dir: Path) -> tuple[Any, dict[str, list[float]]]:
    """Train ``dqn_permuted_<method>.yaml`` on a tiny MinAtar net; (agent, logged ``losses/reg_*``)."""
    return run_minatar_preset(method, runs_dir, "losses/reg_", PRESET_RUN)


def test_l2_init_preset_pulls_from_a_fixed_anchor(runs_dir: Path) -> None:
    agent, logged = run_preset("l2_init", runs_dir)
    (reg,) = agent.regularizers
    assert isinstance(reg, L2InitRegularizer) and reg.coef == 1e-2
    assert reg.names == [n for n, _ in agent.q_net.named_parameters()]
    values = logged["losses/reg_l2_init"]
    # 0 at the first update (θ = θ₀), then λ‖θ − θ₀‖² > 0 as training moves away from the anchor.
    assert values[0] == pytest.approx(0.0, abs=1e-9) and values[-1] > 0
    assert reg().item() == pytest.approx(1e-2 * reg.distance() ** 2, rel=1e-5)


def test_parseval_preset_drives_the_penalty_down(runs_dir: Path) -> None:
    agent, logged = run_preset("parseval", runs_dir)
    (reg,) = agent.regularizers
    assert isinstance(reg, ParsevalRegularizer) and (reg.coef, reg.target) == (1e-3, 2.0)
    assert [p is agent.q_net.conv.weight or p is agent.q_net.fc.weight for p in reg.params] == [True, True]
    values = logged["losses/reg_parseval"]
    assert len(values) >= 3 and values[-1] < 0.8 * values[0]


def test_weight_decay_preset_is_decoupled_adamw(runs_dir: Path) -> None:
    cfg = load_config(PRESETS / "dqn_permuted_weight_decay.yaml")
    assert (cfg.optimizer.name, cfg.optimizer.weight_decay, cfg.optimizer.lr) == ("adamw", 1e-2, 1e-4)
    assert cfg.regularizers == () and cfg.interventions == ()
    agent, _ = run_preset("weight_decay", runs_dir)
    assert type(agent.optimizer) is torch.optim.AdamW
    assert all(g["weight_decay"] == 1e-2 for g in agent.optimizer.param_groups)
