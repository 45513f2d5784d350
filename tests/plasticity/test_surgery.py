"""Weight surgery: exact row/column and optimizer-state slices, init distributions, structure discovery."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import pytest
import torch
from plasticrl.agents.actor_critic import make_actor_critic
from plasticrl.agents.networks import NetworkConfig, make_network
from plasticrl.plasticity.adamo import AdamO
from plasticrl.plasticity.layers import CReLU, orthogonal_
from plasticrl.plasticity.optimizers import state_keys_of
from plasticrl.plasticity.rmsprop import RMSprop
from plasticrl.plasticity.surgery import (
    check_optimizer,
    init_sample,
    reinit_units_,
    reset_state_,
    unit_columns,
)
from plasticrl.plasticity.units import find_unit_layers
from torch import Tensor, nn

OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam_amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "adamo": lambda p: AdamO(p, lr=1e-2, iso_coef=1e-2),
    "adamo_amsgrad": lambda p: AdamO(p, lr=1e-2, iso_coef=1e-2, amsgrad=True),
    "rmsprop": lambda p: RMSprop(p, lr=1e-2, centered=True, momentum=0.9),
    "torch_rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-2, centered=True, momentum=0.9),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9),
}


class Chain(nn.Module):
    """producer (5 units) → activation → (flatten) → consumer → head: the shapes surgery must handle."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.act: nn.Module = CReLU() if kind.endswith("crelu") else nn.ReLU()
        copies = 2 if kind.endswith("crelu") else 1
        if kind.startswith("linear_linear"):
            self.producer: nn.Module = nn.Linear(4, 5)
            self.consumer: nn.Module = nn.Linear(5 * copies, 4)
        elif kind.startswith("conv_conv"):
            self.producer = nn.Conv2d(2, 5, 3, padding=1)
            self.consumer = nn.Conv2d(5 * copies, 3, 3)
        else:  # conv_linear: channel c → columns c·16 … c·16 + 15 (4×4 maps)
            self.producer = nn.Conv2d(2, 5, 3)
            self.consumer = nn.Linear(5 * copies * 16, 4)
        self.head = nn.Linear(4 if "linear" in kind.split("_")[1] else 3 * 4 * 4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.producer(x))
        if self.kind.startswith("conv_linear"):
            h = h.flatten(1)
        return self.head(torch.relu(self.consumer(h)).flatten(1))

    def example(self, n: int = 8) -> Tensor:
        shape = (4,) if self.kind.startswith("linear") else (2, 6, 6)
        return torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))


KINDS = ["linear_linear", "conv_conv", "conv_linear", "linear_linear_crelu", "conv_linear_crelu"]


