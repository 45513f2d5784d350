"""The Ray backend of ``plasticrl sweep``: each run is one Ray task (``--backend ray``).

Contains:
    RAY_INSTALL: the command that installs the optional Ray dependency.
    task_options: a run's Ray task options (CPUs, GPUs, no retries) from the sweep's ``resources`` (pure).
    unschedulable: the first task no alive node is big enough for, as a message (pure).
    execute_sweep_ray: submit every run that is not skipped as a Ray task and report each as it
        finishes, with the same lines, :class:`~plasticrl.trainers.experiments.sweep.SweepResult` and
        summary as the local
        backend.

A run's task starts the same child as the local backend, ``python -m plasticrl.trainers.cli train ...`` with
one OpenMP/MKL thread per ``torch_threads``, as a subprocess on the worker node; the child writes
the run's log (``<run_dir>.log``) and the task returns its exit code. A task asks Ray for
``resources.cpus`` CPUs (default: the run's ``torch_threads``, or 1 when that is null) and
``resources.gpus`` GPUs (default: 1 for a ``cuda`` device, else 0); Ray makes the GPUs it assigns
visible to the child as ``cuda:0``, ``cuda:1``, ... Tasks are not retried: a failed run is reported
(exit code and log), the others go on, and running the sweep again retries it. A task that fails
itself (its node died, the working directory is missing there) counts as failed with exit code 1,
its error appended to the run's log.

Assumptions on a cluster (``--address auto``, ``host:port`` or ``ray://host:port``):
    * every node sees the driver's files at the same paths (a shared filesystem): the presets, the
      sweep's folder, and the driver's working directory, which the driver passes to every task
      (the child runs there, so relative paths mean what they mean on the driver);
    * the Python that runs Ray's workers on every node has plasticrl installed (the same version);
      the child uses that interpreter.

Ctrl-C (or SIGTERM) cancels the queued tasks and, through ``ray.cancel``, raises KeyboardInterrupt in
each running task, which forwards one SIGINT to its child: the child writes a checkpoint and exits,
and running the sweep again resumes it. A second Ctrl-C cancels again: the tasks terminate their
children. ``ray`` is imported inside the functions that need it: :mod:`trainers` works without it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import IO, Any

from plasticrl.trainers.experiments.sweep import (
    EXIT_TAKEN,
    RunTaken,
    SweepResult,
    SweepRun,
    child_command,
    open_run_log,
    raise_on_sigterm,
    record_exit,
    restore_handlers,
    start_result,
    thread_env,
)

__all__ = ["RAY_INSTALL", "task_options", "unschedulable", "execute_sweep_ray"]

RAY_INSTALL = 'pip install -e ".[ray]"'
"""How to install the optional Ray dependency (from a plasticrl checkout)."""

_TASK_POLL_S = 0.1
"""Seconds between a task's checks of its child (Ray's KeyboardInterrupt is seen between them)."""

# Ray's worker processes block SIGINT (and may ignore it); a child inherits both across exec, so it
# could miss the SIGINT that asks it to checkpoint. This restores SIGINT, then becomes the child.
_RESTORE_SIGINT_AND_EXEC = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT]); os.execv(sys.argv[1], sys.argv[1:])"
)


# ----------------------------------------------------------------------------- pure parts


def _quantity(value: float) -> int | float:
    """``value`` as an int when whole (Ray prints and compares those most plainly)."""
    return int(value) if float(value).is_integer() else float(value)


def task_options(run: SweepRun, resources: Mapping[str, float]) -> dict[str, Any]:
    """The Ray options of a run's task.

    Args:
        run: the planned run.
        resources: the sweep file's ``resources`` (optional keys ``cpus`` and ``gpus``).

    Returns:
        ``num_cpus``: ``resources["cpus"]``, else the run's ``torch_threads``, else 1;
        ``num_gpus``: ``resources["gpus"]``, else 1 when the run's ``device`` is CUDA, else 0;
        ``max_retries``: 0 (a failed run is reported, not run again by Ray).

    Raises:
        ValueError: CPUs not > 0, GPUs < 0, or a ``cuda:<i>`` device beyond the GPUs the task gets.

    Examples:
        >>> from plasticrl.trainers.config import ExperimentConfig
        >>> run = SweepRun("sw/s0", Path("r"), Path("r.log"), (), ExperimentConfig(), "start")
        >>> task_options(run, {})
        {'num_cpus': 1, 'num_gpus': 0, 'max_retries': 0}
        >>> task_options(run, {"cpus": 2.0, "gpus": 0.5})
        {'num_cpus': 2, 'num_gpus': 0.5, 'max_retries': 0}
    """
    device = run.config.device
    cpus = resources.get("cpus", run.config.torch_threads or 1)
    gpus = resources.get("gpus", 1 if device.startswith("cuda") else 0)
    if isinstance(cpus, bool) or not isinstance(cpus, int | float) or not cpus > 0:
        raise ValueError(f"run {run.name!r}: resources.cpus must be a number > 0, got {cpus!r}")
    if isinstance(gpus, bool) or not isinstance(gpus, int | float) or not gpus >= 0:
        raise ValueError(f"run {run.name!r}: resources.gpus must be a number >= 0, got {gpus!r}")
    _, _, index = device.partition(":")
    if device.startswith("cuda") and index and gpus > 0 and int(index) >= math.ceil(gpus):
        raise ValueError(
            f"run {run.name!r}: device {device!r}, but its Ray task gets {gpus:g} GPU(s), which the "
            f"child sees as cuda:0..cuda:{math.ceil(gpus) - 1}; use device=cuda (Ray picks the GPU)"
        )
    return {"num_cpus": _quantity(cpus), "num_gpus": _quantity(gpus), "max_retries": 0}


def unschedulable(
    runs: Sequence[SweepRun], options: Sequence[Mapping[str, Any]], nodes: Sequence[Mapping[str, float]]
) -> str | None:
    """Why the first task that fits on no node cannot run, or None when every task fits on one.

    Args:
        runs: the runs to submit.
        options: their :func:`task_options`.
        nodes: each alive node's total resources (Ray's names: ``CPU``, ``GPU``).
    """
    cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    gpus = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    for run, opts in zip(runs, options, strict=True):
        want_cpus, want_gpus = opts["num_cpus"], opts["num_gpus"]
        if not any(n.get("CPU", 0.0) >= want_cpus and n.get("GPU", 0.0) >= want_gpus for n in nodes):
            return (
                f"run {run.name!r} asks for {want_cpus:g} CPU(s) and {want_gpus:g} GPU(s), more than any "
                f"of the {len(nodes)} Ray node(s) has (largest: {cpus:g} CPU(s), {gpus:g} GPU(s))"
            )
    return None


# ----------------------------------------------------------------------------- the task (worker side)


def _poll(process: subprocess.Popen[bytes]) -> int:
    """Wait for ``process`` in short sleeps: Ray's cancel sets a KeyboardInterrupt seen between them."""
    while (code := process.poll()) is None:
        time.sleep(_TASK_POLL_S)
    return code


