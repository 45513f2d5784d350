"""Many runs of one base config on one machine, in parallel processes (``plasticrl sweep``).

Contains:
    SWEEP_KEYS: the top-level keys a sweep file may hold.
    SweepSpec: a validated sweep file (base preset or methods, seeds, overrides, grid, name, dir).
    Method: one method of a sweep: a name, its preset and its own overrides.
    SweepRun: one planned run: its deterministic name, folder, log file, config and action.
    SweepResult: what a sweep did (ran, skipped, resumed, failed, interrupted runs).
    load_sweep: read and strictly validate a sweep YAML file → ``SweepSpec``.
    with_changes: a spec with the command line's seeds, extra overrides and name.
    expand_grid: the grid's cartesian product → (cell name, overrides) pairs, in file order (pure).
    format_value / sanitize: how grid values become override text and folder names (pure).
    plan_sweep: every run's config resolved and its action (start / resume / skip) decided, before
        anything starts; any bad override or name fails the whole sweep here.
    describe_run: one ``--dry-run`` line (action, run name, why).
    execute_sweep: run the planned runs as ``python -m plasticrl.trainers.cli train`` child processes,
        ``workers`` at a time, each logging to ``<run_dir>.log``.
    summary_line: ``sweep <name>: N ran, M skipped (complete), K resumed, F failed``.
    SweepProgress: the one progress line of the whole sweep (runs finished / running / failed /
        queued, elapsed, ETA), redrawn on a terminal, printed after each finished run otherwise.
    child_command / thread_env / open_run_log / record_exit / raise_on_sigterm: the pieces of
        running one run that the local and Ray backends share.
    run_sweep_command: the ``sweep`` subcommand of :mod:`plasticrl.trainers.cli`;
        ``--backend ray`` runs each run as a Ray task instead
        (:mod:`plasticrl.trainers.experiments.sweep_ray`).

A sweep file::

    base: ../cartpole/dqn.yaml          # a preset, relative to this file
    methods:                            # optional: compare methods, each a preset or overrides
      adam: ../cartpole/dqn.yaml        #   (a preset path, relative to this file) ...
      adamo: [optimizer.name=adamo]     #   ... or a list of overrides of 'base' ...
      slow: {preset: ../cartpole/dqn.yaml, overrides: [optimizer.lr=1e-4]}  # ... or both
    seeds: [0, 1, 2]                    # optional; default: the base config's seed
    overrides: [total_steps=20000]      # key=value applied to every run
    grid:                               # cartesian product of these values
      optimizer.name: [adam, adamo]
    name: cartpole_seeds                # optional; default: the file's stem
    dir: runs                           # optional; the sweep's runs go to <dir>/<name>/

The runs are methods x grid cells x seeds. Run ``<name>/adamo__optimizer.lr=0.001__s0`` (method,
grid cell, seed; a part is left out when the file has no methods or no grid) lives in
``<dir>/<name>/adamo__optimizer.lr=0.001__s0/`` and logs to ``<dir>/<name>/<run>.log``;
``plasticrl report`` groups runs by that name without its ``__s<seed>``.

A run whose checkpoint has reached the config's ``total_steps`` is skipped; one with an earlier
checkpoint is resumed (``train --resume``, with the sweep's ``total_steps``); a folder without a
checkpoint (a run that crashed before its first checkpoint) is set aside under ``.stale/`` with its
log (evidence kept) and the run started again under its name.
A run whose folder another process is training in now (its lock, :mod:`plasticrl.trainers.runlock`: the same
sweep launched twice, say) is left alone and reported as "running elsewhere".
In the summary, "ran" counts runs started from scratch that finished, "resumed" those continued
from a checkpoint that finished. Ctrl-C (or SIGTERM, SIGHUP) stops launching runs and forwards one
SIGINT to each running child, which writes a checkpoint and exits; running the sweep again resumes
them. A folder without a checkpoint is set aside under ``.stale/`` (never deleted), and a run
another process takes after planning is reported as taken (Note [Taken runs]).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, Literal

import yaml
from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, load_summary, recorded_summary
from plasticrl.trainers.config import (
    ConfigError,
    ExperimentConfig,
    applicable_only,
    config_to_dict,
    load_config,
    parse_override,
    with_current_defaults,
    yaml_error_text,
    yaml_load,
)
from plasticrl.trainers.run import RESUME_OVERRIDABLE, check_names
from plasticrl.trainers.runlock import RunFolderInUse, lock_run_dir, run_dir_holder, unlock_run_dir

__all__ = [
    "SWEEP_KEYS",
    "SweepSpec",
    "Method",
    "SweepRun",
    "SweepResult",
    "Action",
    "load_sweep",
    "with_changes",
    "expand_grid",
    "format_value",
    "sanitize",
    "plan_sweep",
    "describe_run",
    "execute_sweep",
    "summary_line",
    "start_result",
    "child_command",
    "thread_env",
    "open_run_log",
    "record_exit",
    "raise_on_sigterm",
    "run_sweep_command",
]

SWEEP_KEYS = ("base", "methods", "seeds", "overrides", "grid", "name", "dir", "resources")
"""Top-level keys of a sweep file; any other key is an error."""

RESERVED_KEYS = ("seed", "logging.dir", "logging.name")
"""Keys the sweep sets itself for each run; overrides and grid keys may not set them."""

EXIT_INTERRUPTED = 130
"""Exit code of an interrupted sweep (and of an interrupted ``plasticrl train`` child)."""

Action = Literal["start", "resume", "skip", "running"]
"""What a sweep does with a run: start it from scratch, resume it from its checkpoint, or skip it."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+-]+")
_IGNORED_ON_RESUME = ("logging", "checkpoint")  # sections that may differ from a run's checkpoint


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


