"""A sweep file, read and validated (``plasticrl sweep SWEEP.yaml``), and its grid expanded.

Contains:
    SWEEP_KEYS / RESERVED_KEYS: the top-level keys a sweep file may hold; the config keys the sweep
        sets itself for each run.
    SweepSpec: a validated sweep file (base preset or methods, seeds, overrides, grid, name, dir).
    Method: one method of a sweep: a name, its preset and its own overrides.
    load_sweep: read and strictly validate a sweep YAML file → ``SweepSpec``.
    with_changes: a spec with the command line's seeds, extra overrides and name.
    expand_grid: the grid's cartesian product → (cell name, overrides) pairs, in file order (pure).
    format_value / override_text / sanitize: how values become run names, override text that YAML
        reads back exactly, and folder names (pure).

The file's format, and what a sweep does with it: :mod:`plasticrl.trainers.experiments.sweep`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from plasticrl.trainers.config import ConfigError, parse_override, yaml_error_text, yaml_load

__all__ = [
    "SWEEP_KEYS",
    "RESERVED_KEYS",
    "SweepSpec",
    "Method",
    "load_sweep",
    "with_changes",
    "expand_grid",
    "format_value",
    "override_text",
    "sanitize",
]

SWEEP_KEYS = ("base", "methods", "seeds", "overrides", "grid", "name", "dir", "resources")
"""Top-level keys of a sweep file; any other key is an error."""

RESERVED_KEYS = ("seed", "logging.dir", "logging.name")
"""Keys the sweep sets itself for each run; overrides and grid keys may not set them."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+-]+")


@dataclass(frozen=True)
class Method:
    """One method of a sweep: its runs load ``preset``, then the sweep's overrides, then ``overrides``.

    Attributes:
        name: the method's name, the first part of its runs' names ("" for a sweep without methods).
        preset: the YAML preset its runs load.
        overrides: ``key=value`` overrides that make the method, applied after the sweep's own.
    """

    name: str
    preset: Path
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file.

    Attributes:
        path: the sweep file.
        name: the sweep's folder name (sanitised).
        methods: the methods compared, in file order; one unnamed method (the base preset) when
            the file has no ``methods``.
        seeds: the seeds of every grid cell; None runs the base config's own seed.
        overrides: ``key=value`` overrides applied to every run, before the method's and the grid's.
        grid: (dotted key, values) pairs in file order; the runs are their cartesian product.
        dir: the parent folder of the sweep's folder.
        resources: what each run asks of a cluster backend: ``cpus`` (default: the config's
            ``torch_threads``, or 1) and ``gpus`` (a fraction; default 0, or 1 for a CUDA config).
    """

    path: Path
    name: str
    methods: tuple[Method, ...]
    seeds: tuple[int, ...] | None
    overrides: tuple[str, ...]
    grid: tuple[tuple[str, tuple[Any, ...]], ...]
    dir: Path
    resources: Mapping[str, float] = field(default_factory=dict)

    @property
    def base(self) -> Path:
        """The first method's preset (the ``base`` preset of a sweep without methods)."""
        return self.methods[0].preset

    @property
    def sweep_dir(self) -> Path:
        """``<dir>/<name>``: the folder holding the run folders and their logs."""
        return self.dir / self.name


# ----------------------------------------------------------------------------- the sweep file