def _let_cancel_interrupt() -> None:
    """Give SIGINT Python's handler in this worker: ``ray.cancel`` interrupts a task only through it.

    Workers of a Ray instance started where SIGINT is ignored (a background job) ignore it too.
    """
    handler = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is threading.main_thread() and handler in (signal.SIG_IGN, signal.SIG_DFL):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _run_task(run: SweepRun, cwd: str, thread_env: Mapping[str, str]) -> int:
    """A run's Ray task, on a worker node: run its child in ``cwd`` and return the exit code.

    Args:
        run: the run, its paths absolute (the driver's, on a shared filesystem).
        cwd: the driver's working directory; the child runs there.
        thread_env: ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` for the child (over this node's).

    Returns:
        The child's exit code (130: it was stopped by ``ray.cancel`` after writing a checkpoint;
        ``EXIT_TAKEN``: another process took the run since planning, Note [Taken runs] in
        :mod:`plasticrl.trainers.experiments.sweep`).

    Raises:
        RuntimeError: ``cwd`` does not exist on this node (no shared filesystem).
    """
    if not Path(cwd).is_dir():
        raise RuntimeError(
            f"the driver's working directory {cwd!r} does not exist on Ray node {platform.node()!r}; "
            "--backend ray needs every node to see the driver's files at the same paths"
        )
    _let_cancel_interrupt()
    command = [sys.executable, *child_command(run)[1:]]  # this node's interpreter
    try:
        log_file = open_run_log(run, command)
    except RunTaken:  # another process took it since planning: the driver reports it as taken
        return EXIT_TAKEN
    with log_file as log:
        process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
            [sys.executable, "-c", _RESTORE_SIGINT_AND_EXEC, *command],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **thread_env},
            start_new_session=True,  # signals reach the child only through this task
        )
        try:
            return _poll(process)
        except KeyboardInterrupt:  # ray.cancel: the child writes a checkpoint and exits
            process.send_signal(signal.SIGINT)
        try:
            return _poll(process)
        except KeyboardInterrupt:  # cancelled again: stop now
            process.terminate()
            return process.wait()