@dataclass(frozen=True)
class SweepRun:
    """One planned run of a sweep.

    Attributes:
        name: ``<sweep>/<method>__<cell>__s<seed>`` (``<sweep>/s<seed>`` without methods or grid);
            deterministic.
        run_dir: its run folder.
        log_path: the child's stdout and stderr (``<run_dir>.log``).
        overrides: every override applied to ``preset`` for this run, in order: the sweep's, the
            method's, the grid cell's, then seed, logging.dir and logging.name.
        config: the resolved config.
        action: start, resume, skip, or running (another process trains in its folder now).
        checkpoint_step: the global step of its checkpoint (0 without one).
        stale_dir: the run folder exists without a checkpoint and is set aside (``.stale/``) before
            starting (Note [Taken runs]).
        preset: the YAML preset the overrides apply to (its method's).
        method: its method's name ("" in a sweep without methods).
    """

    name: str
    run_dir: Path
    log_path: Path
    overrides: tuple[str, ...]
    config: ExperimentConfig
    action: Action
    checkpoint_step: int = 0
    stale_dir: bool = False
    preset: Path = Path()
    method: str = ""
    holder: str | None = None
    """For ``running``: who holds the folder's lock (``"pid N on host"``)."""


@dataclass
class SweepResult:
    """What :func:`execute_sweep` did; every list holds run names.

    Attributes:
        ran: started from scratch and finished.
        skipped: already complete, not run.
        resumed: continued from a checkpoint and finished.
        failed: (run name, exit code, log path) of every run that exited with an error.
        interrupted: stopped by Ctrl-C with a checkpoint (or never launched because of it).
        elsewhere: being trained by another process (its folder's lock is held); left alone.
    """

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    failed: list[tuple[str, int, Path]] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)


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


def _override_value(value: Any) -> str:
    """Override text that YAML reads back as exactly ``value`` (strings quoted)."""
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
        overrides = tuple(f"{k}={_override_value(v)}" for k, v in zip(keys, combo, strict=True))
        cells.append((name, overrides))
    return cells


# ----------------------------------------------------------------------------- planning


