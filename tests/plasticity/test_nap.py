"""NaP (Normalize-and-Project): parameter-free norms, the projection after every step, checkpoints."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from plasticrl.agents.actor_critic import make_actor_critic
from plasticrl.agents.networks import NetworkConfig, make_network
from plasticrl.plasticity.metrics import MetricsConfig
from plasticrl.plasticity.nap import (
    NAP_BUFFER,
    NormProjection,
    attach_nap,
    mark_projected_,
    nap_norm,
    projected_modules,
)
from plasticrl.plasticity.optimizers import OptimizerConfig, head_module_names, make_optimizer, param_groups
from plasticrl.plasticity.probe import PlasticityProbe
from plasticrl.plasticity.units import find_unit_layers
from plasticrl.trainers.config import ConfigError, load_config
from plasticrl.trainers.learning import build_learning, reset_optimizer_state
from plasticrl.trainers.run import resume, train
from torch import Tensor, nn

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CARTPOLE = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
MINATAR = gym.spaces.Box(0.0, 1.0, (4, 10, 10), np.float32)
SIX = gym.spaces.Discrete(6)
NETS = {
    "mlp": (CARTPOLE, NetworkConfig(name="mlp", hidden_sizes=(32, 32), nap=True)),
    "mlp_nobias": (CARTPOLE, NetworkConfig(name="mlp", hidden_sizes=(32, 32), nap=True, bias=False)),
    "mlp_groupsort_ortho": (
        CARTPOLE,
        NetworkConfig(name="mlp", hidden_sizes=(32, 32), nap=True, activation="groupsort", init="orthogonal"),
    ),
    "minatar_cnn": (MINATAR, NetworkConfig(name="minatar_cnn", channels=8, hidden_sizes=(32,), nap=True)),
}
OPTIMIZERS = {
    "adam": OptimizerConfig(name="adam", lr=0.05),
    "sgd": OptimizerConfig(name="sgd", lr=0.5, momentum=0.9),
    "adamo": OptimizerConfig(name="adamo", lr=0.05, iso_coef=0.05),
    "rmsprop": OptimizerConfig(name="rmsprop", lr=0.05),
}


def build(net: str, seed: int = 0) -> tuple[nn.Module, gym.Space]:
    space, cfg = NETS[net]
    torch.manual_seed(seed)
    return make_network(space, SIX, cfg), space


def observations(space: gym.Space, n: int = 64, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *space.shape), generator=gen)
    return (x > 0.5).float() if len(space.shape) == 3 else x


def hidden_weight_names(model: nn.Module) -> list[str]:
    heads = set(head_module_names(model))
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d) and n not in heads]


def loss_of(model: nn.Module, x: Tensor) -> Tensor:
    return (model(x) - 3.0).square().mean()


# ---------------------------------------------------------------------------------------------
# The norm


@pytest.mark.parametrize("net", list(NETS))
def test_nap_norms_have_no_parameters_and_sit_before_every_hidden_activation(net: str) -> None:
    model, space = build(net)
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm | nn.GroupNorm)]
    assert len(norms) == len(hidden_weight_names(model)) and norms
    assert all(not list(m.parameters()) and not list(m.buffers()) for m in norms)
    # The parameters are exactly those of the same network without nap: the norm adds none.
    _, cfg = NETS[net]
    plain = make_network(space, SIX, NetworkConfig(**{**cfg.__dict__, "nap": False}))
    assert [p.shape for p in model.parameters()] == [p.shape for p in plain.parameters()]
    # Each hidden pre-activation is normalised to mean 0, variance 1 per sample (over C, H, W for a conv).
    seen: list[Tensor] = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        for m in model.modules()
        if type(m).__name__ in ("ReLU", "GroupSort")
    ]
    with torch.no_grad():
        model(observations(space))
    for h in hooks:
        h.remove()
    assert len(seen) == len(norms)
    for z in seen:
        flat = z.flatten(1)
        torch.testing.assert_close(flat.mean(1), torch.zeros(len(flat)), atol=1e-5, rtol=0)
        torch.testing.assert_close(flat.var(1, unbiased=False), torch.ones(len(flat)), atol=1e-2, rtol=0)


def test_nap_norm_kinds() -> None:
    dense, conv = nap_norm(8), nap_norm(8, conv=True)
    assert isinstance(dense, nn.LayerNorm) and not dense.elementwise_affine
    assert isinstance(conv, nn.GroupNorm) and conv.num_groups == 1 and not conv.affine
    x = torch.randn(3, 8, 5, 5)
    torch.testing.assert_close(conv(x), nn.functional.layer_norm(x, x.shape[1:]))


# ---------------------------------------------------------------------------------------------
# The projection


@pytest.mark.parametrize("net", list(NETS))
def test_every_hidden_layer_is_marked_with_its_initial_norm_and_heads_are_not(net: str) -> None:
    model, _ = build(net)
    names = [n for n, _ in projected_modules(model)]
    assert names == hidden_weight_names(model)
    for _, module in projected_modules(model):
        assert torch.equal(getattr(module, NAP_BUFFER), module.weight.detach().norm())
    assert not set(names) & set(head_module_names(model))
    marked = {id(m) for _, m in projected_modules(model)}
    assert all(NAP_BUFFER not in m._buffers for m in model.modules() if id(m) not in marked)


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("net", list(NETS))
def test_projection_restores_every_hidden_norm_after_every_step_and_leaves_heads_and_biases(
    net: str, opt: str
) -> None:
    model, space = build(net)
    twin = copy.deepcopy(model)  # the same network and optimizer, without the projection
    optimizer = make_optimizer(param_groups(model), OPTIMIZERS[opt])
    twin_optimizer = make_optimizer(param_groups(twin), OPTIMIZERS[opt])
    assert attach_nap(model, optimizer) is not None
    initial = {n: m.weight.detach().norm().item() for n, m in projected_modules(model)}
    x = observations(space)
    for step in range(4):
        for m, o in ((model, optimizer), (twin, twin_optimizer)):
            o.zero_grad()
            loss_of(m, x).backward()
            o.step()
        hidden = dict(model.named_modules())
        twins = dict(twin.named_modules())
        for name, target in initial.items():
            w = hidden[name].weight.detach()
            assert w.norm().item() == pytest.approx(target, rel=1e-5)
            if step == 0:  # same gradients: the projection is a pure rescaling of the twin's step
                w_twin = twins[name].weight.detach()
                assert abs(w_twin.norm().item() - target) > 1e-3 * target  # the step did change it
                torch.testing.assert_close(w, w_twin * (target / w_twin.norm()), rtol=1e-5, atol=1e-7)
        if step == 0:
            for name, p in model.named_parameters():
                layer = name.rpartition(".")[0]
                if layer not in initial or name.endswith("bias"):  # heads and every bias: untouched
                    assert torch.equal(p, dict(twin.named_parameters())[name]), name


def test_projection_runs_inside_the_step_before_anything_reads_the_weights() -> None:
    model, space = build("mlp")
    optimizer = make_optimizer(param_groups(model), OPTIMIZERS["adam"])
    attach_nap(model, optimizer)
    norms: list[float] = []
    layer = projected_modules(model)[0][1]
    optimizer.register_step_post_hook(lambda *_: norms.append(layer.weight.norm().item()))
    for _ in range(3):
        optimizer.zero_grad()
        loss_of(model, observations(space)).backward()
        optimizer.step()
    assert norms == pytest.approx([getattr(layer, NAP_BUFFER).item()] * 3, rel=1e-5)


def test_no_marked_layer_no_hook_and_bad_modules_refused() -> None:
    torch.manual_seed(0)
    plain = make_network(CARTPOLE, SIX, NetworkConfig(hidden_sizes=(8,)))
    optimizer = torch.optim.SGD(plain.parameters(), lr=0.1)
    assert attach_nap(plain, optimizer) is None
    assert not optimizer._optimizer_step_post_hooks  # type: ignore[attr-defined]
    assert not dict(plain.named_buffers())
    with pytest.raises(ValueError, match="plain Linear/Conv"):
        mark_projected_(nn.LayerNorm(3))
    zero = nn.Linear(2, 2)
    with torch.no_grad():
        zero.weight.fill_(1e3)
        mark_projected_(zero)  # a large target norm: target / clamped norm must stay finite
        zero.weight.zero_()
    NormProjection(zero)()
    assert torch.equal(zero.weight, torch.zeros(2, 2))  # no direction to rescale: stays 0, no NaN


# ---------------------------------------------------------------------------------------------
# Checkpoints


def test_a_loaded_state_dict_keeps_the_saved_initial_norms() -> None:
    model, space = build("minatar_cnn", seed=0)
    optimizer = make_optimizer(param_groups(model), OPTIMIZERS["adam"])
    attach_nap(model, optimizer)
    x = observations(space)
    for _ in range(2):
        optimizer.zero_grad()
        loss_of(model, x).backward()
        optimizer.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer)
    saved = {n: getattr(m, NAP_BUFFER).clone() for n, m in projected_modules(model)}
    # A network re-initialised with another seed has other initial norms until it loads the state.
    fresh, _ = build("minatar_cnn", seed=7)
    assert any(not torch.equal(getattr(m, NAP_BUFFER), saved[n]) for n, m in projected_modules(fresh))
    fresh.load_state_dict(state["model"])
    fresh_optimizer = make_optimizer(param_groups(fresh), OPTIMIZERS["adam"])
    fresh_optimizer.load_state_dict(state["optimizer"])
    attach_nap(fresh, fresh_optimizer)
    for n, m in projected_modules(fresh):
        assert torch.equal(getattr(m, NAP_BUFFER), saved[n])
    # The resumed and the uninterrupted network take the same next step, to the same norms.
    for m, o in ((model, optimizer), (fresh, fresh_optimizer)):
        o.zero_grad()
        loss_of(m, x).backward()
        o.step()
    for (n, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    for n, m in projected_modules(fresh):
        assert m.weight.norm().item() == pytest.approx(saved[n].item(), rel=1e-5)


@pytest.mark.parametrize("opt", ["adam", "adamo"])
def test_an_optimizer_state_reset_keeps_the_projection(opt: str) -> None:
    """At a task switch the optimizer state is reset; NaP's hook and target norms stay."""
    model, space = build("mlp")
    cfg = load_config(None, [f"optimizer.name={opt}", "network.nap=true"])
    learning = build_learning(model, cfg, total_updates=10)
    x = observations(space)
    targets = {n: getattr(m, NAP_BUFFER).clone() for n, m in projected_modules(model)}
    for step in range(4):
        if step == 2:
            reset_optimizer_state(learning.optimizer)
            assert not learning.optimizer.state
        learning.optimizer.zero_grad()
        loss_of(model, x).backward()
        learning.optimizer.step()
        _hidden_norms_are_initial(model)
    assert all(torch.equal(getattr(m, NAP_BUFFER), targets[n]) for n, m in projected_modules(model))


