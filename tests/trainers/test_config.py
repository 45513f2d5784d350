"""The config schema, strict YAML loading, dotted overrides and self-description (trainers/config.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from plasticrl.agents.dqn import DQNConfig
from plasticrl.agents.networks import NetworkConfig
from plasticrl.agents.networks import applicable_keys as network_keys
from plasticrl.envs.make import EnvConfig, NonStationaryConfig, nonstationary_keys
from plasticrl.plasticity.optimizers import OptimizerConfig
from plasticrl.plasticity.optimizers import applicable_keys as optimizer_keys
from plasticrl.plasticity.regularizers import RegularizerConfig
from plasticrl.trainers.config import (
    CheckpointConfig,
    ConfigError,
    ExperimentConfig,
    LoggingConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    describe_config,
    load_config,
    parse_override,
    yaml_load,
)

REPO = Path(__file__).resolve().parents[2]
# Experiment presets; configs/sweeps/ and configs/studies/ hold sweep files (tests/trainers/test_sweep.py).
PRESETS = sorted(
    p for p in (REPO / "configs").glob("**/*.yaml") if p.parent.name not in ("sweeps", "studies")
)


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# Defaults and presets


def test_defaults_build_the_documented_sections() -> None:
    cfg = load_config(None)
    assert cfg == ExperimentConfig()
    assert isinstance(cfg.agent, DQNConfig) and cfg.agent.name == "dqn"
    assert cfg.env == EnvConfig() and cfg.env.id == "CartPole-v1"
    assert cfg.network == NetworkConfig() and cfg.optimizer == OptimizerConfig()
    assert cfg.logging == LoggingConfig() and cfg.checkpoint == CheckpointConfig()
    assert cfg.regularizers == ()
    assert config_from_dict({}) == cfg


def test_there_are_presets() -> None:
    assert PRESETS, "configs/**/*.yaml is empty"


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_preset_loads_and_keeps_its_values(preset: Path) -> None:
    cfg = load_config(preset)
    data = yaml_load(preset.read_text()) or {}
    data.pop("base", None)  # a preset may start from another; its own keys win
    resolved = config_to_dict(cfg)

    def check(expected: object, got: object, key: str) -> None:
        if isinstance(expected, dict) and key not in ("env.kwargs", "optimizer.kwargs"):
            for k, v in expected.items():
                check(v, got[k], f"{key}.{k}" if key else k)  # type: ignore[index]
        elif isinstance(expected, str) and isinstance(got, float):
            assert got == float(expected), key  # YAML's 1e-3 is a string
        else:
            assert got == expected, key

    check(data, resolved, "")


def test_cartpole_preset_values() -> None:
    cfg = load_config(REPO / "configs" / "cartpole" / "dqn.yaml")
    assert cfg.env.id == "CartPole-v1"
    assert cfg.network.hidden_sizes == (256, 256)
    assert cfg.optimizer.lr == pytest.approx(5e-4)  # written 5.0e-4: a float, not YAML's string
    assert cfg.agent.double_dqn is True and cfg.agent.loss == "mse"
    assert cfg.optimizer.lr_schedule == "linear"
    assert cfg.agent.tau == pytest.approx(0.005) and cfg.agent.target_update_every == 1


# ---------------------------------------------------------------------------------------------
# Unknown keys


def test_unknown_top_level_key_names_key_file_and_close_match(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", "sed: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "'sed'" in msg
    assert "did you mean 'seed'" in msg


def test_unknown_nested_key_names_dotted_key_file_and_close_match(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", "agent:\n  gama: 0.9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "'agent.gama'" in msg
    assert "'gamma'" in msg
    assert "valid keys here" in msg and "learning_starts" in msg


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'network\.zzzzzz';.*valid keys here: \[") as info:
        config_from_dict({"network": {"zzzzzz": 1}})
    assert "did you mean" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Types


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        ({"seed": "ten"}, "seed", "expected an integer"),  # string for int
        ({"total_steps": 1.5}, "total_steps", "expected an integer"),  # non-integral float for int
        ({"seed": True}, "seed", "expected an integer"),  # bool is not an int
        ({"optimizer": {"lr": True}}, "optimizer.lr", "expected a number"),  # bool for float
        ({"optimizer": {"lr": "fast"}}, "optimizer.lr", "expected a number"),
        ({"env": {"id": ["CartPole-v1"]}}, "env.id", "expected a string"),  # list for str
        ({"agent": {"double_dqn": "yes"}}, "agent.double_dqn", "expected true or false"),
        ({"network": {"hidden_sizes": 64}}, "network.hidden_sizes", "expected a list"),
        ({"network": {"hidden_sizes": [64, "wide"]}}, "network.hidden_sizes[1]", "expected an integer"),
        ({"optimizer": {"betas": [0.9]}}, "optimizer.betas", "expected 2 values"),
        ({"env": {"kwargs": 3}}, "env.kwargs", "expected a mapping"),
        ({"env": 3}, "env", "expected a mapping"),
        ({"agent": {"max_grad_norm": "big"}}, "agent.max_grad_norm", "expected a number"),
        ({"torch_threads": "many"}, "torch_threads", "expected an integer"),
        ({"regularizers": {"name": "x", "coef": 1}}, "regularizers", "expected a list"),
    ],
)
def test_wrong_types_name_the_key(data: dict, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    msg = str(info.value)
    assert msg.startswith(f"{key}: ") or f"{key}:" in msg, msg
    assert expected in msg


def test_yaml_exponent_strings_are_numbers(tmp_path: Path) -> None:
    # PyYAML reads 1e-3 and 1e5 (no dot) as strings; the loader reads them as numbers.
    assert yaml.safe_load("x: 1e-3")["x"] == "1e-3"
    path = write_yaml(tmp_path / "exp.yaml", "total_steps: 1e5\noptimizer:\n  lr: 1e-3\n  eps: 1e-8\n")
    cfg = load_config(path)
    assert cfg.optimizer.lr == 1e-3 and isinstance(cfg.optimizer.lr, float)
    assert cfg.optimizer.eps == 1e-8
    assert cfg.total_steps == 100_000 and isinstance(cfg.total_steps, int)


def test_yaml_1_2_booleans(tmp_path: Path) -> None:
    # only true/false are booleans: `yes` is not a bool, and an `on:` key stays the string "on"
    assert yaml_load("a: yes\nb: on\nc: true\non: 1\n") == {"a": "yes", "b": "on", "c": True, "on": 1}
    path = write_yaml(tmp_path / "yes.yaml", "agent:\n  double_dqn: yes\n")
    with pytest.raises(ConfigError, match="agent.double_dqn: expected true or false, got 'yes'"):
        load_config(path)
    assert parse_override("agent.double_dqn=on") == (["agent", "double_dqn"], "on")


def test_int_is_accepted_for_float_and_becomes_float() -> None:
    cfg = config_from_dict({"optimizer": {"lr": 1}, "agent": {"gamma": 1}})
    assert cfg.optimizer.lr == 1.0 and isinstance(cfg.optimizer.lr, float)
    assert cfg.agent.gamma == 1.0 and isinstance(cfg.agent.gamma, float)


def test_integral_float_and_exponent_for_int() -> None:
    cfg = config_from_dict(yaml_load("{total_steps: 2e5, agent: {eps_decay_steps: 1e3}}"))
    assert cfg.total_steps == 200_000 and isinstance(cfg.total_steps, int)
    assert cfg.agent.eps_decay_steps == 1000 and isinstance(cfg.agent.eps_decay_steps, int)
    # Strings are never parsed as numbers by the converter: the YAML loader reads 1e3 as one.
    with pytest.raises(ConfigError, match=r"agent.eps_decay_steps: expected an integer, got '1e3'"):
        config_from_dict({"agent": {"eps_decay_steps": "1e3"}})


def test_optional_fields_take_null() -> None:
    cfg = config_from_dict(
        {"torch_threads": None, "agent": {"max_grad_norm": None}, "logging": {"name": None}}
    )
    assert cfg.torch_threads is None and cfg.agent.max_grad_norm is None and cfg.logging.name is None


def test_tuples_are_built_from_lists() -> None:
    cfg = config_from_dict({"network": {"hidden_sizes": [8, 4]}, "optimizer": {"betas": [0.5, 0.6]}})
    assert cfg.network.hidden_sizes == (8, 4)
    assert cfg.optimizer.betas == (0.5, 0.6)


@pytest.mark.parametrize(
    ("data", "key", "valid"),
    [
        ({"agent": {"loss": "l1"}}, "agent.loss", ["huber", "mse"]),
        ({"optimizer": {"lr_schedule": "cosine"}}, "optimizer.lr_schedule", ["constant", "linear"]),
        ({"network": {"init": "xavier"}}, "network.init", ["default", "orthogonal"]),
        (
            {"agent": {"obs_storage": "int4"}},
            "agent.obs_storage",
            ["auto", "float32", "uint8", "bits", "frames"],
        ),
    ],
)
def test_invalid_literal_lists_valid_choices(data: dict, key: str, valid: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    msg = str(info.value)
    assert msg.startswith(f"{key}: invalid value")
    assert f"valid choices: {valid}" in msg


def test_unknown_agent_name_lists_agents() -> None:
    with pytest.raises(ConfigError, match=r"unknown agent\.name 'ppo2'; valid choices: \['dqn', 'ppo'\]"):
        config_from_dict({"agent": {"name": "ppo2"}})


def test_unhashable_agent_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="agent.name"):
        config_from_dict({"agent": {"name": ["dqn"]}})


# ---------------------------------------------------------------------------------------------
# Value checks in __post_init__


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("env.num_envs=0", "env.num_envs"),
        ("env.max_episode_steps=0", "env.max_episode_steps"),
        ("agent.gamma=2", "agent.gamma"),
        ("agent.tau=0", "agent.tau"),
        ("agent.batch_size=0", "agent.batch_size"),
        ("agent.replay_ratio=0", "agent.replay_ratio"),
        ("agent.eps_end=1.5", "agent.eps_end"),
        ("optimizer.lr=-1", "optimizer.lr"),
        ("optimizer.lr=0", "optimizer.lr"),
        ("optimizer.betas=[0.9, 1.0]", "optimizer.betas"),
        ("optimizer.lr_end_factor=2", "optimizer.lr_end_factor"),
        ("network.hidden_sizes=[]", "network.hidden_sizes"),
        ("network.activation=swish", "network.activation"),
        ("total_steps=0", "total_steps"),
        ("seed=-1", "seed"),
        ("device=tpu", "device"),
        ("logging.every=0", "logging.every"),
        ("checkpoint.every=-1", "checkpoint.every"),
    ],
)
def test_value_checks_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    msg = str(info.value)
    prefix = f"command-line override {override!r}: "
    assert msg.startswith(prefix), msg
    assert key in msg[len(prefix) :], msg  # named in the message itself, not only in the source prefix


def test_buffer_smaller_than_batch_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"agent\.buffer_size"):
        config_from_dict({"agent": {"buffer_size": 8, "batch_size": 16}})


# ---------------------------------------------------------------------------------------------
# Regularizer entries


def test_regularizer_entries_keep_options() -> None:
    cfg = config_from_dict({"regularizers": [{"name": "spectral", "coef": 0.001, "power": 3}]})
    assert cfg.regularizers == (RegularizerConfig("spectral", 0.001, {"power": 3}),)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"name": "spectral"}, "lacks ['coef']"),
        ({"coef": 1.0}, "needs a name"),
        ({"name": "spectral", "coef": -1.0}, "coef must be a finite number >= 0"),
        ({"name": "spectral", "coef": float("nan")}, "expected a finite number"),
        ("spectral", "expected a regularizer entry"),
    ],
)
def test_bad_regularizer_entries(entry: object, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"regularizers": [entry]})
    assert str(info.value).startswith("regularizers[0]")  # "regularizers[0]: " or "regularizers[0].coef: "
    assert expected in str(info.value)


def test_regularizer_coef_written_as_yaml_exponent(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "reg.yaml", "regularizers:\n  - {name: spectral, coef: 1e-3}\n")
    assert load_config(path).regularizers[0].coef == 1e-3


def test_regularizer_coef_rejects_bool() -> None:
    with pytest.raises(ConfigError, match="coef"):
        config_from_dict({"regularizers": [{"name": "spectral", "coef": True}]})


# ---------------------------------------------------------------------------------------------
# Overrides


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("seed=3", ["seed"], 3),
        ("optimizer.lr=3e-4", ["optimizer", "lr"], 3e-4),  # the loader reads YAML 1.2 floats
        ("optimizer.lr=0.5", ["optimizer", "lr"], 0.5),
        ("agent.double_dqn=true", ["agent", "double_dqn"], True),
        ("logging.name=null", ["logging", "name"], None),
        ("logging.name=", ["logging", "name"], ""),
        ("logging.name=a=b", ["logging", "name"], "a=b"),
        ("network.hidden_sizes=[64, 64]", ["network", "hidden_sizes"], [64, 64]),
        (
            "regularizers=[{name: spectral, coef: 0.001}]",
            ["regularizers"],
            [{"name": "spectral", "coef": 0.001}],
        ),
        (" seed =4", ["seed"], 4),
    ],
)
def test_parse_override(text: str, path: list[str], value: object) -> None:
    assert parse_override(text) == (path, value)


@pytest.mark.parametrize("text", ["foo", "a..b=1", "=1", ".a=1", "a.=1", "seed"])
def test_bad_override_syntax(text: str) -> None:
    with pytest.raises(ConfigError, match=r"bad override .*expected key=value"):
        parse_override(text)
    with pytest.raises(ConfigError, match="bad override"):
        load_config(None, [text])


def test_unparsable_override_value() -> None:
    with pytest.raises(ConfigError, match=r"override 'network.hidden_sizes=\[1,': cannot parse the value"):
        parse_override("network.hidden_sizes=[1,")


def test_apply_overrides_creates_sections_and_copies() -> None:
    data = {"agent": {"gamma": 0.9}, "network": {"hidden_sizes": [4]}}
    out = apply_overrides(
        data, ["agent.tau=0.5", "env.kwargs.sticky_action_prob=0.0", "seed=2", "network.hidden_sizes=[8]"]
    )
    assert out == {
        "agent": {"gamma": 0.9, "tau": 0.5},
        "network": {"hidden_sizes": [8]},
        "env": {"kwargs": {"sticky_action_prob": 0.0}},
        "seed": 2,
    }
    assert data == {"agent": {"gamma": 0.9}, "network": {"hidden_sizes": [4]}}  # input untouched


def test_apply_overrides_later_wins_and_scalar_is_not_a_section() -> None:
    assert apply_overrides({}, ["seed=1", "seed=2"]) == {"seed": 2}
    with pytest.raises(ConfigError, match="'seed' is not a section"):
        apply_overrides({"seed": 1}, ["seed.x=1"])


def test_override_regularizer_list() -> None:
    cfg = load_config(None, ["regularizers=[{name: spectral, coef: 0.001}]"])
    assert cfg.regularizers == (RegularizerConfig("spectral", 0.001, {}),)


def test_overrides_apply_on_top_of_the_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "c.yaml", "seed: 1\nagent:\n  gamma: 0.5\n  batch_size: 8\n")
    cfg = load_config(path, ["agent.gamma=0.25", "optimizer.lr=1e-2"])
    assert cfg.seed == 1
    assert cfg.agent.gamma == 0.25 and cfg.agent.batch_size == 8
    assert cfg.optimizer.lr == 1e-2


# ---------------------------------------------------------------------------------------------
# Attribution: the file or the override


def test_file_errors_are_blamed_on_the_file_even_with_overrides(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", "agent:\n  gamma: 2\n")
    for overrides in ([], ["seed=1"]):
        with pytest.raises(ConfigError) as info:
            load_config(path, overrides)
        msg = str(info.value)
        assert msg.startswith(f"{path}: "), msg
        assert "agent.gamma" in msg
        assert "command-line override" not in msg


def test_override_errors_are_blamed_on_the_override(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "good.yaml", "seed: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["seed=2", "agent.gamma=2", "optimizer.lr=0.1"])
    msg = str(info.value)
    assert msg.startswith("command-line override 'agent.gamma=2': ")  # the exact override at fault
    assert "invalid agent.gamma" in msg and str(path) not in msg
    with pytest.raises(ConfigError) as info:
        load_config(path, ["network.hidden_sizes=[4]", "network.hidden_size=[8]"])
    assert str(info.value).startswith("command-line override 'network.hidden_size=[8]': unknown key")


def test_override_can_fix_a_file_error(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "half.yaml", "agent:\n  buffer_size: 8\n")  # < default batch_size 32
    with pytest.raises(ConfigError, match="buffer_size"):
        load_config(path)
    assert load_config(path, ["agent.batch_size=8"]).agent.batch_size == 8


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file '.*nope\.yaml' not found"):
        load_config(tmp_path / "nope.yaml")
    bad = write_yaml(tmp_path / "broken.yaml", "seed: [1\n")
    with pytest.raises(ConfigError, match=rf"{bad}: invalid YAML") as info:
        load_config(bad)
    assert "\n" not in str(info.value)
    listing = write_yaml(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match=rf"{listing}: a config must be a mapping"):
        load_config(listing)
    empty = write_yaml(tmp_path / "empty.yaml", "")
    with pytest.raises(ConfigError, match=r"empty\.yaml: the file is empty"):
        load_config(empty)


# ---------------------------------------------------------------------------------------------
# Round trip and self-description


ROUND_TRIP_CONFIGS = [
    {},
    {"seed": 7, "total_steps": 1234, "torch_threads": None, "deterministic": True},
    {
        "env": {
            "id": "breakout",
            "kwargs": {"sticky_action_prob": 0.0},
            "num_envs": 4,
            "max_episode_steps": 50,
        },
        "network": {"name": "minatar_cnn", "hidden_sizes": [64], "channels": 8, "init": "orthogonal"},
        "optimizer": {
            "name": "rmsprop",
            "lr": 2.5e-4,
            "centered": True,
            "alpha": 0.95,
            "lr_schedule": "linear",
        },
        "agent": {
            "double_dqn": True,
            "loss": "mse",
            "tau": 0.005,
            "max_grad_norm": 10,
            "obs_storage": "bits",
        },
    },
    {
        "regularizers": [
            {"name": "spectral", "coef": 0.001, "power": 2},
            {"name": "l2_init", "coef": 0, "kinds": ["head"]},
        ],
        "optimizer": {"name": "adamo", "betas": [0.5, 0.75], "iso_lr": 0.1},
        "logging": {"name": "run", "dir": "/tmp/x", "every": 10, "progress": False},
        "checkpoint": {"every": 0, "replay_buffer": False},
    },
    {"nonstationary": {"kind": "permute_obs", "every": 100, "on": "step", "options": {"mode": "all"}}},
]


@pytest.mark.parametrize("data", ROUND_TRIP_CONFIGS)
def test_round_trip(data: dict) -> None:
    cfg = config_from_dict(data)
    plain = config_to_dict(cfg)
    assert config_from_dict(plain) == cfg
    assert config_to_dict(config_from_dict(plain)) == plain
    # plain data survives YAML, as config.yaml in a run folder does
    assert config_from_dict(yaml_load(yaml.safe_dump(plain))) == cfg


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_round_trip_presets(preset: Path) -> None:
    cfg = load_config(preset)
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_config_to_dict_is_plain() -> None:
    plain = config_to_dict(config_from_dict(ROUND_TRIP_CONFIGS[3]))

    def walk(x: object) -> None:
        assert isinstance(x, dict | list | str | int | float | bool | type(None)), type(x)
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(plain)
    assert plain["regularizers"][0] == {"name": "spectral", "coef": 0.001, "power": 2}
    assert plain["optimizer"]["betas"] == [0.5, 0.75]


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    instance = cls() if cls is not DQNConfig else DQNConfig()
    applies = {OptimizerConfig: optimizer_keys, NetworkConfig: network_keys}.get(cls)
    naming = "name"
    if cls is NonStationaryConfig:  # stationary by default: only ``kind`` applies
        applies, naming = nonstationary_keys, "kind"
    for f in dataclasses.fields(instance):
        if applies is not None and f.name not in applies(getattr(instance, naming)):
            continue  # the name picks the options: only its keys are shown
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            keys += _leaf_keys(type(value), f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_describe_config_lists_every_leaf_key_with_docs() -> None:
    rows = describe_config()
    keys = [key for key, _, _ in rows]
    assert keys == _leaf_keys(ExperimentConfig)
    assert len(keys) == len(set(keys))
    for key in (
        "seed",
        "env.id",
        "agent.gamma",
        "network.hidden_sizes",
        "optimizer.lr",
        "regularizers",
        "logging.dir",
        "checkpoint.every",
    ):
        assert key in keys
    undocumented = [key for key, _, doc in rows if not doc.strip()]
    assert undocumented == []
    values = {key: value for key, value, _ in rows}
    assert values["seed"] == "0"
    assert values["env.id"] == "'CartPole-v1'"
    assert values["regularizers"] == "[]"
    assert values["network.hidden_sizes"] == "[128, 128]"
    docs = {key: doc for key, _, doc in rows}
    assert docs["agent.gamma"] == "Discount factor γ."


def test_describe_config_shows_resolved_values() -> None:
    cfg = load_config(None, ["seed=5", "regularizers=[{name: spectral, coef: 0.5}]", "env.kwargs={a: 1}"])
    values = {key: value for key, value, _ in describe_config(cfg)}
    assert values["seed"] == "5"
    assert values["regularizers"] == repr([{"name": "spectral", "coef": 0.5}])
    assert values["env.kwargs"] == repr({"a": 1})