def trained(
    kind: str, make_opt: Callable[[Any], torch.optim.Optimizer]
) -> tuple[Chain, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Chain(kind)
    opt = make_opt(model.parameters())
    x = model.example()
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return model, opt


def clone_state(opt: torch.optim.Optimizer) -> dict[int, dict[str, Any]]:
    return {
        id(p): {k: v.clone() if isinstance(v, Tensor) else v for k, v in s.items()}
        for p, s in opt.state.items()
    }


def only_changed_at(after: Tensor, before: Tensor, mask: Tensor) -> None:
    """``after`` equals ``before`` bitwise outside ``mask``."""
    assert torch.equal(after[~mask], before[~mask])


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("kind", KINDS)
def test_reinit_units_edits_exactly_the_slices(kind: str, opt_name: str) -> None:
    model, opt = trained(kind, OPTIMIZERS[opt_name])
    copies = 2 if kind.endswith("crelu") else 1
    units = torch.tensor([1, 3])
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids_before = [id(p) for p in model.parameters()]
    state_before = clone_state(opt)
    gen = torch.Generator().manual_seed(7)
    expected_rows = init_sample(model.producer, generator=torch.Generator().manual_seed(7))["weight"][units]

    reinit_units_(model.producer, units, [model.consumer], opt, generator=gen, copies=copies)

    # expected masks: producer rows / bias entries, consumer columns (or input channels)
    row = torch.zeros(5, dtype=torch.bool)
    row[units] = True
    w_in_mask = row.view(-1, *([1] * (model.producer.weight.dim() - 1))).expand_as(model.producer.weight)
    cols = unit_columns(units, 5, model.consumer, copies=copies)
    col = torch.zeros(model.consumer.weight.shape[1], dtype=torch.bool)
    col[cols] = True
    w_out_mask = col.view(1, -1, *([1] * (model.consumer.weight.dim() - 2))).expand_as(model.consumer.weight)
    if kind.startswith("conv_linear"):  # channel-major blocks of 16 columns, copy-major under CReLU
        blocks = [r * 5 + u for r in range(copies) for u in (1, 3)]
        assert cols.tolist() == sorted(b * 16 + s for b in blocks for s in range(16))
    masks = {
        "producer.weight": w_in_mask,
        "producer.bias": row,
        "consumer.weight": w_out_mask,
    }
    after = dict(model.named_parameters())
    assert [id(p) for p in model.parameters()] == ids_before  # edited in place, never replaced
    assert torch.equal(after["producer.weight"][units], expected_rows)  # the layer's own init draw
    assert not torch.equal(after["producer.weight"][units], params_before["producer.weight"][units])
    assert torch.all(after["producer.bias"][units] == 0)
    assert torch.all(after["consumer.weight"][w_out_mask] == 0)
    for name, before in params_before.items():
        mask = masks.get(name, torch.zeros_like(before, dtype=torch.bool))
        only_changed_at(after[name].detach(), before, mask)
    # optimizer state: exactly the same slices zeroed, counters untouched, nothing else changed
    declared = state_keys_of(opt)  # the keys the optimizer's registry entry declares
    assert declared is not None
    keys = declared.tensors
    for name, p in model.named_parameters():
        mask = masks.get(name, torch.zeros_like(p, dtype=torch.bool))
        for key, value in opt.state[p].items():
            old = state_before[id(p)][key]
            if key not in keys or value is None:
                assert torch.equal(value, old) if isinstance(value, Tensor) else value == old, key
                continue
            assert torch.all(value[mask] == 0), (name, key)
            only_changed_at(value, old, mask)
            if mask.any():
                assert old[mask].abs().sum() > 0  # the zeroed slice held something before


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_edited_parameters_still_train(opt_name: str) -> None:
    model, opt = trained("conv_linear", OPTIMIZERS[opt_name])
    units = torch.tensor([0, 4])
    reinit_units_(model.producer, units, [model.consumer], opt, generator=torch.Generator().manual_seed(0))
    cols = unit_columns(units, 5, model.consumer)
    x = model.example()

    def step() -> None:
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step()  # the recycled units' outgoing columns (zero) get a gradient at once
    grouped = {id(p) for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert id(p) in grouped
        assert not torch.equal(p, before[name]), name
    for block in model.consumer.weight[:, cols].detach().reshape(-1, 2, 16).unbind(1):  # one per unit
        assert block.abs().sum() > 0
    rows = model.producer.weight[units].detach().clone()
    step()  # ... and their incoming rows once those columns are non-zero
    for new, old in zip(model.producer.weight[units], rows, strict=True):
        assert not torch.equal(new, old)


def test_fresh_incoming_weights_do_not_change_the_output() -> None:
    # The output after the surgery equals that of the old network with the units' outgoing
    # weights zeroed: the fresh incoming weights are invisible until the next update (so a
    # dormant unit's reset leaves the output as it was; tests/plasticity/test_interventions.py).
    for kind in KINDS:
        model, opt = trained(kind, OPTIMIZERS["adam"])
        x = model.example()
        copies = 2 if kind.endswith("crelu") else 1
        units = torch.tensor([0, 2, 4])
        with torch.no_grad():
            model.consumer.weight[:, unit_columns(units, 5, model.consumer, copies=copies)] = 0.0
            before = model(x)
        reinit_units_(
            model.producer, units, [model.consumer], opt, generator=torch.Generator(), copies=copies
        )
        with torch.no_grad():
            assert torch.equal(model(x), before), kind


def test_norm_parameters_of_recycled_units_are_reset() -> None:
    torch.manual_seed(0)
    producer, norm, consumer = nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)
    opt = torch.optim.Adam([*producer.parameters(), *norm.parameters(), *consumer.parameters()], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        consumer(torch.relu(norm(producer(torch.randn(8, 3))))).square().mean().backward()
        opt.step()
    gain, bias = norm.weight.detach().clone(), norm.bias.detach().clone()
    reinit_units_(producer, [2], [consumer], opt, generator=torch.Generator(), norms=[norm])
    assert norm.weight[2] == 1 and norm.bias[2] == 0
    keep = torch.tensor([0, 1, 3])
    assert torch.equal(norm.weight[keep], gain[keep]) and torch.equal(norm.bias[keep], bias[keep])
    assert opt.state[norm.weight]["exp_avg"][2] == 0 and torch.all(
        opt.state[norm.weight]["exp_avg"][keep] != 0
    )


# ----------------------------------------------------------------------------- errors


def test_unsupported_optimizer_is_an_error_naming_it() -> None:
    model = Chain("linear_linear")
    adagrad = torch.optim.Adagrad(model.parameters())
    with pytest.raises(
        ValueError, match=r"torch\.optim\.adagrad\.Adagrad is not supported.*supported: .*Adam"
    ):
        reinit_units_(model.producer, [0], [model.consumer], adagrad, generator=torch.Generator())

    class MyAdam(torch.optim.Adam):
        pass

    with pytest.raises(ValueError, match="MyAdam is not supported"):
        check_optimizer(MyAdam(model.parameters()))
    assert torch.equal(model.consumer.weight, model.consumer.weight)  # (nothing edited above)


def test_unknown_state_key_and_foreign_parameter_are_errors() -> None:
    model, opt = trained("linear_linear", OPTIMIZERS["adam"])
    opt.state[model.producer.weight]["mystery"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unknown to weight surgery"):
        check_optimizer(opt)
    del opt.state[model.producer.weight]["mystery"]
    stranger = nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="not in the optimizer"):
        reset_state_(opt, stranger, (0,))


def test_unsupported_optimizer_leaves_weights_untouched() -> None:
    model = Chain("linear_linear")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError):
        reinit_units_(
            model.producer,
            [0],
            [model.consumer],
            torch.optim.Adagrad(model.parameters()),
            generator=torch.Generator(),
        )
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_parametrized_layers_are_refused() -> None:
    model = Chain("linear_linear")
    orthogonal_(model.producer)
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="parametrized .* not meaningful"):
        reinit_units_(model.producer, [0], [model.consumer], opt, generator=torch.Generator())


