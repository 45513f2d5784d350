"""The one strict converter: YAML values into typed config sections and component options.

Contains:
    ConfigError: a bad key, type or value, naming the dotted key at fault.
    convert: one value into one annotated type (int, float, bool, str, Literal, Optional, tuples,
        mappings, nested dataclasses).
    unknown_key: the error for a key a dataclass does not have, with "did you mean".
    build_options: a mapping into an options dataclass, strictly (every key known, every value typed).
    Range / in_range / check_range / check_ranges: a numeric key's valid interval, declared once
        as field metadata (``gamma: float = field(default=0.99, metadata=in_range(0, 1))``) and
        checked for every value that comes in, with the interval in the message.
    parse_entry: one ``{name, ...}`` entry of a component list (``regularizers``, ``interventions``)
        checked against the options its registry entry declares.

Every place that reads user input into a dataclass goes through here: the experiment config's
sections (:mod:`plasticrl.trainers.config`), and the options of each registry entry (an optimizer,
network, regularizer, intervention or change kind registers its options dataclass, and the entry's
keys are built with :func:`build_options`). So one rule covers them all: an unknown key is an
error that lists the valid keys, an int is accepted for a float and an integral float for an int,
and nothing else is coerced. YAML's ``1e-3`` is a number because the loader reads it as one (YAML
1.2, :func:`plasticrl.trainers.config.yaml_load`), not because strings are parsed here. A float
key takes finite numbers only (``.nan`` and ``.inf`` are refused: no key means "no limit" by
infinity; those that can be off take ``null``). A field whose metadata declares a :class:`Range`
is checked against it as it is converted, so the message names the exact key and its interval
(``invalid agent.gamma: 2.0 (agent.gamma must be in [0, 1])``), and a dataclass's ``__post_init__``
calls :func:`check_ranges` for the same check when it is built from Python.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union

from plasticrl.plasticity.registry import Registry, close_matches

__all__ = [
    "ConfigError",
    "convert",
    "unknown_key",
    "build_options",
    "parse_entry",
    "Range",
    "in_range",
    "check_range",
    "check_ranges",
]


class ConfigError(ValueError):
    """A config problem; the message names the key (and, at the top, the file or override).

    Attributes:
        key: the dotted key at fault, when known (used to blame the right override).
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def convert(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to type ``tp`` or raise :class:`ConfigError` naming ``key``.

    Example:
        >>> convert(3, float, "optimizer.lr"), convert(2.0, int, "every")
        (3.0, 2)
        >>> convert("1e-3", float, "optimizer.lr")
        Traceback (most recent call last):
        ...
        plasticrl.plasticity.options.ConfigError: optimizer.lr: expected a number, got '1e-3'
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(
            errors[0]
            if len(errors) == 1
            else f"{key}: {value!r} is not a {' or '.join(_type_name(a) for a in args)}",
            key=key,
        )
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: invalid value {value!r}; valid choices: {list(args)}", key=key)
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of {_type_name(tp)} keys, got {value!r}", key=key)
        return build_options(tp, value, key)  # type: ignore[arg-type]
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}", key=key)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}", key=key)
        return tuple(convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin in (Mapping, dict) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}", key=key)
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}", key=key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)  # 1e5 is a float in YAML
            raise ConfigError(f"{key}: expected an integer, got {value!r}", key=key)
        return value
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}: expected a finite number, got {value!r}", key=key)
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}", key=key)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}", key=key)
        return value
    raise TypeError(f"config field {key} has an unsupported type {tp!r}")  # a schema bug


RANGE = "plasticrl_range"
"""The field-metadata key under which :func:`in_range` stores a field's :class:`Range`."""


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


@dataclass(frozen=True)
class Range:
    """The valid interval of a numeric config key (either end may be open or absent).

    Example:
        >>> str(Range(0, 1)), str(Range(0, low_open=True)), str(Range(1)), 0.5 in Range(0, 1)
        ('in [0, 1]', '> 0', '>= 1', True)
    """

    low: float | None = None
    """Smallest valid value (None: unbounded below)."""
    high: float | None = None
    """Largest valid value (None: unbounded above)."""
    low_open: bool = False
    """``low`` itself is not valid."""
    high_open: bool = False
    """``high`` itself is not valid."""

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        return "any number"