def _comparable(cfg_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict without the keys that may differ between a run's checkpoint and the sweep."""
    return {k: v for k, v in cfg_dict.items() if k not in ("total_steps", *_IGNORED_ON_RESUME)}


def _stored(config: Mapping[str, Any]) -> dict[str, Any]:
    """A checkpoint's recorded config as today's code resolves it, for comparison.

    Keys added since are at their defaults (:func:`plasticrl.trainers.config.with_current_defaults`);
    where it no longer resolves it is taken as recorded, so that it differs.
    """
    try:
        return _comparable(with_current_defaults(config))
    except ConfigError:
        return _comparable(applicable_only(config))


def _decide(run_dir: Path, cfg: ExperimentConfig, name: str) -> tuple[Action, int, bool]:
    """(action, checkpoint step, stale folder) of a run from what its folder holds."""
    checkpoint = run_dir / CHECKPOINT_NAME
    if checkpoint.is_file():
        state = load_summary(checkpoint)
        stored = _stored(state.get("config", {}))
        wanted = _comparable(config_to_dict(cfg))
        if stored != wanted:
            differing = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
            raise ConfigError(
                f"run {name!r}: its checkpoint in {str(run_dir)!r} was made with a different config "
                f"(section(s) {differing}); remove that folder or give the sweep another name"
            )
        step = int(state["global_step"])
        return ("skip" if step >= cfg.total_steps else "resume"), step, False
    committed = _committed_step(run_dir, cfg)
    if committed is not None:  # Note [Committed results]
        return "skip", committed, False
    return "start", 0, run_dir.exists()


def _committed_step(run_dir: Path, cfg: ExperimentConfig) -> int | None:
    """The step of a complete run whose results were kept without its checkpoint, else None.

    Note [Committed results]
        A study commits each finished run's ``config.yaml``, event files and the checkpoint's small
        JSON sidecar (``checkpoint.json``), never the checkpoint itself. A folder holding event
        files and a sidecar that records this config (up to what may differ on resume) at or past
        ``total_steps`` is a finished run: the sweep skips it, so nothing finished is run twice
        across sessions. The recorded config is read as today's code resolves it, so a key added
        to plasticrl since, which it lacks, is at its default (``with_current_defaults``). A
        sidecar short of ``total_steps`` without its checkpoint cannot be
        resumed, and the run starts over (its folder is set aside, as any stale folder).
    """
    if not any(run_dir.glob("events.out.tfevents.*")):
        return None
    recorded = recorded_summary(run_dir / CHECKPOINT_NAME)
    if recorded is None:
        return None
    try:
        step = int(recorded["global_step"])
        stored = _stored(recorded.get("config", {}))
    except (ValueError, KeyError, TypeError):
        return None
    if stored != _comparable(config_to_dict(cfg)) or step < cfg.total_steps:
        return None
    return step


def plan_sweep(spec: SweepSpec) -> list[SweepRun]:
    """Resolve every run's config and decide its action, before anything runs.

    Raises:
        ConfigError: a bad override, key or value in any run (naming the run), two runs with the
            same folder name, or a checkpoint made with a different config.
        ValueError: an unknown registry name (env, network, optimizer, ...) in any run.
    """
    for method in spec.methods:
        if not method.preset.is_file():
            what = f"method {method.name!r}: preset" if method.name else "base preset"
            raise ConfigError(f"{spec.path}: {what} {str(method.preset)!r} not found")
    if spec.seeds is None:
        try:
            seeds: tuple[int, ...] = (load_config(spec.base, spec.overrides).seed,)
        except ValueError as exc:
            raise ConfigError(f"sweep {spec.name!r}: {exc}") from None
    else:
        seeds = spec.seeds
    runs: list[SweepRun] = []
    seen: dict[Path, str] = {}
    for method, (cell, cell_overrides), seed in itertools.product(
        spec.methods, expand_grid(spec.grid), seeds
    ):
        leaf = "__".join(part for part in (method.name, cell, f"s{seed}") if part)
        name = f"{spec.name}/{leaf}"
        overrides = (
            *spec.overrides,
            *method.overrides,
            *cell_overrides,
            f"seed={seed}",
            f"logging.dir={_override_value(str(spec.sweep_dir))}",
            f"logging.name={_override_value(leaf)}",
        )
        try:
            cfg = load_config(method.preset, overrides)
            check_names(cfg)
        except ValueError as exc:
            message = str(exc).replace("command-line override", "override", 1)
            raise ConfigError(f"sweep run {name!r}: {message}") from None
        run_dir = spec.sweep_dir / leaf
        if run_dir in seen:
            raise ConfigError(f"runs {seen[run_dir]!r} and {name!r} get the same folder name")
        seen[run_dir] = name
        holder = run_dir_holder(run_dir)  # another process trains there: touch nothing
        action, step, stale = ("running", 0, False) if holder is not None else _decide(run_dir, cfg, name)
        runs.append(
            SweepRun(
                name=name,
                run_dir=run_dir,
                log_path=run_dir.with_name(leaf + ".log"),
                overrides=overrides,
                config=cfg,
                action=action,
                checkpoint_step=step,
                stale_dir=stale,
                preset=method.preset,
                method=method.name,
                holder=holder,
            )
        )
    return runs


def describe_run(run: SweepRun) -> str:
    """One line of ``--dry-run``: the action, the run name and what the action is based on."""
    total = run.config.total_steps
    detail = {
        "skip": f"complete: step {run.checkpoint_step} of {total}",
        "resume": f"from step {run.checkpoint_step} of {total}",
        "start": f"{total} steps" + (" (setting aside a folder without checkpoint)" if run.stale_dir else ""),
        "running": f"in use by {run.holder}; left alone",
    }[run.action]
    return f"{run.action:<6}  {run.name}  ({detail})"


# ----------------------------------------------------------------------------- execution


def child_command(run: SweepRun) -> list[str]:
    """The ``plasticrl.trainers.cli`` command line of a run that is not skipped."""
    cli = [sys.executable, "-m", "plasticrl.trainers.cli", "train"]
    if run.action == "resume":
        keep = [o for o in run.overrides if o.partition("=")[0].strip() in RESUME_OVERRIDABLE]
        return [*cli, "--resume", str(run.run_dir), *keep, f"total_steps={run.config.total_steps}", "-q"]
    return [*cli, str(run.preset.resolve()), *run.overrides, "-q"]


def thread_env(run: SweepRun) -> dict[str, str]:
    """``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` of a run's child: the parent's, else ``torch_threads``."""
    threads = run.config.torch_threads
    env: dict[str, str] = {}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if var in os.environ:
            env[var] = os.environ[var]
        elif threads is not None:
            env[var] = str(threads)
    return env


def _child_env(run: SweepRun) -> dict[str, str]:
    """The parent's environment, with one OpenMP/MKL thread per child unless configured otherwise."""
    return {**os.environ, **thread_env(run)}


@dataclass
class _Child:
    run: SweepRun
    process: subprocess.Popen[bytes]
    log: IO[bytes]


class RunTaken(ConfigError):
    """Another process took a run between the sweep's planning and its launch (Note [Taken runs])."""


EXIT_TAKEN = 75
"""Exit code of a run that found its folder in use (EX_TEMPFAIL): reported as taken, not failed."""

STALE_DIR = ".stale"
"""Folder (inside the sweep folder) where run folders without a checkpoint are set aside."""


def set_aside(run: SweepRun) -> Path | None:
    """Move a started run's folder without checkpoint (and its old log) under ``.stale/``.

    Note [Taken runs]
        Between planning and launch another process may take a run (another sweep, a ``train
        --resume``): the folder is locked (:mod:`plasticrl.trainers.runlock`) or now holds a
        checkpoint. The sweep then touches nothing, reports the run as taken ("running
        elsewhere") and goes on supervising the others. A folder without a checkpoint (a run
        that crashed or was killed before its first one) is never deleted: while holding its lock
        the sweep moves it, with the run's old log, to ``<sweep>/.stale/<run>.<n>/``, so the
        evidence (``nonfinite_stop.pt``, the log, event files) is kept and the run restarts
        cleanly under its own name.

    Returns:
        Where the folder went (None when there was none).

    Raises:
        RunTaken: the folder is in use by another process or now holds a checkpoint.
    """
    if not run.run_dir.exists():
        return None
    holder = run_dir_holder(run.run_dir)
    if holder is not None:  # (also "this process": never move a folder someone here trains in)
        raise RunTaken(f"run {run.name!r}: {run.run_dir} is in use by {holder}")
    try:
        lock_run_dir(run.run_dir)
    except RunFolderInUse as exc:
        raise RunTaken(f"run {run.name!r}: {exc}") from None
    try:
        if (run.run_dir / CHECKPOINT_NAME).exists():
            raise RunTaken(f"run {run.name!r}: {run.run_dir} now holds a checkpoint; run the sweep again")
        stale = run.run_dir.parent / STALE_DIR
        stale.mkdir(parents=True, exist_ok=True)
        n = 0
        while (stale / f"{run.run_dir.name}.{n}").exists():
            n += 1
        target = stale / f"{run.run_dir.name}.{n}"
        os.replace(run.run_dir, target)
        if run.log_path.is_file():
            os.replace(run.log_path, target / run.log_path.name)
        return target
    finally:
        unlock_run_dir(run.run_dir)


def open_run_log(run: SweepRun, command: Sequence[str]) -> IO[bytes]:
    """Set a started run's stale folder aside, open ``run.log_path`` (appended on resume), write ``command``.

    Raises:
        RunTaken: another process took the run since planning (Note [Taken runs]).
    """
    if run.action == "start":
        set_aside(run)
    elif run.action == "resume":
        holder = run_dir_holder(run.run_dir)
        if holder is not None:
            raise RunTaken(f"run {run.name!r}: {run.run_dir} is in use by {holder}")
    run.log_path.parent.mkdir(parents=True, exist_ok=True)
    log = run.log_path.open("ab" if run.action == "resume" else "wb")
    log.write(f"$ {' '.join(command)}\n".encode())
    log.flush()
    return log


def _launch(run: SweepRun) -> _Child:
    """Start a run's child process; its output goes to ``run.log_path`` (appended on resume)."""
    log = open_run_log(run, child_command(run))
    process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
        child_command(run),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=_child_env(run),
        start_new_session=True,  # the terminal's Ctrl-C reaches only the sweep, which forwards one
    )
    return _Child(run, process, log)