def test_units_out_of_range_and_bad_fan_in() -> None:
    model, opt = trained("linear_linear", OPTIMIZERS["adam"])
    with pytest.raises(ValueError, match="out of range"):
        reinit_units_(model.producer, [6], [model.consumer], opt, generator=torch.Generator())
    with pytest.raises(ValueError, match="cannot read 2 × 4 units"):
        unit_columns(torch.tensor([0]), 4, nn.Linear(6, 1), copies=2)
    with pytest.raises(ValueError, match="cannot read"):
        unit_columns(torch.tensor([0]), 4, nn.Conv2d(5, 1, 1))


# ----------------------------------------------------------------------------- init distributions


@pytest.mark.parametrize("layer", [nn.Linear(7, 3), nn.Conv2d(2, 4, 3), nn.Conv1d(3, 2, 5)])
def test_default_init_sample_is_the_layers_own_reset_parameters(layer: nn.Module) -> None:
    torch.manual_seed(123)
    layer.reset_parameters()
    fresh = init_sample(layer, generator=torch.Generator().manual_seed(123))
    assert torch.equal(fresh["weight"], layer.weight) and torch.equal(fresh["bias"], layer.bias)
    bound = 1 / math.sqrt(layer.weight[0].numel())
    assert fresh["weight"].abs().max() <= bound and fresh["bias"].abs().max() <= bound


