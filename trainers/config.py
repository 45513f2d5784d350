"""The experiment config: typed dataclasses, strict YAML loading and dotted command-line overrides.

Contains:
    LoggingConfig, CheckpointConfig, ExperimentConfig: the top-level schema. Component sections
        live beside their components (``EnvConfig`` in :mod:`plasticrl.envs.make`, ``NetworkConfig`` in
        :mod:`plasticrl.agents.networks`, ``OptimizerConfig`` in :mod:`plasticrl.plasticity.optimizers`,
        agent configs
        in ``agents/``) and are composed here.
    ConfigError: a bad key, type or value, naming the key and where it came from.
    load_config: YAML file + ``key=value`` overrides → validated ``ExperimentConfig``.
    read_yaml_preset: a YAML preset with its ``base:`` chain merged.
    config_from_dict / config_to_dict: the strict converter and its inverse (checkpoints, run dirs).
    describe_config: every key with its default and docstring (``plasticrl config``).

Loading is strict, as the two good ideas of nanoGPT's configurator: an unknown key is an error and
types must match (an int is accepted for a float; YAML's ``1e-3`` is a number, read by the YAML 1.2
loader). Every value goes through one converter, :mod:`plasticrl.plasticity.options`, which the
components' options (regularizer and intervention entries, change kinds) use too. The
``agent`` section is validated against the config class registered for ``agent.name``. Values are
checked by each dataclass's ``__post_init__`` before any training starts.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Literal

import torch
import yaml
from plasticrl.agents import AGENTS, AgentConfig
from plasticrl.agents.dqn import DQNConfig
from plasticrl.agents.networks import NetworkConfig
from plasticrl.agents.networks import applicable_keys as network_keys
from plasticrl.envs.make import EnvConfig, NonStationaryConfig, change_options, nonstationary_keys
from plasticrl.plasticity.interventions import InterventionConfig
from plasticrl.plasticity.metrics import MetricsConfig
from plasticrl.plasticity.optimizers import OptimizerConfig
from plasticrl.plasticity.optimizers import applicable_keys as optimizer_keys
from plasticrl.plasticity.options import (
    ConfigError,
    check_range,
    check_ranges,
    convert,
    in_range,
    unknown_key,
)
from plasticrl.plasticity.regularizers import RegularizerConfig
from plasticrl.trainers.logging import WandbConfig

__all__ = [
    "ConfigError",
    "LoggingConfig",
    "CheckpointConfig",
    "EvalConfig",
    "ExperimentConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "parse_override",
    "describe_config",
    "applicable_only",
    "with_current_defaults",
    "read_run_config",
    "check_run_name",
    "blame_source",
]


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false.

    YAML 1.1 (PyYAML's default) reads ``on``, ``off``, ``yes``, ``no`` as booleans — even as keys,
    so ``nonstationary: {on: step}`` would arrive as ``{True: 'step'}``.
    """


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
# YAML 1.1 wants a dot in a float (``1.0e-3``), so PyYAML reads ``1e-3`` as a string; YAML 1.2
# (and every user) reads it as a number. One resolver here fixes it for every key, files and
# overrides alike.
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789.")
)