# ----------------------------------------------------------------------------- the driver


def _import_ray() -> ModuleType:
    """The ``ray`` module.

    Raises:
        ValueError: Ray is not installed (or fails to import), with the command that installs it.
    """
    try:
        import ray
    except ImportError as exc:
        if exc.name == "ray":
            raise ValueError(
                f"--backend ray needs Ray, which is not installed; install it: {RAY_INSTALL}"
            ) from None
        raise ValueError(f"--backend ray: Ray fails to import ({exc}); reinstall it: {RAY_INSTALL}") from None
    return ray


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast when nothing listens at ``host:port`` / ``ray://host:port`` (Ray retries for minutes).

    Raises:
        ValueError: a malformed address, or no answer at it within ``timeout_s``.
    """
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--address {address!r}: expected 'auto', 'host:port' or 'ray://host:port'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ValueError(f"--address {address!r}: no Ray cluster answers there ({exc})") from None


def _connect(ray: ModuleType, address: str | None) -> str:
    """``ray.init``: a new local instance (``address`` None) or the cluster at ``address``; says which.

    Raises:
        ValueError: no Ray cluster at ``address``.
    """
    if address is not None:
        _check_reachable(address)
    try:
        if address is None:
            ray.init(
                address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
            )
            return "a local Ray instance"
        ray.init(address=address)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ValueError(
            f"--address {address!r}: cannot connect to a Ray cluster: {_one_line(exc)}"
        ) from None
    return f"the Ray cluster at {address}"


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """``exc``'s type and message on one line of at most ``limit`` characters."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _collect(ray: ModuleType, ref: Any, run: SweepRun, result: SweepResult, out: IO[str]) -> None:
    """Record a finished task: its child's exit code, a cancelled task, or a task that failed itself."""
    try:
        code = ray.get(ref)
    except ray.exceptions.TaskCancelledError:  # cancelled before its child started
        result.interrupted.append(run.name)
        return
    except ray.exceptions.RayError as exc:  # the task raised, or its worker or node died
        cause = getattr(exc, "cause", None)  # the task's own exception, when it raised one
        detail = _one_line(cause if isinstance(cause, BaseException) else exc)
        try:
            with run.log_path.open("a") as log:
                log.write(f"\nplasticrl sweep --backend ray: the run's task failed: {exc}\n")
        except OSError:
            pass
        result.failed.append((run.name, 1, run.log_path))
        print(f"FAILED  {run.name} (Ray task: {detail}; log: {run.log_path})", file=out, flush=True)
        return
    record_exit(run, code, result, out)


def _wait_all(ray: ModuleType, refs: Sequence[Any], poll_s: float) -> None:
    """Return when every task in ``refs`` has finished (Python sees Ctrl-C between waits)."""
    left = list(refs)
    while left:
        _, left = ray.wait(left, num_returns=len(left), timeout=poll_s)