def _finish(child: _Child, code: int, result: SweepResult, out: IO[str]) -> None:
    """Close a child's log, record its exit code in ``result`` and print one line about it."""
    child.log.close()
    record_exit(child.run, code, result, out)


def record_exit(run: SweepRun, code: int, result: SweepResult, out: IO[str]) -> None:
    """Record a run's exit code in ``result`` and print one line (done / stopped / FAILED) about it."""
    if code == 0:
        (result.resumed if run.action == "resume" else result.ran).append(run.name)
        print(f"done    {run.name}", file=out, flush=True)
    elif code == EXIT_INTERRUPTED:
        result.interrupted.append(run.name)
        print(f"stopped {run.name} (checkpoint written)", file=out, flush=True)
    elif code == EXIT_TAKEN:
        record_taken(run, "its folder is in use by another process", result, out)
    else:
        result.failed.append((run.name, code, run.log_path))
        print(f"FAILED  {run.name} (exit code {code}; log: {run.log_path})", file=out, flush=True)


def record_taken(run: SweepRun, why: str, result: SweepResult, out: IO[str]) -> None:
    """Record a run another process took after planning (Note [Taken runs]) as running elsewhere."""
    result.elsewhere.append(run.name)
    print(f"taken   {run.name} ({why}; left alone)", file=out, flush=True)