def test_orthogonal_and_fallback_init_samples() -> None:
    fresh = init_sample(
        nn.Linear(6, 4), generator=torch.Generator().manual_seed(0), init="orthogonal", gain=2.0
    )
    w = fresh["weight"]
    torch.testing.assert_close(w @ w.T, 4.0 * torch.eye(4), atol=1e-5, rtol=0)
    assert torch.all(fresh["bias"] == 0)
    norm = nn.LayerNorm(3)
    with torch.no_grad():
        norm.weight.fill_(5.0)
    state = torch.get_rng_state()
    fresh = init_sample(norm, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is untouched
    assert torch.equal(fresh["weight"], torch.ones(3)) and torch.equal(fresh["bias"], torch.zeros(3))
    assert norm.weight[0] == 5.0
    with pytest.raises(ValueError, match="unknown init"):
        init_sample(nn.Linear(2, 2), generator=torch.Generator(), init="xavier")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- structure discovery


def layers_of(
    net: nn.Module, shape: tuple[int, ...]
) -> list[tuple[str, tuple[str, ...], tuple[str, ...], int, int]]:
    found = find_unit_layers(net, torch.zeros(1, *shape))
    return [(u.name, u.consumer_names, u.norm_names, u.n_units, u.copies) for u in found]


@pytest.mark.parametrize("activation", ["relu", "crelu"])
@pytest.mark.parametrize("layernorm", [False, True])
def test_standard_networks_are_discovered(activation: str, layernorm: bool) -> None:
    cfg = NetworkConfig(hidden_sizes=(8, 6), channels=4, activation=activation, layernorm=layernorm)
    copies = 2 if activation == "crelu" else 1
    mlp = make_network(gym.spaces.Box(0, 1, (4,)), gym.spaces.Discrete(3), cfg)
    if layernorm:
        assert layers_of(mlp, (4,)) == [("1", ("4",), ("2",), 8, copies), ("4", ("7",), ("5",), 6, copies)]
    else:
        assert layers_of(mlp, (4,)) == [("1", ("3",), (), 8, copies), ("3", ("5",), (), 6, copies)]
    cnn_cfg = dataclasses.replace(cfg, name="minatar_cnn")
    cnn = make_network(gym.spaces.Box(0, 1, (3, 6, 6)), gym.spaces.Discrete(3), cnn_cfg)
    norms = (("conv_norm",), ("fc_norm",)) if layernorm else ((), ())
    assert layers_of(cnn, (3, 6, 6)) == [
        ("conv", ("fc",), norms[0], 4, copies),
        ("fc", ("head",), norms[1], 6, copies),
    ]


def test_actor_critic_layers_shared_and_separate() -> None:
    obs, act = gym.spaces.Box(0, 1, (4,)), gym.spaces.Discrete(2)
    cfg = NetworkConfig(hidden_sizes=(8, 8))
    separate = make_actor_critic(obs, act, cfg)
    assert [u[:2] for u in layers_of(separate, (4,))] == [
        ("actor.1", ("actor.3",)),
        ("actor.3", ("actor.5",)),
        ("critic.1", ("critic.3",)),
        ("critic.3", ("critic.5",)),
    ]
    shared = make_actor_critic(obs, act, cfg, shared_trunk=True)
    assert [u[:2] for u in layers_of(shared, (4,))] == [
        ("trunk.1", ("trunk.3",)),
        ("trunk.3", ("policy_head", "value_head")),
    ]


class ChannelLast(nn.Module):
    """A conv whose output is flattened channel-last: not the layout surgery assumes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 3, 1), nn.Linear(3 * 4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.conv(x)).permute(0, 2, 3, 1).flatten(1))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        return self.head(h + torch.relu(self.b(h)))


class Exposed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(3, 2), nn.Linear(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.a(x))
        return self.head(h) + h


def test_layouts_surgery_cannot_describe_are_refused() -> None:
    with pytest.raises(ValueError, match="channel-major block"):
        find_unit_layers(ChannelLast(), torch.randn(2, 1, 2, 2))
    with pytest.raises(ValueError, match=r"reads \['a', 'b'\] together"):
        find_unit_layers(Residual(), torch.randn(2, 3))
    with pytest.raises(ValueError, match="reach the output"):
        find_unit_layers(Exposed(), torch.randn(2, 3))


def test_discovery_leaves_the_model_as_it_was() -> None:
    net = make_network(gym.spaces.Box(0, 1, (4,)), gym.spaces.Discrete(2), NetworkConfig(hidden_sizes=(8,)))
    net.train()
    before = [p.detach().clone() for p in net.parameters()]
    find_unit_layers(net, torch.randn(3, 4))
    assert net.training and all(m.training for m in net.modules())
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before, strict=True))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