def yaml_error_text(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: what went wrong and where (``line 3, column 2``).

    PyYAML's own text spans several lines (context, problem, a caret drawing); this keeps the
    problem and its 1-based line and column.
    """
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = getattr(exc, "context", None)
    tail = f" ({context})" if context and context != problem else ""
    return f"{where}{problem}{tail}"


def yaml_load(text: str) -> Any:
    """Parse YAML with YAML 1.2 booleans (see ``_Yaml12Loader``)."""
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)


def check_run_name(name: str, key: str, parent: str) -> None:
    """Refuse a run (or sweep) folder name that would not be a folder inside ``parent``.

    ``../x``, ``/abs/x``, ``a/../../x``, ``""``, ``.``: each would write outside ``parent`` (or into
    it, mixed with other runs). A name may hold ``/`` to nest runs (``study/run1``) as long as every
    part is a plain name.

    Raises:
        ConfigError: naming ``key``, the value and the rule.
    """
    parts = name.split("/")
    if (
        not name.strip()
        or PurePath(name).is_absolute()
        or "\\" in name
        or any(part in ("..", ".", "") for part in parts)
        or name != name.strip()
    ):
        raise ConfigError(
            f"invalid {key}: {name!r} ({key} must name a folder inside {parent!r}: plain names "
            "joined by '/', no '..' or '.', not absolute, not empty)",
            key=key,
        )


@dataclass(frozen=True)
class LoggingConfig:
    """The ``logging`` section: where runs go and how often scalars are written."""

    dir: str = "runs"
    """Parent folder of run folders."""
    name: str | None = None
    """Run folder name; None builds ``<env>__<agent>__<optimizer>__<network>__s<seed>__<time>``."""
    every: int = field(default=1000, metadata=in_range(1))
    """Write loss and Q-value scalars every this many env steps."""
    progress: bool = True
    """Show the progress line (``--quiet`` turns it off)."""
    wandb: WandbConfig | None = None
    """Mirror the run to Weights & Biases: ``{project, entity, group, tags, mode}`` (``pip install
    'plasticrl[wandb]'``; ``mode: offline`` needs no network); null: TensorBoard only."""

    def __post_init__(self) -> None:
        check_ranges(self, "logging")
        if self.name is not None:
            check_run_name(self.name, "logging.name", self.dir)


@dataclass(frozen=True)
class EvalConfig:
    """The ``eval`` section: evaluation episodes on the current task, apart from training.

    Every ``every`` env steps the agent plays ``episodes`` episodes in envs of its own, built as the
    training envs and set to the task the training envs run then (permutation included), frozen
    for the evaluation; logged as ``eval/episodic_return`` (mean), ``eval/episodic_return/task_<i>``
    and, for game switches, ``eval/episodic_return/game_<name>`` (:mod:`plasticrl.trainers.evaluation`).
    Its random draws come from a stream of its own, so training is bit-identical with it on or off.
    """

    every: int = field(default=0, metadata=in_range(0))
    """Evaluate every this many env steps (and at the end); 0 = never."""
    episodes: int = field(default=128, metadata=in_range(1))
    """Episodes per evaluation, played in parallel (one per eval env)."""
    policy: Literal["sample", "greedy"] = "sample"
    """``sample``: PPO draws from π, DQN is ε-greedy with ``epsilon``; ``greedy``: the best action."""
    epsilon: float = field(default=0.05, metadata=in_range(0, 1))
    """DQN's ε when ``policy=sample`` (ε_eval)."""
    max_episode_steps: int = field(default=100_000, metadata=in_range(1))
    """A cap on an evaluation episode's length (the env's own time limit comes first)."""

    def __post_init__(self) -> None:
        check_ranges(self, "eval")


@dataclass(frozen=True)
class CheckpointConfig:
    """The ``checkpoint`` section."""

    every: int = field(default=100_000, metadata=in_range(0))
    """Write ``checkpoint.pt`` every this many env steps (and at the end, and on Ctrl-C); 0 = only then."""
    replay_buffer: bool = True
    """Include the replay buffer, so that a resumed off-policy run is identical to an uninterrupted one."""

    def __post_init__(self) -> None:
        check_ranges(self, "checkpoint")


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole run. YAML presets in ``configs/`` set a subset of these keys."""

    seed: int = field(default=0, metadata=in_range(0))
    """Seeds python, numpy, torch, the envs and the agent's exploration."""
    total_steps: int = field(default=100_000, metadata=in_range(1))
    """Env steps (summed over sub-envs) to train for."""
    device: str = "cpu"
    """Torch device for the networks (``cpu``, ``cuda``, ``cuda:1``)."""
    torch_threads: int | None = field(default=1, metadata=in_range(1))
    """Torch intra-op threads; None keeps torch's default. Small RL networks run fastest on 1."""
    deterministic: bool = False
    """Ask torch for deterministic algorithms (CUDA); CPU runs are deterministic regardless."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """Environment section."""
    nonstationary: NonStationaryConfig = field(default_factory=NonStationaryConfig)
    """Non-stationarity section (stationary unless ``nonstationary.kind`` is set)."""
    agent: AgentConfig = field(default_factory=DQNConfig)
    """Agent section; ``agent.name`` picks its schema."""
    network: NetworkConfig = field(default_factory=NetworkConfig)
    """Network section."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimizer section."""
    regularizers: tuple[RegularizerConfig, ...] = ()
    """Loss regularizers: a list of ``{name, coef, ...options}``."""
    interventions: tuple[InterventionConfig, ...] = ()
    """Weight interventions after updates (``redo``, ``shrink_perturb``, ``cbp``): a list of
    ``{name, ...options}`` (plasticrl.plasticity.interventions)."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """Plasticity metrics section (cadence in updates, probe size, thresholds)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation section (off unless ``eval.every`` is set)."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Logging section."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoint section."""
    callbacks: tuple[str | dict[str, Any], ...] = ()
    """Your hooks, called by the loops: ``package.module:attr`` or ``{name: package.module:attr,
    <kwarg>: <value>}`` entries (on_step, on_update, on_task_switch, on_checkpoint, on_end;
    :mod:`plasticrl.trainers.callbacks`)."""

    def __post_init__(self) -> None:
        check_ranges(self, "")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            device = None
        if device is None or device.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:<i>' or 'mps', got {self.device!r}")
        if self.optimizer.reset_on_task_switch and self.nonstationary.kind is None:
            raise ValueError(
                "optimizer.reset_on_task_switch=true needs task switches, but nonstationary.kind is null "
                "(stationary); set nonstationary.kind and its schedule, or drop the reset"
            )


# --------------------------------------------------------------------------------------------
# Strict conversion dict -> dataclass


def _schema_for(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    """Build dataclass ``cls`` from ``data`` strictly; ``prefix`` is the dotted path for messages."""
    if cls in _ENTRY_LISTS.values():  # one list entry: {name, ...options of that name}
        return cls.from_dict(data, prefix)  # type: ignore[attr-defined]
    schema = _schema_for(cls)
    applicable = _applicable(cls, data)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in schema:
            raise unknown_key(key, str(name), list(schema))
        if applicable is not None and name not in applicable[1]:
            component, keys = applicable
            raise ConfigError(f"{key} does not apply to {component}; its keys: {sorted(keys)}", key=key)
        tp = schema[name]
        if name == "agent" and cls is ExperimentConfig:
            kwargs[name] = _build_agent(value, key)
        elif name in _ENTRY_LISTS and cls is ExperimentConfig:
            if not isinstance(value, list | tuple):
                raise ConfigError(f"{key}: expected a list of {{name, ...}} entries, got {value!r}", key=key)
            kwargs[name] = tuple(_build(_ENTRY_LISTS[name], v, f"{key}[{i}]") for i, v in enumerate(value))
        elif dataclasses.is_dataclass(tp) and isinstance(value, Mapping):  # a section: its name's keys
            kwargs[name] = _build(tp, value, key)  # type: ignore[arg-type]
        else:
            kwargs[name] = convert(value, tp, key)
            check_range(cls, name, kwargs[name], key)
    try:
        return cls(**kwargs)
    except ValueError as exc:  # a ConfigError from check_ranges keeps its exact key (for _blame)
        raise ConfigError(str(exc), key=getattr(exc, "key", None) or prefix or None) from None


_ENTRY_LISTS: dict[str, type] = {"regularizers": RegularizerConfig, "interventions": InterventionConfig}
"""List-of-entries fields: each entry is ``{name, ...}`` whose name picks its options
(``from_dict`` checks them with :func:`plasticrl.plasticity.options.parse_entry`)."""


@dataclass(frozen=True)
class _Named:
    """A section whose naming key picks the keys that apply (``optimizer.name``, ``nonstationary.kind``)."""

    section: str
    """The section's key in the config (``optimizer``)."""
    by: str
    """The naming key inside it (``name``; ``kind`` for ``nonstationary``)."""
    keys_of: Callable[[Any], frozenset[str]]
    """Naming value → the section's keys that apply (from the registry entry's options); raises
    ValueError for an unknown name, which is left to the section's own check."""
    label: str
    """How messages name the component (``optimizer``, ``change kind``)."""
    drop_on_change: frozenset[str] = frozenset()
    """Keys dropped from a lower layer when a higher one changes the name even though they apply
    to the new one (``nonstationary.options``: the old kind's options)."""


_NAMED_SECTIONS: dict[type, _Named] = {
    OptimizerConfig: _Named("optimizer", "name", optimizer_keys, "optimizer"),
    NetworkConfig: _Named("network", "name", network_keys, "network"),
    NonStationaryConfig: _Named(
        "nonstationary", "kind", nonstationary_keys, "nonstationary.kind", frozenset({"options"})
    ),
}
"""Sections whose naming key picks the keys that apply."""


def _applicable(cls: type, data: Mapping[str, Any]) -> tuple[str, frozenset[str]] | None:
    """("optimizer 'adam'", its keys) for a named section, from the name in ``data``; else None.

    The keys come from the options dataclass the name's registry entry carries; an unknown name
    is left to the registry's own check (which lists the valid names).
    """
    named = _NAMED_SECTIONS.get(cls)
    if named is None:
        return None
    name = data.get(named.by, getattr(cls(), named.by))
    try:
        keys = named.keys_of(name)
    except (ValueError, TypeError):
        return None
    shown = "null (stationary)" if name is None else repr(name)
    return f"{named.label} {shown}", keys


def _prune(data: Mapping[str, Any], names: Mapping[str, Any], changed: bool = False) -> dict[str, Any]:
    """A copy of ``data`` with each named section in ``names`` cut to the keys of that name.

    ``changed``: the names are new to ``data`` (a higher layer picks them), so the section's
    ``drop_on_change`` keys go too.
    """
    out = _deep_copy(dict(data))
    for cls, named in _NAMED_SECTIONS.items():
        section = out.get(named.section)
        if isinstance(section, dict) and named.section in names:
            applicable = _applicable(cls, {named.by: names[named.section]})
            if applicable is not None:
                drop = named.drop_on_change if changed else frozenset()
                out[named.section] = {
                    k: v for k, v in section.items() if k in applicable[1] and k not in drop
                }
    return out


def _rebase(lower: Mapping[str, Any], names: Mapping[str, Any]) -> dict[str, Any]:
    """``lower`` with each named section pruned to the keys of the name a higher layer picks.

    ``names`` maps a section (``optimizer``, ``network``, ``nonstationary``) to the name that a
    higher layer (a preset over its ``base``, or command-line overrides over the file) sets. Keys
    the lower layer set for its own component would not apply to the new one: they are dropped,
    so the section starts from the new component's defaults. Keys the higher layer sets itself
    stay strict, and a section whose name does not change is left as it is (its own errors stay
    errors).
    """
    own = _names_set(lower)
    return _prune(lower, {kind: name for kind, name in names.items() if name != own.get(kind)}, changed=True)


def _names_set(layer: Mapping[str, Any]) -> dict[str, Any]:
    """The named sections' names a preset layer sets (``{"optimizer": "adam"}``)."""
    out = {}
    for named in _NAMED_SECTIONS.values():
        section = layer.get(named.section)
        if isinstance(section, Mapping) and named.by in section:
            out[named.section] = section[named.by]
    return out


def applicable_only(data: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict without the keys that do not apply to its named sections.

    Checkpoints and ``config.yaml`` files written before the name picked the options hold every
    key of a section (at its default where it did not apply); this reads them as today's schema.
    """
    return _prune(data, _names_set(data))


def with_current_defaults(data: Mapping[str, Any]) -> dict[str, Any]:
    """A stored config (a run's ``config.yaml``, a checkpoint's) as today's code resolves it.

    Keys added to plasticrl after the run was made, which it lacks, take their defaults, and keys
    that do not apply to its named sections are dropped (:func:`applicable_only`). A new key's
    default is the behaviour from before it existed, so a run made before the key compares equal
    to one made after it with the key at its default: the sweep still skips it as finished and
    the analyses still pair and pool it.

    Raises:
        ConfigError: the stored config no longer builds (a key removed or renamed since).
    """
    return dict(config_to_dict(config_from_dict(applicable_only(data))))


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's ``config.yaml`` (YAML 1.2), as today's code resolves it where it still does.

    What the analyses read (reports, pairings, comparisons): :func:`with_current_defaults` of the
    file, or the file as written where it no longer builds (a key removed since).

    Raises:
        OSError: no ``config.yaml`` in ``run_dir``.
        ConfigError: the file is not YAML or not a mapping.
    """
    path = Path(run_dir) / "config.yaml"
    try:
        data = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {yaml_error_text(exc)}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a config must be a mapping of keys, got {type(data).__name__}")
    try:
        return with_current_defaults(data)
    except ConfigError:
        return dict(data)


def _build_agent(value: Any, key: str) -> AgentConfig:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}", key=key)
    name = value.get("name", "dqn")
    if not isinstance(name, str) or name not in AGENTS:
        raise ConfigError(f"unknown agent.name {name!r}; valid choices: {AGENTS.names()}", key=f"{key}.name")
    schema = AGENTS.options(name)
    assert schema is not None, f"agent {name!r} is registered without its config class"
    return _build(schema, value, key)


def config_from_dict(data: Mapping[str, Any]) -> ExperimentConfig:
    """Strictly build an ``ExperimentConfig`` from nested dicts (as read from YAML)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a mapping of keys, got {type(data).__name__}")
    return _build(ExperimentConfig, data, "")


def config_to_dict(cfg: Any) -> Any:
    """Plain nested dicts/lists of ``cfg`` (YAML- and checkpoint-safe); inverse of config_from_dict."""
    if isinstance(cfg, RegularizerConfig | InterventionConfig):
        return config_to_dict(cfg.to_dict())  # options may hold tuples
    if dataclasses.is_dataclass(cfg):
        keys = _shown_keys(cfg)
        return {
            f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name in keys
        }
    if isinstance(cfg, tuple | list):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return cfg


def _shown_keys(cfg: Any) -> set[str]:
    """The fields of dataclass ``cfg`` that apply (all, unless it is a named section)."""
    names = {f.name for f in dataclasses.fields(cfg)}
    named = _NAMED_SECTIONS.get(type(cfg))
    if named is not None:
        applicable = _applicable(type(cfg), {named.by: getattr(cfg, named.by)})
        if applicable is not None:
            return names & applicable[1]
    return names


# --------------------------------------------------------------------------------------------
# Overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into (``["a", "b"]``, value parsed as YAML).

    Example:
        >>> parse_override("optimizer.lr=3e-4")
        (['optimizer', 'lr'], 0.0003)
        >>> parse_override("regularizers=[{name: spectral, coef: 0.001}]")
        (['regularizers'], [{'name': 'spectral', 'coef': 0.001}])
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"bad override {text!r}; expected key=value, e.g. optimizer.lr=3e-4")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: cannot parse the value: {yaml_error_text(exc)}") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key=value`` override set (creating sections)."""
    parsed = [(text, *parse_override(text)) for text in overrides]
    naming = {named.section: named.by for named in _NAMED_SECTIONS.values()}
    names = {path[0]: value for _, path, value in parsed if len(path) == 2 and naming.get(path[0]) == path[1]}
    out: dict[str, Any] = _rebase(data, names)
    for text, path, value in parsed:
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return out


def _deep_copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def read_yaml_preset(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a preset, merged over its ``base`` preset if it names one.

    A top-level ``base: other.yaml`` (relative to this file) is read first and this file's keys
    are deep-merged over it, so that the presets of one study share one base.
    """
    named_by = f" (the 'base' of {_chain[-1]})" if _chain else ""
    if path.is_dir():
        raise ConfigError(f"config path {str(path)!r}{named_by} is a directory, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r}{named_by} not found")
    resolved = path.resolve()
    if resolved in _chain:
        raise ConfigError(f"{path}: 'base' chain loops: {' -> '.join(str(p) for p in (*_chain, resolved))}")
    raw = path.read_bytes()
    if b"\0" in raw:
        raise ConfigError(f"{path}: not a YAML file (binary content)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte {raw[exc.start]:#04x} on line {line})") from None
    try:
        loaded = yaml_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {yaml_error_text(exc)}") from None
    if loaded is None:
        raise ConfigError(
            f"{path}: the file is empty (no keys); a config sets at least one key, e.g. env.id "
            "(an empty file would silently train every default for 100000 steps)"
        )
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"{path}: a config must be a mapping of keys, got {type(loaded).__name__} {loaded!r:.40}"
        )
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a path to another YAML preset, got {base!r}")
    parent = read_yaml_preset(path.parent / base, (*_chain, resolved))
    return _deep_merge(_rebase(parent, _names_set(loaded)), loaded)


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = _deep_copy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = _deep_copy(value)
    return out


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read a YAML preset (or the defaults when ``path`` is None) and apply overrides.

    A preset may start from another one with a top-level ``base: relative/path.yaml``.

    Raises:
        ConfigError: missing file, bad YAML, unknown key, wrong type or invalid value; the message
            names the key and whether it came from the file or a command-line override.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        data = read_yaml_preset(Path(path))
    # Validate the file alone first, so its errors are blamed on it and not on an override.
    try:
        config_from_dict(data)
    except ConfigError as exc:
        if not overrides:
            raise ConfigError(f"{source}: {exc}") from None
        file_error: ConfigError | None = exc
    else:
        file_error = None
    merged = _tie_iso_target(apply_overrides(data, overrides))
    try:
        return config_from_dict(merged)
    except ConfigError as exc:
        if file_error is not None and str(file_error) == str(exc):
            raise ConfigError(f"{source}: {exc}", key=exc.key) from None
        culprit = _blame(exc.key, overrides)
        raise ConfigError(f"command-line override {culprit!r}: {exc}", key=exc.key) from None


def _tie_iso_target(data: dict[str, Any]) -> dict[str, Any]:
    """``metrics.iso_target`` follows ``optimizer.iso_target`` unless it is set itself.

    The isometry gap is measured against the target the optimizer pulls towards (AdamO with
    ``iso_target: 2`` measured against 1 would report a gap that no training closes).
    """
    opt, met = data.get("optimizer"), data.get("metrics")
    if (
        isinstance(opt, Mapping)
        and "iso_target" in opt
        and not (isinstance(met, Mapping) and "iso_target" in met)
    ):
        return {
            **data,
            "metrics": {**(met if isinstance(met, Mapping) else {}), "iso_target": opt["iso_target"]},
        }
    return data


def blame_source(key: str | None, path: str | Path | None, overrides: Sequence[str]) -> str:
    """Where the value of ``key`` came from: ``command-line override 'k=v'``, the file, or ``defaults``.

    For errors found after the config is resolved (an unknown name, a ``module:attr`` of the
    wrong signature), so that they name their source as the loader's own errors do.
    """
    if key is not None:
        culprit = _blame(key, overrides)
        if culprit in overrides:
            return f"command-line override {culprit!r}"
    return str(path) if path is not None else "defaults"


def _blame(key: str | None, overrides: Sequence[str]) -> str:
    """The override that set ``key`` (or its section / a key inside it); else all of them."""
    if key is not None:
        key = key.split("[")[0]
        for text in reversed(overrides):
            k = text.partition("=")[0].strip()
            if k == key or key.startswith(k + ".") or k.startswith(key + "."):
                return text
    return " ".join(overrides)


# --------------------------------------------------------------------------------------------
# Self-documentation


def _field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under dataclass fields (the CleanRL convention)."""
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    for node, nxt in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe_config(cfg: Any = None, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, current value, doc) for every leaf key of ``cfg`` (default: the defaults)."""
    cfg = ExperimentConfig() if cfg is None else cfg
    rows: list[tuple[str, str, str]] = []
    docs = _field_docs(type(cfg))
    shown = _shown_keys(cfg)
    for f in dataclasses.fields(cfg):
        if f.name not in shown:
            continue
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, RegularizerConfig | InterventionConfig):
            rows.extend(describe_config(value, key + "."))
        elif isinstance(cfg, NonStationaryConfig) and f.name == "options" and cfg.kind is not None:
            parts = change_options(cfg)  # each kind's options, with their defaults and docs
            for kind, options in parts:
                inner = f"{key}." if len(parts) == 1 else f"{key}.{kind}."
                if dataclasses.is_dataclass(options):
                    rows.extend(describe_config(options, inner))
                else:  # a package.module:Class kind without an options dataclass
                    rows.append((inner.rstrip("."), repr(options), docs.get(f.name, "")))
        else:
            rows.append((key, repr(config_to_dict(value)), docs.get(f.name, "")))
    return rows
