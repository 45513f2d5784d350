"""The accelerator path (issue 15): rollout and update on the device, and its numbers against the CPU's.

Skipped where the device is absent (CI and the 2-core CPU have no GPU). ``PLASTICRL_TEST_DEVICE``
names the device under test (default ``cuda``); ``PLASTICRL_TEST_DEVICE=cpu pytest
tests/test_device.py`` runs the same checks on the CPU, which checks the tests themselves.
``benchmarks/device/run.sh`` runs this file, then the throughput benchmarks, on a lent GPU machine.

What must hold on the device:

* the batched MinAtar is the same game there: with the numpy draw source (the package's own
  draws, Note [Exact draws]) every game's observations, rewards and episode ends on the device
  equal the CPU's step for step, and with the default torch source every output stays on the device;
* the protocol preset (batched env and compiled loss on the device) trains and resumes bit-exactly;
* the real package's numpy envs feed a device update through the pinned staging buffer without a
  step's observations being overwritten before their upload (Note [Env device] in
  ``plasticrl.agents.rollout``), and train;
* AdamO's update (the Adam step and the decoupled isometry step) on the device equals the CPU's to
  float32 rounding; a DQN run trains there too.
"""

from __future__ import annotations

import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import PROTOCOL_PRESET as PROTOCOL
from tests.conftest import SMALL_PROTOCOL, TINY_DQN_OVERRIDES

DEVICE = torch.device(os.environ.get("PLASTICRL_TEST_DEVICE", "cuda"))