class SweepProgress:
    """One progress line for a whole sweep: ``[sweep] 3/8 finished (1 failed) | 2 running | ...``.

    On a terminal the line is redrawn in place (the per-run lines print above it); on a pipe or
    file it is printed after each run that finishes, so a log shows the sweep's progress without
    a line per poll. The ETA assumes the remaining runs take as long, on average, as the finished
    ones took at this concurrency: ``elapsed × remaining / finished``.

    Args:
        total: the runs this invocation launches (skipped and running-elsewhere ones excluded).
        out: where the line goes.
        enabled: False draws nothing (tests that parse the output exactly).
    """

    def __init__(self, total: int, out: IO[str], *, enabled: bool = True) -> None:
        self.total = total
        self.out = out
        self.enabled = enabled and total > 0
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self._shown = False
        self._elsewhere_at_start: int | None = None

    def taken(self, result: SweepResult) -> int:
        """Runs taken by another process since this progress line started (Note [Taken runs])."""
        if self._elsewhere_at_start is None:
            self._elsewhere_at_start = len(result.elsewhere)
        return len(result.elsewhere) - self._elsewhere_at_start

    def line(self, result: SweepResult, running: int, *, now: float | None = None) -> str:
        """The progress text for ``result`` with ``running`` runs in flight."""
        from plasticrl.trainers.progress import eta_seconds, format_duration

        elapsed = (time.perf_counter() if now is None else now) - self.t0
        finished = len(result.ran) + len(result.resumed) + len(result.failed)
        queued = max(self.total - finished - running - len(result.interrupted) - self.taken(result), 0)
        eta = (
            "done"
            if finished >= self.total
            else f"ETA {format_duration(eta_seconds(finished, self.total, elapsed))}"
        )
        return (
            f"[sweep] {finished}/{self.total} finished ({len(result.failed)} failed) | {running} running "
            f"| {queued} queued | elapsed {format_duration(elapsed)} | {eta}"
        )

    def clear(self) -> None:
        """Erase the terminal line before another line is printed (no-op on a pipe)."""
        if self.enabled and self.tty and self._shown:
            self.out.write("\r\x1b[K")
            self._shown = False

    def draw(self, result: SweepResult, running: int, *, finished_one: bool) -> None:
        """Redraw on a terminal; on a pipe, print only when a run just finished."""
        if not self.enabled:
            return
        if self.tty:
            self.out.write("\r" + self.line(result, running) + "\x1b[K")
            self._shown = True
        elif finished_one:
            self.out.write(self.line(result, running) + "\n")
        self.out.flush()

    def close(self) -> None:
        """End the terminal line, so what follows starts on a fresh one."""
        if self.enabled and self.tty and self._shown:
            self.out.write("\n")
            self.out.flush()
            self._shown = False