def _fail(path: Path, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def _check_key(path: Path, where: str, key: Any) -> str:
    """A dotted config key (``a.b``), not reserved; returns it."""
    if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
        raise _fail(path, f"{where}: bad config key {key!r}; expected a dotted key like optimizer.lr")
    if key in RESERVED_KEYS:
        raise _fail(path, f"{where}: {key!r} is set by the sweep itself (use 'seeds' for seeds)")
    return key


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and strictly validate a sweep file.

    Args:
        path: the sweep YAML file.

    Returns:
        The validated spec (the configs themselves are resolved by :func:`plan_sweep`).

    Raises:
        ConfigError: a one-line message naming the file and the bad key: a missing file, invalid
            YAML, an unknown top-level key, a wrong type, an empty grid list, a reserved key.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"sweep path {str(path)!r} is a directory, not a sweep file")
    if not path.is_file():
        raise ConfigError(f"sweep file {str(path)!r} not found")
    try:
        data = yaml_load(path.read_text())
    except UnicodeDecodeError:
        raise _fail(path, "not a YAML file (not UTF-8 text)") from None
    except yaml.YAMLError as exc:
        raise _fail(path, f"invalid YAML: {yaml_error_text(exc)}") from None
    if not isinstance(data, dict):
        raise _fail(path, "a sweep file must be a mapping with keys " + ", ".join(SWEEP_KEYS))
    unknown = [k for k in data if k not in SWEEP_KEYS]
    if unknown:
        raise _fail(path, f"unknown key {unknown[0]!r}; valid keys: {list(SWEEP_KEYS)}")

    methods = _load_methods(path, data.get("base"), data.get("methods"))

    seeds_raw = data.get("seeds")
    seeds: tuple[int, ...] | None = None
    if seeds_raw is not None:
        if not isinstance(seeds_raw, list) or not seeds_raw:
            raise _fail(path, f"'seeds' must be a non-empty list of integers, got {seeds_raw!r}")
        for s in seeds_raw:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise _fail(path, f"'seeds': {s!r} is not an integer >= 0")
        if len(set(seeds_raw)) != len(seeds_raw):
            raise _fail(path, f"'seeds' repeats a seed: {seeds_raw!r}")
        seeds = tuple(seeds_raw)

    overrides = _load_overrides(path, "'overrides'", data.get("overrides") or [])

    grid_raw = data.get("grid") or {}
    if not isinstance(grid_raw, dict):
        raise _fail(path, f"'grid' must map config keys to lists of values, got {grid_raw!r}")
    grid: list[tuple[str, tuple[Any, ...]]] = []
    for key, values in grid_raw.items():
        _check_key(path, "'grid'", key)
        if not isinstance(values, list):
            raise _fail(path, f"grid key {key!r}: expected a list of values, got {values!r}")
        if not values:
            raise _fail(path, f"grid key {key!r}: empty list of values")
        texts = [format_value(v) for v in values]
        if len(set(texts)) != len(texts):
            raise _fail(path, f"grid key {key!r}: repeated value in {values!r}")
        grid.append((key, tuple(values)))

    name = data.get("name", path.stem)
    if not isinstance(name, str) or not sanitize(name):
        raise _fail(path, f"'name' must be a non-empty string, got {name!r}")
    if "/" in name or "\\" in name or name.strip() in (".", ".."):
        raise _fail(path, f"'name' must be one folder name inside 'dir' (no '/', not '..'), got {name!r}")
    folder = data.get("dir", "runs")
    if not isinstance(folder, str) or not folder:
        raise _fail(path, f"'dir' must be a folder path, got {folder!r}")

    return SweepSpec(
        path=path,
        name=sanitize(name),
        methods=methods,
        seeds=seeds,
        overrides=overrides,
        grid=tuple(grid),
        dir=Path(folder),
        resources=_load_resources(path, data.get("resources")),
    )


def _load_overrides(path: Path, where: str, raw: Any) -> tuple[str, ...]:
    """A list of ``key=value`` strings whose keys are not reserved."""
    if not isinstance(raw, list):
        raise _fail(path, f"{where} must be a list of key=value strings, got {raw!r}")
    overrides: list[str] = []
    for text in raw:
        if not isinstance(text, str):
            raise _fail(path, f"{where}: {text!r} is not a key=value string (quote it)")
        try:
            keys, _ = parse_override(text)
        except ConfigError as exc:
            raise _fail(path, f"{where}: {exc}") from None
        _check_key(path, where, ".".join(keys))
        overrides.append(text)
    return tuple(overrides)


def _load_methods(path: Path, base: Any, raw: Any) -> tuple[Method, ...]:
    """The sweep's methods (``methods`` entries, in file order), or ``base`` as one unnamed method.

    An entry is a preset path, a list of overrides of ``base``, or ``{preset: ..., overrides: [...]}``
    (either key optional; the preset defaults to ``base``).
    """
    if base is not None and (not isinstance(base, str) or not base):
        raise _fail(path, f"'base' must be the path of a YAML preset (relative to this file), got {base!r}")
    if raw is None:
        if base is None:
            raise _fail(path, "a sweep needs 'base' (a preset) or 'methods' (name: preset or overrides)")
        return (Method("", path.parent / base),)
    if not isinstance(raw, dict) or not raw:
        raise _fail(path, f"'methods' must map names to a preset path or a list of overrides, got {raw!r}")
    methods: list[Method] = []
    for name, value in raw.items():
        if not isinstance(name, str) or sanitize(name) != name or "__" in name:
            raise _fail(path, f"method name {name!r}: use letters, digits and . , = + - (no '__')")
        where = f"method {name!r}"
        entry = value if isinstance(value, dict) else {"preset": value} if isinstance(value, str) else None
        if isinstance(value, list):
            entry = {"overrides": value}
        if entry is None or set(entry) - {"preset", "overrides"}:
            raise _fail(
                path,
                f"{where}: expected a preset path, a list of overrides or a mapping with keys "
                f"['preset', 'overrides'], got {value!r}",
            )
        preset = entry.get("preset", base)
        if preset is None:
            raise _fail(path, f"{where} names no preset, which needs a 'base' preset")
        if not isinstance(preset, str) or not preset:
            raise _fail(path, f"{where}: 'preset' must be a YAML file path, got {preset!r}")
        overrides = _load_overrides(path, where, entry.get("overrides", []))
        methods.append(Method(name, path.parent / preset, overrides))
    return tuple(methods)