def _available(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available()
    if device.type == "mps":
        return torch.backends.mps.is_available()
    return device.type == "cpu"


pytestmark = pytest.mark.skipif(not _available(DEVICE), reason=f"no {DEVICE} device here")


def _on_device(tensor: torch.Tensor) -> bool:
    return tensor.device.type == DEVICE.type


@pytest.mark.parametrize("game", ["breakout", "asterix", "space_invaders", "freeway", "seaquest"])
def test_batched_games_on_the_device_equal_the_cpu_step_for_step(game: str) -> None:
    from plasticrl.envs.batched_minatar import BatchedMinAtar

    kwargs = {"source": "numpy", "seed": 5, "channels": 10, "tensors": True, "max_episode_steps": 150}
    here = BatchedMinAtar(game, 32, device="cpu", **kwargs)  # type: ignore[arg-type]
    there = BatchedMinAtar(game, 32, device=DEVICE, **kwargs)  # type: ignore[arg-type]
    obs_here, _ = here.reset(seed=5)
    obs_there, _ = there.reset(seed=5)
    assert _on_device(obs_there)
    torch.testing.assert_close(obs_there.cpu(), obs_here, rtol=0, atol=0)
    rng = np.random.default_rng(0)
    ends = 0
    for t in range(300):
        actions = torch.as_tensor(rng.integers(0, 6, 32))
        out_here = here.step(actions)
        out_there = there.step(actions.to(DEVICE))
        for name, a, b in zip(
            ("obs", "reward", "terminated", "truncated"), out_there[:4], out_here[:4], strict=True
        ):
            assert _on_device(a), name
            assert torch.equal(a.cpu(), b), f"{game} step {t}: {name}"
        ends += int((out_here[2] | out_here[3]).sum())
    assert ends > 0  # episodes ended (and reset) inside the comparison


def test_torch_source_keeps_every_output_on_the_device() -> None:
    from plasticrl.envs.batched_minatar import BatchedMinAtar

    env = BatchedMinAtar("space_invaders", 64, device=DEVICE, tensors=True, seed=1)
    obs, _ = env.reset(seed=1)
    for _ in range(50):
        obs, reward, terminated, truncated, info = env.step(torch.randint(0, 6, (64,), device=DEVICE))
    assert all(_on_device(x) for x in (obs, reward, terminated, truncated, info["episode"]["r"]))
    assert obs.shape == (64, 6, 10, 10) and set(obs.unique().tolist()) <= {0.0, 1.0}


def test_protocol_preset_trains_on_the_device_and_resumes_bit_exactly(tmp_path: Path) -> None:
    import plasticrl
    from plasticrl.trainers.run import resume

    where = {"device": str(DEVICE), "env__kwargs__device": str(DEVICE), "logging__dir": str(tmp_path)}
    straight = plasticrl.train(
        str(PROTOCOL), total_steps=1024, logging__name="straight", **SMALL_PROTOCOL, **where
    )
    half = plasticrl.train(str(PROTOCOL), total_steps=512, logging__name="half", **SMALL_PROTOCOL, **where)
    resumed = resume(half.run_dir, ["total_steps=1024"], quiet=True)
    assert straight.status == resumed.status == "finished"
    assert resumed.global_step == straight.global_step == 1024
    a, b = straight.agent.model.state_dict(), resumed.agent.model.state_dict()
    assert all(_on_device(v) for v in a.values())
    assert all(torch.isfinite(v).all() for v in a.values())
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_pinned_staging_keeps_every_step_of_numpy_observations() -> None:
    """Each step's numpy observations reach the device intact, though the staging buffer is reused."""
    from plasticrl.agents.rollout import Rollout

    steps, envs = 32, 256
    space = gym.spaces.Box(0.0, 1.0, (10, 10, 10), np.float32)
    storage = Rollout(steps, envs, space, gym.spaces.Discrete(6), DEVICE)
    rng = np.random.default_rng(0)
    sent = []
    for t in range(steps):
        obs = (rng.random((envs, 10, 10, 10)) < 0.05).astype(np.float32)
        sent.append(obs)
        slot = storage.put_obs(t, obs)
        # what acting does between two uploads: a device op on the slot, its result back to the host
        slot.flatten(1).sum(1).argmax().cpu()
    np.testing.assert_array_equal(storage.obs.cpu().numpy(), np.stack(sent))


def test_package_envs_feed_a_device_update(tmp_path: Path) -> None:
    import plasticrl

    result = plasticrl.train(
        str(PROTOCOL),
        total_steps=512,
        device=str(DEVICE),
        env__vector="sync",
        env__kwargs={"sticky_action_prob": 0.1, "difficulty_ramping": True},
        agent__compile=False,
        logging__dir=str(tmp_path),
        **SMALL_PROTOCOL,
    )
    assert result.status == "finished" and result.global_step == 512
    assert all(_on_device(p) and torch.isfinite(p).all() for p in result.agent.model.parameters())


def test_adamo_on_the_device_equals_the_cpu() -> None:
    from plasticrl.plasticity.adamo import AdamO

    def net() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 6))

    here, there = net(), net().to(DEVICE)
    opt_here = AdamO(here.parameters(), lr=1e-3, iso_coef=0.25)
    opt_there = AdamO(there.parameters(), lr=1e-3, iso_coef=0.25)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        x, y = torch.randn(128, 40, generator=g), torch.randn(128, 6, generator=g)
        for model, opt, device in ((here, opt_here, "cpu"), (there, opt_there, DEVICE)):
            opt.zero_grad()
            nn.functional.mse_loss(model(x.to(device)), y.to(device)).backward()
            opt.step()
    for a, b in zip(there.parameters(), here.parameters(), strict=True):
        torch.testing.assert_close(a.detach().cpu(), b.detach(), rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(here.parameters(), net().parameters(), strict=True))


def test_dqn_trains_on_the_device(tmp_path: Path) -> None:
    from plasticrl.trainers.config import load_config
    from plasticrl.trainers.run import train

    cfg = load_config(None, [*TINY_DQN_OVERRIDES, f"logging.dir={tmp_path}", f"device={DEVICE}"])
    result = train(cfg, quiet=True)
    assert result.status == "finished"
    assert all(_on_device(p) and torch.isfinite(p).all() for p in result.agent.q_net.parameters())