def execute_sweep(
    runs: Sequence[SweepRun],
    *,
    workers: int,
    out: IO[str] | None = None,
    poll_s: float = 0.05,
    progress: bool = True,
) -> SweepResult:
    """Run every non-skipped run as a child process, at most ``workers`` at a time.

    Besides one line per run started and finished, :class:`SweepProgress` shows the whole
    sweep's progress (``progress=False`` turns it off).

    A failed run is recorded with its exit code and log path and does not stop the others.
    Ctrl-C (KeyboardInterrupt), SIGTERM or SIGHUP stops launching runs, sends one SIGINT to each
    running child (which checkpoints and exits) and waits for them; a second one terminates them.
    A run another process took since planning is reported as taken and the others go on
    (Note [Taken runs]).

    Args:
        runs: the planned runs (from :func:`plan_sweep`).
        workers: the most child processes at once (>= 1).
        out: where progress lines go (default stdout).
        poll_s: seconds between checks of the children.
        progress: show the sweep's :class:`SweepProgress` line.

    Returns:
        What ran, was skipped, resumed, failed or interrupted.
    """
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    out = sys.stdout if out is None else out
    result, pending = start_result(runs)
    bar = SweepProgress(len(pending), out, enabled=progress)
    running: list[_Child] = []
    previous_term = raise_on_sigterm()
    last_draw = 0.0
    try:
        while pending or running:
            changed = finished_one = False
            while pending and len(running) < workers:
                run = pending.pop(0)
                bar.clear()
                try:
                    child = _launch(run)
                except RunTaken as exc:
                    record_taken(run, str(exc).split(": ", 1)[-1], result, out)
                    changed = finished_one = True
                    continue
                print(f"{run.action:<7} {run.name}", file=out, flush=True)
                running.append(child)
                changed = True
            for child in list(running):
                code = child.process.poll()
                if code is not None:
                    running.remove(child)
                    bar.clear()
                    _finish(child, code, result, out)
                    changed = finished_one = True
            now = time.perf_counter()
            if changed or (bar.tty and now - last_draw >= 1.0):  # the terminal's clock ticks
                bar.draw(result, len(running), finished_one=finished_one)
                last_draw = now
            time.sleep(poll_s)
    except KeyboardInterrupt:
        bar.clear()
        print(f"interrupt: stopping {len(running)} running run(s) at a checkpoint", file=out, flush=True)
        result.interrupted.extend(r.name for r in pending)
        _stop_children(running, result, out)
    finally:
        bar.close()
        restore_handlers(previous_term)
    return result


STOP_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)
"""Signals that stop a sweep like Ctrl-C (what SLURM, Ray and ``kill`` send; a closed terminal)."""


