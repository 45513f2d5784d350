"""Many runs of one base config on one machine, in parallel processes (``plasticrl sweep``).

Contains:
    SweepRun: one planned run: its deterministic name, folder, log file, config and action.
    SweepResult: what a sweep did (ran, skipped, resumed, failed, interrupted runs).
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

A sweep file (read and validated by :mod:`plasticrl.trainers.experiments.sweep_file`)::

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
import itertools
import os
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

from plasticrl.trainers.checkpoint import CHECKPOINT_NAME, load_summary, recorded_summary
from plasticrl.trainers.config import (
    ConfigError,
    ExperimentConfig,
    applicable_only,
    config_to_dict,
    load_config,
    with_current_defaults,
)
from plasticrl.trainers.experiments.sweep_file import (
    SweepSpec,
    expand_grid,
    load_sweep,
    override_text,
    with_changes,
)
from plasticrl.trainers.run import RESUME_OVERRIDABLE, check_names
from plasticrl.trainers.runlock import RunFolderInUse, lock_run_dir, run_dir_holder, unlock_run_dir

__all__ = [
    "SweepRun",
    "SweepResult",
    "Action",
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

EXIT_INTERRUPTED = 130
"""Exit code of an interrupted sweep (and of an interrupted ``plasticrl train`` child)."""

Action = Literal["start", "resume", "skip", "running"]
"""What a sweep does with a run: start it from scratch, resume it from its checkpoint, or skip it."""

_IGNORED_ON_RESUME = ("logging", "checkpoint")  # sections that may differ from a run's checkpoint


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
            f"logging.dir={override_text(str(spec.sweep_dir))}",
            f"logging.name={override_text(leaf)}",
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
