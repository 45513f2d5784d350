"""The installed package: its namespace, its public names, its doctests and its import graph."""

from __future__ import annotations

import ast
import doctest
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import plasticrl
import pytest

REPO = Path(__file__).resolve().parents[1]
BARE = ("agents", "envs", "trainers", "plasticity")


def _modules() -> list[str]:
    names = ["plasticrl"]
    for info in pkgutil.walk_packages(plasticrl.__path__, "plasticrl."):
        names.append(info.name)
    for sub in BARE:  # the subpackages live in their own folders: walk each
        package = importlib.import_module(f"plasticrl.{sub}")
        names.append(package.__name__)
        names.extend(i.name for i in pkgutil.walk_packages(package.__path__, f"plasticrl.{sub}."))
    return sorted(set(names))


MODULES = _modules()


def test_public_names_come_from_the_package_root() -> None:
    from plasticrl import AdamO, NonStationary, PlasticityProbe, train

    assert AdamO.__module__ == "plasticrl.plasticity.adamo"
    assert NonStationary.__module__ == "plasticrl.envs.nonstationary"
    assert PlasticityProbe.__module__.startswith("plasticrl.plasticity.")
    assert callable(train)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        plasticrl.nope  # noqa: B018


def test_bare_top_level_names_do_not_resolve_to_us_outside_the_repo(tmp_path: Path) -> None:
    """A user's own ``envs/`` must never collide with ours: after install only ``plasticrl.*`` exists."""
    code = (
        "import importlib.util, json\n"
        f"print(json.dumps({{n: importlib.util.find_spec(n) is not None for n in {list(BARE)!r}}}))\n"
        "import plasticrl.envs, plasticrl.trainers.cli\n"
        "print(plasticrl.envs.__file__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == '{"agents": false, "envs": false, "trainers": false, "plasticity": false}'
    assert Path(out[1]).resolve() == REPO / "envs" / "__init__.py"


def _imports(path: Path, module: str) -> set[str]:
    """Modules that ``module`` (file ``path``) imports, at any depth of its code."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names)  # submodules imported by name
    return out


def _source_files() -> list[Path]:
    files = []
    for sub in BARE:
        files.extend(p for p in (REPO / sub).rglob("*.py"))
    return files


def test_no_code_imports_the_bare_top_level_names() -> None:
    offenders = []
    for path in [*_source_files(), *(REPO / "tests").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py")]:
        for name in _imports(path, "x"):
            if name.split(".")[0] in BARE:
                offenders.append(f"{path.relative_to(REPO)}: {name}")
    assert not offenders, offenders


def test_there_is_no_import_cycle_in_the_package() -> None:
    """Every import, at module level or inside a function, counts: the graph must be a DAG."""
    modules = {}
    for name in MODULES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        modules[name] = Path(spec.origin)
    graph = {
        name: sorted(m for m in _imports(path, name) if m in modules and m != name)
        for name, path in modules.items()
    }
    # A package's __init__ re-exports its modules; a module importing a sibling through the
    # package name is an edge to the package, which is what makes cycles visible.
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    """The examples in every module's docstrings run and give what they show."""
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
