"""network.input_precision: the first Linear's product in bfloat16, everything else float32."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from plasticrl.agents.actor_critic import make_actor_critic
from plasticrl.agents.networks import NetworkConfig, make_network
from plasticrl.agents.precision import ReducedPrecisionLinear, observation_dtype
from plasticrl.trainers.config import ConfigError, load_config
from torch import nn

OBS = gym.spaces.Box(0.0, 1.0, (10, 10, 10), np.float32)
ACTIONS = gym.spaces.Discrete(6)
PROTOCOL = Path(__file__).parents[2] / "configs" / "minatar" / "ppo_protocol.yaml"


def test_the_product_is_the_bfloat16_product_and_the_rest_float32() -> None:
    torch.manual_seed(0)
    layer = ReducedPrecisionLinear(50, 8, compute_dtype=torch.bfloat16)
    x = (torch.rand(16, 50) < 0.3).float()
    out = layer(x)
    assert out.dtype == torch.float32 and layer.weight.dtype == torch.float32
    by_hand = (x.bfloat16().double() @ layer.weight.bfloat16().double().T).float() + layer.bias
    torch.testing.assert_close(out, by_hand, rtol=1e-2, atol=1e-2)  # bf16 product, f32 bias
    exact = nn.functional.linear(x, layer.weight, layer.bias)
    assert 0 < (out - exact).abs().max() < 2e-2  # rounding of the weight only: 0/1 inputs are exact
    out.square().sum().backward()
    grad = layer.weight.grad.clone()
    ref = layer.weight.detach().clone().requires_grad_()
    nn.functional.linear(x, ref, layer.bias.detach()).square().sum().backward()
    torch.testing.assert_close(grad, ref.grad, rtol=2e-2, atol=2e-2)
    assert isinstance(layer, nn.Linear) and set(layer.state_dict()) == {"weight", "bias"}


def test_mlp_builds_its_first_layer_reduced_and_its_observations_may_be_stored_so() -> None:
    cfg = NetworkConfig(hidden_sizes=(64, 64), input_precision="bfloat16")
    net = make_network(OBS, ACTIONS, cfg)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [type(m) is ReducedPrecisionLinear for m in linears] == [True, False, False]
    plain = make_network(OBS, ACTIONS, NetworkConfig(hidden_sizes=(64, 64)))
    assert set(plain.state_dict()) == set(net.state_dict())  # checkpoints are interchangeable
    model = make_actor_critic(OBS, ACTIONS, cfg)
    assert observation_dtype(model) == torch.bfloat16 and observation_dtype(plain) == torch.float32
    # Storing the observations rounded changes no output: the layer rounds its input anyway.
    x = torch.rand(32, 10, 10, 10)
    policy, value = model.policy_and_value(x)
    policy_b, value_b = model.policy_and_value(x.bfloat16())
    assert torch.equal(policy, policy_b) and torch.equal(value, value_b) and policy_b.dtype == torch.float32


def test_a_bad_precision_names_the_key_and_the_choices() -> None:
    with pytest.raises(
        ConfigError, match=r"network.input_precision 'fp16'; valid: \['bfloat16', 'float32'\]"
    ):
        load_config(PROTOCOL, ["network.input_precision=fp16"])
    with pytest.raises(ConfigError, match="input_precision"):  # not an option of minatar_cnn
        load_config(PROTOCOL, ["network.name=minatar_cnn", "network.input_precision=bfloat16"])


def test_ppo_trains_the_protocol_with_bfloat16_observations(runs_dir: Path) -> None:
    from plasticrl.trainers.on_policy import build_ppo
    from plasticrl.trainers.run import resume, train

    tiny = [
        "env.num_envs=4",
        "agent.num_steps=16",
        "agent.num_minibatches=2",
        "agent.update_epochs=1",
        "agent.compile=false",
        "nonstationary.every=64",
        "eval.every=0",
        "metrics.every=2",
        "metrics.ntk_every=0",
        "checkpoint.every=64",
        "network.input_precision=bfloat16",
        f"logging.dir={runs_dir}",
    ]
    cfg = load_config(PROTOCOL, [*tiny, "total_steps=256", "logging.name=full"])
    from plasticrl.envs.vector import make_vector_env

    envs = make_vector_env(cfg.env, cfg.seed, cfg.nonstationary)
    try:
        assert build_ppo(cfg, envs).rollout.obs.dtype == torch.bfloat16
    finally:
        envs.close()
    full = train(cfg, quiet=True)
    half = train(load_config(PROTOCOL, [*tiny, "total_steps=128", "logging.name=half"]), quiet=True)
    resumed = resume(half.run_dir, ["total_steps=256"], quiet=True)
    assert full.status == resumed.status == "finished"
    for key, value in full.agent.model.state_dict().items():
        assert torch.equal(value, resumed.agent.model.state_dict()[key]), key