def _hidden_norms_are_initial(model: nn.Module) -> None:
    marked = projected_modules(model)
    assert marked
    for name, m in marked:
        assert m.weight.norm().item() == pytest.approx(getattr(m, NAP_BUFFER).item(), rel=1e-5), name


def test_dqn_with_nap_resumes_identically(make_tiny_config: Callable[..., Any]) -> None:
    extra = ("network.nap=true", "network.bias=false", "total_steps=400")
    full = train(make_tiny_config(*extra, "logging.name=full"))
    half = train(make_tiny_config(*extra, "logging.name=half", "total_steps=200"))
    resumed = resume(half.run_dir, ["total_steps=400"])
    assert resumed.updates == full.updates > half.updates > 0
    for net in ("q_net", "target_net"):
        a, b = getattr(full.agent, net).state_dict(), getattr(resumed.agent, net).state_dict()
        assert list(a) == list(b) and any(k.endswith(NAP_BUFFER) for k in a)
        for key in a:
            assert torch.equal(a[key], b[key]), (net, key)
    _hidden_norms_are_initial(resumed.agent.q_net)


def test_ppo_with_nap_projects_after_every_minibatch_step(runs_dir: Any) -> None:
    cfg = load_config(
        CONFIGS / "cartpole" / "ppo.yaml",
        [
            "total_steps=512",
            "network.nap=true",
            f"logging.dir={runs_dir}",
            "metrics.every=0",
            "metrics.ntk_every=0",
        ],
    )
    result = train(cfg, quiet=True)
    model = result.agent.model
    first = next(model.parameters())
    assert int(result.agent.optimizer.state[first]["step"]) == 2 * 20  # 2 rollouts × 20 epochs × 1 minibatch
    _hidden_norms_are_initial(model)
    assert {n.split(".")[0] for n, _ in projected_modules(model)} == {"actor", "critic"}