class _PreviousHandlers(dict):  # type: ignore[type-arg]
    """The handlers :func:`raise_on_sigterm` replaced, by signal."""


def raise_on_sigterm() -> Any:
    """Make SIGTERM and SIGHUP stop the sweep like Ctrl-C (main thread only).

    Returns:
        The previous handlers (give them to :func:`restore_handlers`), or None off the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = _PreviousHandlers()
    for sig in STOP_SIGNALS:
        previous[sig] = signal.signal(sig, handler)
    return previous


def restore_handlers(previous: Any) -> None:
    """Undo :func:`raise_on_sigterm` (accepts None)."""
    if isinstance(previous, _PreviousHandlers):
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    elif previous is not None:  # an older caller's single SIGTERM handler
        signal.signal(signal.SIGTERM, previous)


def _stop_children(running: list[_Child], result: SweepResult, out: IO[str]) -> None:
    """Forward one SIGINT to each child and wait; a second Ctrl-C terminates them."""
    for child in running:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGINT)
    try:
        for child in running:
            child.process.wait()
    except KeyboardInterrupt:
        for child in running:
            if child.process.poll() is None:
                child.process.terminate()
        for child in running:
            child.process.wait()
    for child in running:
        _finish(child, child.process.returncode, result, out)


def start_result(runs: Sequence[SweepRun]) -> tuple[SweepResult, list[SweepRun]]:
    """The result before anything runs (skipped, running elsewhere) and the runs left to run."""
    result = SweepResult(
        skipped=[r.name for r in runs if r.action == "skip"],
        elsewhere=[r.name for r in runs if r.action == "running"],
    )
    return result, [r for r in runs if r.action in ("start", "resume")]


def summary_line(name: str, result: SweepResult) -> str:
    """``sweep <name>: N ran, M skipped (complete), K resumed, F failed`` (+ interrupted, elsewhere)."""
    line = (
        f"sweep {name}: {len(result.ran)} ran, {len(result.skipped)} skipped (complete), "
        f"{len(result.resumed)} resumed, {len(result.failed)} failed"
    )
    if result.interrupted:
        line += f", {len(result.interrupted)} interrupted (run the sweep again to resume)"
    if result.elsewhere:
        line += f", {len(result.elsewhere)} running elsewhere (left alone)"
    return line


# ----------------------------------------------------------------------------- the CLI command


def run_sweep_command(args: argparse.Namespace) -> int:
    """Run ``plasticrl sweep``; returns 0 if no run failed, 1 if one did, 130 when interrupted.

    Raises:
        ValueError: a bad sweep file or run config (the CLI prints it and exits with its
            bad-input code), before any run starts; ``--backend ray`` without Ray installed.
    """
    if args.backend == "ray" and args.workers is not None:
        raise ValueError(
            "--workers is for --backend local; Ray runs as many runs as the cluster has room for"
        )
    if args.backend != "ray" and args.address is not None:
        raise ValueError(f"--address {args.address!r} needs --backend ray")
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    spec = with_changes(
        load_sweep(args.sweep),
        seeds=args.seeds,
        overrides=args.overrides or (),
        name=args.name,
        folder=args.dir,
    )
    runs = plan_sweep(spec)
    if args.dry_run:
        for run in runs:
            print(describe_run(run))
        counts = {a: sum(r.action == a for r in runs) for a in ("start", "resume", "skip", "running")}
        print(
            f"sweep {spec.name}: {len(runs)} runs: {counts['start']} to start, "
            f"{counts['resume']} to resume, {counts['skip']} to skip (complete)"
            + (f", {counts['running']} running elsewhere" if counts["running"] else "")
        )
        return 0
    if args.backend == "ray":
        from plasticrl.trainers.experiments.sweep_ray import (
            execute_sweep_ray,  # Ray is optional: imported only here
        )

        result = execute_sweep_ray(runs, resources=spec.resources, address=args.address)
    else:
        result = execute_sweep(runs, workers=workers)
    print(summary_line(spec.name, result))
    for name, code, log in result.failed:
        print(f"  failed: {name} (exit code {code}) log: {log}")
    if result.interrupted:
        return EXIT_INTERRUPTED
    return 1 if result.failed else 0
