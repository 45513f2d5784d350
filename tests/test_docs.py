"""docs/methods.md is the methods reference the code cites; citations must resolve."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INTERNAL = "METHODS" + ".md"  # the internal file, spelled so this file does not cite it
_SKIP = {".git", ".venv", "venv", "build", "node_modules"}


def _py_files() -> list[Path]:
    return [p for p in ROOT.rglob("*.py") if not _SKIP.intersection(p.relative_to(ROOT).parts)]


def test_no_py_file_cites_the_internal_methods_file() -> None:
    bad = [str(p) for p in _py_files() if INTERNAL in p.read_text("utf-8")]
    assert not bad, f"cite docs/methods.md instead of {INTERNAL} in: {bad}"


def test_cited_sections_exist() -> None:
    headings = set(re.findall(r"^#+ §(\d+(?:\.\d+)*)\b", (ROOT / "docs/methods.md").read_text("utf-8"), re.M))
    cited = {
        (m, str(p))
        for p in _py_files()
        for m in re.findall(r"docs/methods\.md §(\d+(?:\.\d+)*)", p.read_text("utf-8"))
    }
    missing = sorted(c for c in cited if c[0] not in headings)
    assert cited and not missing, f"sections cited but not in docs/methods.md: {missing}"