# ---------------------------------------------------------------------------------------------
# Config, build_learning, metrics


def test_build_learning_attaches_the_projection_only_with_nap() -> None:
    for nap in (False, True):
        cfg = load_config(None, [f"network.nap={str(nap).lower()}", "network.hidden_sizes=[16, 16]"])
        torch.manual_seed(0)
        model = make_actor_critic(CARTPOLE, gym.spaces.Discrete(2), cfg.network)
        learning = build_learning(model, cfg, total_updates=10)
        hooks = learning.optimizer._optimizer_step_post_hooks  # type: ignore[attr-defined]
        assert len(hooks) == int(nap)
        if nap:
            for _ in range(3):
                learning.optimizer.zero_grad()
                loss_of(model, torch.randn(32, 4)).backward()
                learning.optimizer.step()
            _hidden_norms_are_initial(model)


def test_nap_config_keys() -> None:
    cfg = load_config(None, ["network.nap=true", "network.name=minatar_cnn"]).network
    assert cfg.nap and cfg.bias
    with pytest.raises(ConfigError, match="layernorm"):
        load_config(None, ["network.nap=true", "network.layernorm=true"])
    for name in ("isometric_mlp", "isometric_minatar_cnn"):
        with pytest.raises(ConfigError, match="nap"):
            load_config(None, [f"network.name={name}", "network.nap=true"])


def test_metrics_and_unit_discovery_work_on_nap_networks() -> None:
    model, space = build("minatar_cnn")
    probe = PlasticityProbe(model, MetricsConfig(probe_size=32, ntk_probe_size=4))
    assert probe.unit_layers == ("conv_act", "fc_act")
    scalars = probe(observations(space, n=32), ntk=True)
    for layer in probe.unit_layers:
        assert f"plasticity/dormant_fraction/tau_0/{layer}" in scalars or any(
            k.startswith("plasticity/dormant_fraction/") and k.endswith(layer) for k in scalars
        )
    assert "plasticity/srank" in scalars and "plasticity/ntk_rank" in scalars
    assert [layer.name for layer in find_unit_layers(model, observations(space, n=4))] == ["conv", "fc"]