RESOURCE_KEYS = ("cpus", "gpus")
"""Keys of a sweep file's ``resources`` section (what one run asks of a cluster backend)."""


def _load_resources(path: Path, raw: Any) -> dict[str, float]:
    """``resources: {cpus: N, gpus: F}``, both optional and >= 0 (cpus > 0)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _fail(path, f"'resources' must be a mapping with keys {list(RESOURCE_KEYS)}, got {raw!r}")
    out: dict[str, float] = {}
    for key, value in raw.items():
        if key not in RESOURCE_KEYS:
            raise _fail(path, f"'resources': unknown key {key!r}; valid keys: {list(RESOURCE_KEYS)}")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or value < 0
            or (key == "cpus" and value == 0)
        ):
            raise _fail(
                path,
                f"'resources.{key}': expected a number {'> 0' if key == 'cpus' else '>= 0'}, got {value!r}",
            )
        out[key] = float(value)
    return out


def with_changes(
    spec: SweepSpec,
    *,
    seeds: str | None = None,
    overrides: Sequence[str] = (),
    name: str | None = None,
    folder: str | None = None,
) -> SweepSpec:
    """``spec`` with command-line changes: other seeds, more overrides, another name or parent folder.

    ``seeds`` is a list like ``"0,1,2"``; ``folder`` (``--dir``) replaces the file's ``dir``, e.g.
    ``docs/results/<study>`` to keep a study's event files beside its report instead of under ``runs/``.

    Raises:
        ConfigError: a bad seed list, override, name or folder.
    """
    where = "command line"
    changes: dict[str, Any] = {}
    if seeds is not None:
        try:
            parsed = tuple(int(s) for s in seeds.split(","))
        except ValueError:
            parsed = ()
        if not parsed or min(parsed) < 0 or len(set(parsed)) != len(parsed):
            raise ConfigError(f"--seeds: expected distinct integers >= 0 like 0,1,2, got {seeds!r}")
        changes["seeds"] = parsed
    if overrides:
        changes["overrides"] = (*spec.overrides, *_load_overrides(spec.path, where, list(overrides)))
    if name is not None:
        if not sanitize(name):
            raise ConfigError(f"--name: expected a non-empty folder name, got {name!r}")
        changes["name"] = sanitize(name)
    if folder is not None:
        if not folder.strip():
            raise ConfigError(f"--dir: expected a folder path, got {folder!r}")
        changes["dir"] = Path(folder)
    return dataclasses.replace(spec, **changes)


# ----------------------------------------------------------------------------- expansion (pure)


def format_value(value: Any) -> str:
    """A YAML value as override text that parses back to it (JSON is YAML); strings stay bare.

    Examples:
        >>> format_value("adam"), format_value(3e-4), format_value([16, 16]), format_value(True)
        ('adam', '0.0003', '[16,16]', 'true')
    """
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def override_text(value: Any) -> str:
    """Override text that YAML reads back as exactly ``value`` (strings quoted, unlike format_value).

    Examples:
        >>> override_text("adam"), override_text(3e-4), override_text([16, 16])
        ('"adam"', '0.0003', '[16,16]')
    """
    return json.dumps(value, separators=(",", ":"))


def sanitize(text: str) -> str:
    """``text`` safe as one path component: runs of other characters than ``A-Za-z0-9._,=+-`` → ``-``.

    Examples:
        >>> sanitize("network.hidden_sizes=[16,16]")
        'network.hidden_sizes=-16,16-'
    """
    cleaned = _UNSAFE.sub("-", text)
    return "" if cleaned.strip(".") == "" else cleaned


def expand_grid(grid: Sequence[tuple[str, Sequence[Any]]]) -> list[tuple[str, tuple[str, ...]]]:
    """The grid's cartesian product, first key slowest.

    Args:
        grid: (dotted key, values) pairs.

    Returns:
        (cell name, overrides) per cell: the name joins ``key=value`` with ``,`` (sanitised; empty
        for an empty grid), the overrides are ``key=value`` texts YAML reads back exactly.
    """
    keys = [k for k, _ in grid]
    cells: list[tuple[str, tuple[str, ...]]] = []
    for combo in itertools.product(*(values for _, values in grid)):
        name = sanitize(",".join(f"{k}={format_value(v)}" for k, v in zip(keys, combo, strict=True)))
        overrides = tuple(f"{k}={override_text(v)}" for k, v in zip(keys, combo, strict=True))
        cells.append((name, overrides))
    return cells
