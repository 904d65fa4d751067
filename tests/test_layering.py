"""One-way layering: data_split -> branches -> tune -> inference -> orchestrator (docs/design.md, "Layering"),
and no import cycle between any two modules of the product.

A module may import its own package and the packages below it, never one above, and no module may reach
itself through its imports: parsed from the source (every ``import``, at module level, inside a function
or under ``TYPE_CHECKING``), so a lazy import cannot hide either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("data_split", "branches", "tune", "inference", "orchestrator")  # lowest first


def imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(LAYERS)


def modules(root: Path = REPO) -> list[Path]:
    return sorted(p for layer in LAYERS if (root / layer).is_dir() for p in (root / layer).rglob("*.py"))


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """Module -> the product modules it imports. ``from pkg import name`` is ``pkg.name`` when that is a
    module, else ``pkg`` (its ``__init__``); the parent packages that Python initialises first are not
    edges (every submodule would otherwise form a cycle with its package)."""
    paths = {module_name(p, root): p for p in modules(root)}

    def resolve(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in paths.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {resolve(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets |= {resolve(f"{node.module}.{alias.name}") for alias in node.names}
        graph[name] = targets - {None, name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``), or None."""
    done, path = set(), []

    def visit(name: str) -> list[str] | None:
        if name in path:
            return path[path.index(name) :] + [name]
        if name in done:
            return None
        path.append(name)
        for target in sorted(graph.get(name, ())):
            if cycle := visit(target):
                return cycle
        path.pop()
        done.add(name)
        return None

    return next((cycle for name in sorted(graph) if (cycle := visit(name))), None)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_a_layer_above_its_own(path):
    own = LAYERS.index(path.relative_to(REPO).parts[0])
    upward = sorted(p for p in imported_packages(path) if LAYERS.index(p) > own)
    assert not upward, f"{path.relative_to(REPO)} imports {upward}, above {LAYERS[own]} ({' -> '.join(LAYERS)})"


def test_the_check_sees_function_level_imports(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from orchestrator.config import load_config\n    import tune.sweep\n")
    assert imported_packages(bad) == {"orchestrator", "tune"}


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_cycle_check_sees_lazy_and_type_only_imports(tmp_path):
    pkg = tmp_path / "data_split"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from data_split import b\n")  # b is a module: an edge to it, not to the package
    (pkg / "b.py").write_text("def f():\n    from data_split.c import g\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from data_split.a import x\n")
    assert import_graph(tmp_path) == {
        "data_split": set(),
        "data_split.a": {"data_split.b"},
        "data_split.b": {"data_split.c"},
        "data_split.c": {"data_split.a"},
    }
    assert find_cycle(import_graph(tmp_path)) == ["data_split.a", "data_split.b", "data_split.c", "data_split.a"]
    (pkg / "c.py").write_text("import numpy\n")
    assert find_cycle(import_graph(tmp_path)) is None


PRIVATE_ACROSS_PACKAGES = {"branches._faults"}  # test-only fault injection, called by every engine's loop


def test_underscore_modules_are_imported_only_by_their_own_package():
    crossing = sorted(
        f"{name} imports {target}"
        for name, targets in import_graph().items()
        for target in targets
        if target not in PRIVATE_ACROSS_PACKAGES
        and target.split(".")[0] != name.split(".")[0]
        and any(part.startswith("_") for part in target.split(".")[1:])
    )
    assert crossing == [], "a module used by another package is public: drop its underscore"


def loaded(imports: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has loaded after ``import <imports>``."""
    import subprocess
    import sys

    code = f"import sys, {imports}\nprint(','.join(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    return [m for m in out.strip().split(",") if m]


def test_importing_the_lower_layers_loads_neither_ray_nor_matplotlib():
    """A sweep trial or a config parser pays for what it uses: Ray is imported where a search starts."""
    imports = "data_split.config, branches.config, tune.config, tune.sweep, tune.weights, tune._sweep_trial"
    assert loaded(imports, ("ray", "matplotlib")) == []


def test_the_cli_imports_no_torch():
    """The CLI, and with it a job's driver, starts in about a second: torch is for the branch actors. Parsing a
    config and checking which branches are finished (``branches.finished``) need none of it. Nor do the API's
    options: MLflow is imported when ``tracking.mlflow_uri`` is set, shtab by ``spectral completion``, matplotlib
    when a report is drawn."""
    imports = "orchestrator.cli, orchestrator.api, orchestrator.launcher, branches.finished"
    assert loaded(imports, ("torch", "mlflow", "shtab", "matplotlib")) == []