def execute_sweep_ray(
    runs: Sequence[SweepRun],
    *,
    resources: Mapping[str, float] | None = None,
    address: str | None = None,
    out: IO[str] | None = None,
    poll_s: float = 0.5,
) -> SweepResult:
    """Run every non-skipped run as a Ray task; report each as it finishes.

    Uses the Ray instance this process is already connected to, if any (``address`` is then not
    used); otherwise starts a local one (``address`` None) or connects to ``address``, and shuts that
    down (or disconnects from it) at the end.
    A failed run is recorded with its exit code and log path and does not stop the others.

    Args:
        runs: the planned runs (from :func:`~plasticrl.trainers.experiments.sweep.plan_sweep`).
        resources: the sweep file's ``resources`` (see :func:`task_options`).
        address: None or ``local`` (start a local Ray instance), ``auto`` (the cluster this machine
            is part of, or ``RAY_ADDRESS``), ``host:port`` or ``ray://host:port``.
        out: where progress lines go (default stdout).
        poll_s: seconds between checks for finished tasks (and for Ctrl-C).

    Returns:
        What ran, was skipped, resumed, failed or interrupted.

    Raises:
        ValueError: Ray is not installed, no cluster at ``address``, bad ``resources``, or a task
            that fits on no node of the Ray instance this call started.
    """
    ray = _import_ray()
    address = None if address == "local" else address
    out = sys.stdout if out is None else out
    result, todo = start_result(runs)
    options = [task_options(r, resources or {}) for r in todo]
    if not todo:
        return result
    started = not ray.is_initialized()
    where = _connect(ray, address) if started else "the connected Ray instance"
    try:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        problem = unschedulable(todo, options, nodes)
        if problem and address is None and started:
            raise ValueError(f"{problem}; lower 'resources' in the sweep file")
        if problem:
            print(f"warning: {problem}; it waits until the cluster has such a node", file=out, flush=True)
        total = ray.cluster_resources()
        print(
            f"ray: {len(todo)} run(s) as tasks on {where} "
            f"({total.get('CPU', 0):g} CPU(s), {total.get('GPU', 0):g} GPU(s))",
            file=out,
            flush=True,
        )
        return _submit_and_wait(ray, todo, options, result, out, poll_s)
    finally:
        if started:
            ray.shutdown()


def _submit_and_wait(
    ray: ModuleType,
    todo: Sequence[SweepRun],
    options: Sequence[Mapping[str, Any]],
    result: SweepResult,
    out: IO[str],
    poll_s: float,
) -> SweepResult:
    """Submit the tasks, record each as it finishes; on Ctrl-C or SIGTERM, stop them at a checkpoint."""
    task = ray.remote(_run_task)
    cwd = Path.cwd()
    runs_of: dict[Any, SweepRun] = {}
    queued = list(zip(todo, options, strict=True))
    previous_term = raise_on_sigterm()
    try:
        while queued:
            run, opts = queued[0]
            on_shared_fs = dataclasses.replace(
                run, run_dir=cwd / run.run_dir, log_path=cwd / run.log_path, preset=cwd / run.preset
            )
            ref = task.options(**opts).remote(on_shared_fs, str(cwd), thread_env(run))
            runs_of[ref] = run
            queued.pop(0)
            print(f"{run.action:<7} {run.name}", file=out, flush=True)
        while runs_of:
            ready, _ = ray.wait(list(runs_of), num_returns=1, timeout=poll_s)
            for ref in ready:
                _collect(ray, ref, runs_of.pop(ref), result, out)
    except KeyboardInterrupt:
        print(
            f"interrupt: stopping {len(runs_of)} run(s) at a checkpoint (queued ones are cancelled)",
            file=out,
            flush=True,
        )
        result.interrupted.extend(run.name for run, _ in queued)
        _stop(ray, runs_of, result, out, poll_s)
    finally:
        restore_handlers(previous_term)
    return result


def _stop(
    ray: ModuleType, runs_of: Mapping[Any, SweepRun], result: SweepResult, out: IO[str], poll_s: float
) -> None:
    """Cancel every task (its child checkpoints) and wait; a second Ctrl-C makes them terminate."""
    refs = list(runs_of)
    for ref in refs:
        ray.cancel(ref)
    try:
        _wait_all(ray, refs, poll_s)
    except KeyboardInterrupt:
        print("interrupt again: terminating the running runs", file=out, flush=True)
        for ref in refs:
            ray.cancel(ref)
        _wait_all(ray, refs, poll_s)
    for ref in refs:
        _collect(ray, ref, runs_of[ref], result, out)
