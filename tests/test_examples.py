"""The example scripts of ``docs/examples/`` run as a user runs them and check what they claim.

Each script asserts its own result (AdamO shrinks the hidden layers' isometry gap, ReDo revives
dead units, a loaded agent has the trained weights, ...) and ends by printing ``ok``; here each runs
in a fresh interpreter from an empty folder (so it depends on no working directory).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "docs" / "examples").glob("*.py"))


def test_the_examples_are_there() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"adamo_probe_own_loop", "nonstationary_own_env", "train_and_load"} <= names


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "ok", done.stdout
    assert list(tmp_path.iterdir()) == []  # examples leave nothing behind