def in_range(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> dict[str, Range]:
    """Field metadata declaring a numeric key's valid interval.

    ``gamma: float = field(default=0.99, metadata=in_range(0, 1))``; ``lr: float =
    field(default=3e-4, metadata=in_range(0, low_open=True))`` (``> 0``). A tuple field
    (``hidden_sizes``) has the range checked on each element; None (an optional key that is
    off) is always valid.
    """
    return {RANGE: Range(low, high, low_open, high_open)}


def check_range(cls: type, name: str, value: Any, key: str) -> None:
    """Raise :class:`ConfigError` naming ``key``, ``value`` and the interval unless ``value`` lies in it.

    The interval is field ``name``'s :func:`in_range` metadata on dataclass ``cls``; a field
    without one accepts any value.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    spec = fields[name].metadata.get(RANGE) if name in fields else None
    if spec is None or value is None:
        return
    for item in value if isinstance(value, tuple | list) else (value,):
        if item not in spec:
            raise ConfigError(f"invalid {key}: {value!r} ({key} must be {spec})", key=key)


def check_ranges(obj: Any, prefix: str) -> None:
    """:func:`check_range` every field of dataclass instance ``obj``; keys are ``<prefix>.<field>``.

    Called by ``__post_init__``, so that a config built in Python is checked like one read from
    YAML.
    """
    for f in dataclasses.fields(obj):
        check_range(type(obj), f.name, getattr(obj, f.name), f"{prefix}.{f.name}" if prefix else f.name)


def unknown_key(key: str, name: str, valid: list[str], where: str = "here") -> ConfigError:
    """The error for ``name`` (at dotted ``key``) not among ``valid``, with "did you mean"."""
    hint = close_matches(str(name), valid)
    did_you_mean = f" did you mean {' or '.join(repr(h) for h in hint)}?" if hint else ""
    return ConfigError(f"unknown key {key!r};{did_you_mean} valid keys {where}: {sorted(valid)}", key=key)


def build_options(cls: type, data: Mapping[str, Any], prefix: str, component: str | None = None) -> Any:
    """``cls(**data)`` for a dataclass, strictly: every key a field, every value of its type.

    Args:
        cls: the (frozen) options dataclass.
        data: the user's keys.
        prefix: the dotted path of ``data`` for messages (``interventions[0]``).
        component: what the options belong to (``intervention 'redo'``), named in the unknown-key
            message; None says "here".

    Raises:
        ConfigError: an unknown key (listing the valid ones), a value of the wrong type, or a value
            the dataclass's ``__post_init__`` refuses.

    Example:
        >>> @dataclasses.dataclass(frozen=True)
        ... class ReDoLike:
        ...     tau: float = 0.1
        ...     every: int = 1000
        >>> build_options(ReDoLike, {"every": 5e2}, "interventions[0]")
        ReDoLike(tau=0.1, every=500)
        >>> build_options(ReDoLike, {"taux": 1}, "interventions[0]", "intervention 'redo'")
        Traceback (most recent call last):
        ...
        plasticrl.plasticity.options.ConfigError: unknown key 'interventions[0].taux'; did you mean \
'tau'? valid keys of intervention 'redo': ['every', 'tau']
    """
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise unknown_key(key, name, fields, f"of {component}" if component else "here")
        kwargs[name] = convert(value, hints[name], key)
        check_range(cls, name, kwargs[name], key)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"{prefix}: {exc}" if prefix else str(exc), key=prefix or None) from None


def parse_entry(
    entry: Any, prefix: str, registry: Registry[Any], fixed: Mapping[str, Any] | None = None
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(name, fixed values, options)`` of one list entry such as ``{name: spectral, coef: 1e-3, power: 2}``.

    The name must resolve in ``registry``. ``fixed`` maps the keys every entry of the list has
    (``{"coef": float}`` for regularizers) to their types; they are required. Every other key is an
    option: when the name's registry entry declares an options dataclass, the options are built
    with :func:`build_options` (so an unknown option lists the valid ones) and only the keys the
    user gave are returned, converted; a ``package.module:attr`` entry's options pass unchecked.

    Raises:
        ConfigError: not a mapping, no name, an unknown name, a missing fixed key, or a bad option.

    Example:
        >>> REGS: Registry[object] = Registry("regularizer")
        >>> @dataclasses.dataclass(frozen=True)
        ... class PowerOptions:
        ...     power: float = 2.0
        >>> _ = REGS.register("spectral", options=PowerOptions)(object)
        >>> parse_entry({"name": "spectral", "coef": 1, "power": 3}, "regularizers[0]", REGS, {"coef": float})
        ('spectral', {'coef': 1.0}, {'power': 3.0})
    """
    fixed = dict(fixed or {})
    kind = registry.kind
    if not isinstance(entry, Mapping):
        raise ConfigError(f"{prefix}: expected a {kind} entry {{name, ...}}, got {entry!r}", key=prefix)
    name = entry.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"{prefix}: a {kind} entry needs a name (a string), got {dict(entry)}", key=prefix)
    try:
        registry.check(name)
    except ValueError as exc:
        raise ConfigError(f"{prefix}.name: {exc}", key=f"{prefix}.name") from None
    missing = [k for k in fixed if k not in entry]
    if missing:
        raise ConfigError(f"{prefix}: {kind} entry {dict(entry)} lacks {missing}", key=prefix)
    values = {k: convert(entry[k], tp, f"{prefix}.{k}") for k, tp in fixed.items()}
    options = {k: v for k, v in entry.items() if k != "name" and k not in fixed}
    options_cls = registry.options(name)
    if options_cls is not None:
        built = build_options(options_cls, options, prefix, f"{kind} {name!r}")
        options = {k: getattr(built, k) for k in options}
    return name, values, options
