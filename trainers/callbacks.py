"""Callbacks: your code, called by the training loops at fixed points, configured from YAML.

Contains:
    Callback: the hook protocol (every method optional): ``on_step``, ``on_update``,
        ``on_task_switch``, ``on_checkpoint``, ``on_end``.
    RunContext: what a hook sees of the run (config, agent, step) and what it may do (log scalars,
        stop the run early).
    Callbacks: the configured callbacks of a run, built from ``callbacks:`` entries.
    build_callbacks / check_callbacks: entries → instances; validate entries at start-up.

Config: a list of ``package.module:attr`` (a class or a factory, called with no arguments) or
``{name: package.module:attr, <kwarg>: <value>, ...}`` (called with the keyword arguments)::

    callbacks:
      - mypkg.hooks:StopWhenSolved            # early stopping
      - {name: mypkg.hooks:LogWeightNorm, every: 1000}

A callback that stops the run (``ctx.stop("solved")``) ends it at the end of the current
iteration, like Ctrl-C: the last checkpoint is written and the status is ``early stop: solved``.
A callback with ``state_dict``/``load_state_dict`` is checkpointed with the run. Hooks return
nothing or a dict of scalars, which are logged at the current step. The loops call nothing when no
callback is configured, and ``on_step`` only when a callback defines it.

Example (a whole early-stopping callback)::

    class StopWhenSolved:
        def __init__(self, threshold: float = 475.0) -> None:
            self.threshold = threshold

        def on_step(self, ctx):
            recent = ctx.recent_return
            if recent is not None and recent >= self.threshold:
                ctx.stop(f"mean return {recent:.1f} >= {self.threshold}")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from plasticrl.plasticity.registry import resolve_import

__all__ = ["Callback", "RunContext", "Callbacks", "build_callbacks", "check_callbacks", "HOOKS"]

HOOKS = ("on_step", "on_update", "on_task_switch", "on_checkpoint", "on_end")
"""The hook names, in the order a run first calls them."""


class Callback(Protocol):
    """What the loops call; define any subset (a missing hook is never called).

    ``on_step(ctx)``: after every vector-env step (``ctx.step`` env steps done).
    ``on_update(ctx, metrics)``: after every agent update (DQN: gradient step; PPO: one update of
    a rollout), with the update's metrics (floats).
    ``on_task_switch(ctx, task_id)``: where sub-env 0 starts a new task.
    ``on_checkpoint(ctx, path)``: after a checkpoint was written.
    ``on_end(ctx, status)``: once, when the run ends (``finished``, ``interrupted``, ``early stop:
    ...`` or ``stopped: ...``).
    """


@dataclass
class RunContext:
    """What a hook sees of the run, and the two things it may do."""

    config: Any
    """The resolved ``ExperimentConfig``."""
    run_dir: Path
    """The run folder."""
    agent: Any = None
    """The agent (``agent.model`` is the trained network, ``agent.optimizer`` its optimizer)."""
    step: int = 0
    """Env steps done (summed over sub-envs)."""
    recent_return: float | None = None
    """Mean return of the last 20 episodes (None before the first ended)."""
    stop_reason: str | None = None
    """Set by :meth:`stop`: the run ends at the end of this iteration."""
    _log: Callable[[Mapping[str, float], int], None] | None = field(default=None, repr=False)

    def log(self, scalars: Mapping[str, float]) -> None:
        """Log ``scalars`` at the current step (TensorBoard and any tracker)."""
        if self._log is not None and scalars:
            self._log(scalars, self.step)

    def detach_logger(self) -> None:
        """Stop logging (the run's logger is closed: the last checkpoint's ``on_checkpoint``)."""
        self._log = None

    def stop(self, reason: str) -> None:
        """End the run early at the end of this iteration (a checkpoint is written; status ``early stop``)."""
        self.stop_reason = str(reason)


def _entry_parts(entry: Any, key: str) -> tuple[str, dict[str, Any]]:
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
        return entry["name"], {k: v for k, v in entry.items() if k != "name"}
    raise ValueError(
        f"{key}: expected 'package.module:attr' or {{name: package.module:attr, ...}}, got {entry!r}"
    )


def check_callbacks(entries: Sequence[Any]) -> None:
    """Resolve every entry's import path (start-up check; nothing is built).

    Raises:
        ValueError: a malformed entry or an import path that does not resolve, naming ``callbacks[i]``.
    """
    for i, entry in enumerate(entries):
        spec, _ = _entry_parts(entry, f"callbacks[{i}]")
        try:
            target = resolve_import(spec)
        except ValueError as exc:
            raise ValueError(f"callbacks[{i}]: {exc}") from None
        if not callable(target):
            raise ValueError(f"callbacks[{i}]: {spec!r} is not a class or factory")


def build_callbacks(entries: Sequence[Any]) -> list[Any]:
    """The callback instances of ``callbacks:`` entries, in order.

    Raises:
        ValueError: as :func:`check_callbacks`, or a factory that refuses its keyword arguments.
    """
    check_callbacks(entries)
    out = []
    for i, entry in enumerate(entries):
        spec, kwargs = _entry_parts(entry, f"callbacks[{i}]")
        factory: Any = resolve_import(spec)
        try:
            out.append(factory(**kwargs))
        except TypeError as exc:
            raise ValueError(f"callbacks[{i}]: {spec} rejected {kwargs}: {exc}") from None
    return out


class Callbacks:
    """A run's callbacks and its :class:`RunContext`; falsy when there are none.

    Args:
        callbacks: the instances (:func:`build_callbacks`).
        ctx: the context the hooks get.
    """

    def __init__(self, callbacks: Sequence[Any], ctx: RunContext) -> None:
        self.callbacks = list(callbacks)
        self.ctx = ctx
        self._hooks = {name: [getattr(c, name) for c in self.callbacks if hasattr(c, name)] for name in HOOKS}
        self.wants_steps = bool(self._hooks["on_step"])
        """Whether a callback defines ``on_step`` (the loops skip the call otherwise)."""

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def _call(self, name: str, step: int, *args: Any) -> None:
        self.ctx.step = step
        for hook in self._hooks[name]:
            scalars = hook(self.ctx, *args)
            if scalars:
                self.ctx.log(scalars)

    def on_step(self, step: int, recent_return: float | None) -> None:
        """After a vector-env step."""
        self.ctx.recent_return = recent_return
        self._call("on_step", step)

    def on_update(self, step: int, metrics: Mapping[str, Any]) -> None:
        """After an agent update (metrics as floats)."""
        if self._hooks["on_update"]:
            self._call("on_update", step, {k: float(v) for k, v in metrics.items()})

    def on_task_switch(self, step: int, task_id: int) -> None:
        """Where sub-env 0 starts a new task."""
        self._call("on_task_switch", step, task_id)

    def on_checkpoint(self, step: int, path: Path) -> None:
        """After a checkpoint was written."""
        self._call("on_checkpoint", step, path)

    def on_end(self, step: int, status: str) -> None:
        """When the run ends."""
        self._call("on_end", step, status)

    @property
    def stop_reason(self) -> str | None:
        """Why a callback stopped the run (None: none did)."""
        return self.ctx.stop_reason

    def state_dict(self) -> list[Any]:
        """Each callback's ``state_dict()`` (None for those without one)."""
        return [c.state_dict() if hasattr(c, "state_dict") else None for c in self.callbacks]

    def load_state_dict(self, state: Sequence[Any] | None) -> None:
        """Restore :meth:`state_dict` (a checkpoint without callbacks restores nothing)."""
        if state is None:
            return
        for callback, entry in zip(self.callbacks, state, strict=False):
            if entry is not None and hasattr(callback, "load_state_dict"):
                callback.load_state_dict(entry)
