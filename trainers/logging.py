"""Metric logging: the one place that imports ``SummaryWriter``.

Contains:
    MetricLogger: the protocol trainers log through (``log``, ``text``, ``close``).
    TensorBoardLogger: writes scalars and text to a run folder.
    config_markdown: the resolved config as a markdown table (TensorBoard text, CleanRL-style).

Tags follow CleanRL (``charts/…``, ``losses/…``) so that existing tooling reads them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from torch.utils.tensorboard import SummaryWriter

__all__ = ["MetricLogger", "TensorBoardLogger", "config_markdown"]


class MetricLogger(Protocol):
    """Where trainers send scalars; agents and metrics never see it."""

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        """Record each ``tag → value`` at ``step``."""
        ...

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Record a text blob (the config)."""
        ...

    def layout(self, layout: Mapping[str, Any]) -> None:
        """Record a chart layout (TensorBoard custom scalars: category → chart → spec)."""
        ...

    def close(self) -> None:
        """Flush and release files."""
        ...


class TensorBoardLogger:
    """TensorBoard event files in ``run_dir``.

    Args:
        run_dir: the run folder.
        purge_step: on resume, the checkpoint's step: events a crashed run wrote at or after it
            are hidden, so the resumed curves continue without duplicates.
    """

    def __init__(self, run_dir: str | Path, purge_step: int | None = None) -> None:
        _after_existing_event_files(Path(run_dir))
        self.writer = SummaryWriter(str(run_dir), purge_step=purge_step, flush_secs=30)

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        """Write every scalar at ``step``."""
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, float(value), step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Write a markdown text blob."""
        self.writer.add_text(tag, text, step)

    def layout(self, layout: Mapping[str, Any]) -> None:
        """Write a custom-scalars layout (e.g. every layer's dormant curve in one chart)."""
        self.writer.add_custom_scalars(dict(layout))

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


def _after_existing_event_files(run_dir: Path) -> None:
    """Wait, if needed, until a new event file would sort after the folder's existing ones.

    Readers take event files in name order, and a name starts with the creation second; a file
    made in the same second as an earlier one (a resume right after a short run, in one process)
    can sort before it — its purge of the crashed tail would then hit the wrong file.
    """
    seconds = []
    for path in run_dir.glob("events.out.tfevents.*"):
        field = path.name.split(".")[3]
        if field.isdigit():
            seconds.append(int(field))
    while seconds and int(time.time()) <= max(seconds):
        time.sleep(0.05)


def config_markdown(flat: Mapping[str, object]) -> str:
    """A two-column markdown table of ``key → value``."""
    rows = "\n".join(f"|{key}|{value}|" for key, value in flat.items())
    return f"|param|value|\n|-|-|\n{rows}"
