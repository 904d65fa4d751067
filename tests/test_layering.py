"""One-way layering: data_split -> branches -> tune -> inference -> orchestrator (docs/design.md, "Layering").

A module may import its own package and the packages below it, never one above: parsed from the
source (every ``import``, at module level or inside a function), so a lazy import cannot hide one.
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


def modules() -> list[Path]:
    return sorted(p for layer in LAYERS if (REPO / layer).is_dir() for p in (REPO / layer).rglob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_a_layer_above_its_own(path):
    own = LAYERS.index(path.relative_to(REPO).parts[0])
    upward = sorted(p for p in imported_packages(path) if LAYERS.index(p) > own)
    assert not upward, f"{path.relative_to(REPO)} imports {upward}, above {LAYERS[own]} ({' -> '.join(LAYERS)})"


def test_the_check_sees_function_level_imports(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("def f():\n    from orchestrator.config import load_config\n    import tune.sweep\n")
    assert imported_packages(bad) == {"orchestrator", "tune"}


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
    config and checking which branches are finished (``branches.settled``) need none of it."""
    assert loaded("orchestrator.cli, orchestrator.launcher, branches.settled", ("torch",)) == []
