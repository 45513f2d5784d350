"""Shared fixtures: a temporary runs folder, a tiny fast DQN config, registry and global-state guards."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from plasticrl.plasticity.regularizers import REGULARIZERS, RegularizerConfig
from plasticrl.trainers.config import ExperimentConfig, load_config

TINY_DQN_OVERRIDES: tuple[str, ...] = (
    "env.id=CartPole-v1",
    "total_steps=600",
    "agent.learning_starts=100",
    "agent.buffer_size=1000",
    "agent.batch_size=16",
    "agent.target_update_every=100",
    "agent.eps_decay_steps=300",
    "network.hidden_sizes=[32, 32]",
    "logging.every=100",
    "logging.progress=false",
    "checkpoint.every=0",
)
"""A DQN run on CartPole that takes well under a second: ~500 updates of a 32-32 MLP."""

TINY_MINATAR_OVERRIDES: tuple[str, ...] = (
    "env.id=breakout",
    "network.name=minatar_cnn",
    "network.channels=4",
    "network.hidden_sizes=[16]",
)
"""Added to TINY_DQN_OVERRIDES: MinAtar Breakout with a very small reference CNN."""

PROTOCOL_PRESET = Path(__file__).resolve().parents[1] / "configs" / "minatar" / "ppo_protocol.yaml"
SMALL_PROTOCOL: dict[str, Any] = {
    "env__num_envs": 16,
    "agent__num_steps": 16,
    "agent__num_minibatches": 2,
    "nonstationary__every": 256,
    "eval__every": 0,
    "metrics__every": 0,
    "metrics__ntk_every": 0,
    "quiet": True,
}
"""``plasticrl.train`` keywords: the protocol preset (PROTOCOL_PRESET) at toy size, 16 envs x 16
steps, a task change every 256 steps, no evaluation or metrics."""


@pytest.fixture(autouse=True)
def _restore_global_state() -> Iterator[None]:
    """The trainer sets torch's threads and determinism flag and seeds the global generators; undo that."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    random.setstate(py_state)
    np.random.set_state(np_state)
    torch.set_rng_state(torch_state)


PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs" / "minatar"


def run_minatar_preset(
    method: str, runs_dir: Path, prefix: str, extra: tuple[str, ...] = ()
) -> tuple[Any, dict[str, list[float]]]:
    """Train ``configs/minatar/dqn_permuted_<method>.yaml`` on a tiny MinAtar net.

    Returns the trained agent and the values of every logged scalar whose tag starts with
    ``prefix`` (e.g. ``plasticity/`` or ``losses/reg_``).
    """
    from plasticrl.trainers.experiments.plot import read_scalars
    from plasticrl.trainers.run import train

    overrides = [*TINY_DQN_OVERRIDES, *TINY_MINATAR_OVERRIDES, f"logging.dir={runs_dir}", *extra]
    result = train(load_config(PRESETS_DIR / f"dqn_permuted_{method}.yaml", overrides), quiet=True)
    scalars = read_scalars(result.run_dir)
    return result.agent, {tag: values for tag, (_, values) in scalars.items() if tag.startswith(prefix)}


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """An empty folder for run folders (``logging.dir``)."""
    path = tmp_path / "runs"
    path.mkdir()
    return path


@pytest.fixture
def tiny_overrides(runs_dir: Path) -> list[str]:
    """Overrides of the tiny CartPole DQN config, writing into ``runs_dir``."""
    return [*TINY_DQN_OVERRIDES, f"logging.dir={runs_dir}"]


@pytest.fixture
def tiny_config(tiny_overrides: list[str]) -> ExperimentConfig:
    """The tiny CartPole DQN config (600 steps, learning from step 100)."""
    return load_config(None, tiny_overrides)


@pytest.fixture
def make_tiny_config(tiny_overrides: list[str]) -> Callable[..., ExperimentConfig]:
    """``make_tiny_config("seed=3", ...)``: the tiny config with extra overrides."""

    def make(*extra: str) -> ExperimentConfig:
        return load_config(None, [*tiny_overrides, *extra])

    return make


class ConstantPenalty:
    """A stub regularizer: returns ``values[i]`` on its i-th call (the last value afterwards)."""

    def __init__(self, model: torch.nn.Module, values: list[float], name: str) -> None:
        self.name = name
        self.values = values
        self.calls = 0
        # Depend on a parameter so the penalty is part of the graph, with zero gradient.
        self.param = next(model.parameters())

    def __call__(self) -> torch.Tensor:
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return self.param.sum() * 0.0 + value

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calls = int(state["calls"])


@pytest.fixture
def register_regularizer() -> Iterator[Callable[[str, Callable[..., Any]], None]]:
    """``register_regularizer(name, factory)``: registered for this test only, then unregistered."""
    added: list[str] = []

    def register(name: str, factory: Callable[..., Any]) -> None:
        REGULARIZERS.register(name)(factory)
        added.append(name)

    yield register
    for name in added:
        REGULARIZERS.unregister(name)


@pytest.fixture
def nan_regularizer(register_regularizer: Callable[[str, Callable[..., Any]], None]) -> str:
    """A regularizer ``test_nan`` that returns 0 for ``options.good_calls`` calls and NaN afterwards."""

    def factory(
        model: torch.nn.Module, groups: list[dict[str, Any]], cfg: RegularizerConfig
    ) -> ConstantPenalty:
        good = int(cfg.options.get("good_calls", 0))
        return ConstantPenalty(model, [0.0] * good + [float("nan")], "test_nan")

    register_regularizer("test_nan", factory)
    return "test_nan"
