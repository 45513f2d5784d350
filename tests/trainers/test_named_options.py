"""The name picks the options: a section's keys are those of the component its ``name`` selects."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from plasticrl.agents.networks import NETWORKS
from plasticrl.agents.networks import applicable_keys as network_keys
from plasticrl.plasticity.optimizers import OPTIMIZERS, OptimizerConfig
from plasticrl.plasticity.optimizers import applicable_keys as optimizer_keys
from plasticrl.trainers.config import (
    ConfigError,
    applicable_only,
    config_to_dict,
    describe_config,
    load_config,
    parse_override,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("overrides", "key", "component"),
    [
        (["optimizer.name=adam", "optimizer.momentum=0.9"], "optimizer.momentum", "optimizer 'adam'"),
        (["network.name=mlp", "network.channels=16"], "network.channels", "network 'mlp'"),
        (["optimizer.name=sgd", "optimizer.iso_coef=1"], "optimizer.iso_coef", "optimizer 'sgd'"),
        (["network.name=isometric_mlp", "network.activation=crelu"], "network.activation", "network"),
    ],
)
def test_a_key_that_does_not_apply_is_an_error_naming_key_component_and_valid_keys(
    overrides: list[str], key: str, component: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert key in message and component in message and "its keys: [" in message
    assert f"override {overrides[1]!r}" in message  # blamed on the override that set it


def test_the_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "plasticrl.trainers.cli", "train", str(REPO / "configs/cartpole/dqn.yaml")]
        + ["optimizer.name=adam", "optimizer.momentum=0.9", f"logging.dir={tmp_path}"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "optimizer.momentum does not apply to optimizer 'adam'" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_every_registered_entry_carries_options_that_are_section_keys() -> None:
    section = {f.name for f in dataclasses.fields(OptimizerConfig)}
    for name in OPTIMIZERS.names():
        options = OPTIMIZERS.options(name)
        assert options is not None, name
        assert {f.name for f in dataclasses.fields(options)} <= section
    for name in NETWORKS.names():
        assert NETWORKS.options(name) is not None, name
    assert "iso_coef" in optimizer_keys("adamo") and "iso_coef" not in optimizer_keys("adam")
    assert "momentum" in optimizer_keys("sgd") and "betas" not in optimizer_keys("sgd")
    assert "kwargs" in optimizer_keys("torch.optim:Adagrad")
    assert "channels" in network_keys("minatar_cnn") and "channels" not in network_keys("mlp")


def test_config_shows_and_saves_only_the_keys_that_apply() -> None:
    cfg = load_config(None, ["optimizer.name=sgd", "optimizer.momentum=0.5"])
    saved = config_to_dict(cfg)
    assert set(saved["optimizer"]) == set(optimizer_keys("sgd"))
    assert saved["optimizer"]["momentum"] == 0.5
    keys = {k for k, _, _ in describe_config(cfg)}
    assert "optimizer.momentum" in keys and "optimizer.betas" not in keys
    assert "network.channels" not in keys and "network.activation" in keys


def test_changing_the_name_over_a_base_drops_the_keys_of_the_old_component() -> None:
    """The Breakout preset is RMSprop (alpha 0.95, centred); switching to adam starts from adam."""
    cfg = load_config(REPO / "configs/minatar/dqn_breakout.yaml", ["optimizer.name=adam"])
    assert cfg.optimizer.name == "adam"
    assert cfg.optimizer.alpha == OptimizerConfig().alpha and cfg.optimizer.centered is False
    assert cfg.optimizer.lr == 2.5e-4  # a common key carries over
    # A preset over a base behaves alike (dqn_permuted_adam.yaml over the RMSprop dqn_permuted.yaml).
    adam = load_config(REPO / "configs/minatar/dqn_permuted_adam.yaml")
    assert adam.optimizer.alpha == OptimizerConfig().alpha and adam.optimizer.centered is False


def test_old_checkpoint_configs_with_every_key_still_load() -> None:
    old = config_to_dict(load_config(None, ["optimizer.name=adam"]))
    old["optimizer"] |= {"momentum": 0.0, "iso_coef": 0.01, "alpha": 0.99}  # as written before
    old["network"] |= {"channels": 16, "group_size": 2}
    cleaned = applicable_only(old)
    assert set(cleaned["optimizer"]) == set(optimizer_keys("adam"))
    assert "channels" not in cleaned["network"]


@pytest.mark.parametrize(("text", "value"), [("1e-3", 1e-3), ("-2.5E+2", -250.0), ("1e5", 1e5), ("3", 3)])
def test_yaml_reads_exponent_floats_as_numbers(text: str, value: float) -> None:
    parsed = parse_override(f"optimizer.lr={text}")[1]
    assert parsed == value and not isinstance(parsed, str)
    assert load_config(None, ["total_steps=1e5"]).total_steps == 100_000


def test_nonstationary_kind_picks_its_keys_and_options() -> None:
    with pytest.raises(ConfigError, match=r"nonstationary.every does not apply to nonstationary.kind null"):
        load_config(None, ["nonstationary.every=1000"])
    cycle = REPO / "configs/minatar/dqn_cycle.yaml"
    base = load_config(cycle)
    assert base.nonstationary.kind == "switch" and base.nonstationary.options
    # A higher layer that changes the kind drops the old kind's options (not its schedule).
    cfg = load_config(cycle, ["nonstationary.kind=[switch, permute_obs]"])
    assert cfg.nonstationary.options == {} and cfg.nonstationary.every == base.nonstationary.every
    rows = {key: doc for key, _, doc in describe_config(cfg)}
    assert "nonstationary.options.switch.order" in rows and "nonstationary.options.permute_obs.mode" in rows
    assert all(rows[k] for k in rows if k.startswith("nonstationary.options."))
    rows = {key for key, _, _ in describe_config(load_config(None))}
    assert {k for k in rows if k.startswith("nonstationary.")} == {"nonstationary.kind"}
    with pytest.raises(ConfigError, match=r"valid keys of change kind 'switch': \['first_cycle', 'order'\]"):
        load_config(cycle, ["nonstationary.options.ordr=cycle"])


def test_the_metrics_isometry_target_follows_the_optimizers_unless_set() -> None:
    cfg = load_config(None, ["optimizer.name=adamo", "optimizer.iso_target=2.0"])
    assert cfg.metrics.iso_target == 2.0  # the gap is measured against the target AdamO pulls to
    cfg = load_config(None, ["optimizer.name=adamo", "optimizer.iso_target=2.0", "metrics.iso_target=1.0"])
    assert cfg.metrics.iso_target == 1.0
    assert load_config(None, ["optimizer.name=adam"]).metrics.iso_target == 1.0
