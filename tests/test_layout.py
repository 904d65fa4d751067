"""The storage layout module: the one place that spells a run's paths, and its readers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from data_split import layout
from data_split.storage import RunStorage

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("data_split", "branches", "tune", "inference", "orchestrator")
# string literals that spell a path of docs/storage.md (docstrings and comments aside)
RUN_PATH_RE = re.compile(
    r"""["'](?:data/|branches/|ensemble/|report/|tune/|baseline/|baseline-ddp)|metrics\.jsonl["']|"""
    r"""result\.json["']|manifest\.json["']|lease\.json["']|placement\.json["']|logits_\{"""
)


def code_lines(path: Path) -> list[tuple[int, str]]:
    """Lines of code, without docstrings and comments (good enough for this check: no tokenizer needed)."""
    out, in_doc = [], False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith(('"""', "'''")):
            if not (len(stripped) > 3 and stripped.endswith(('"""', "'''"))):
                in_doc = not in_doc
            continue
        if in_doc or stripped.startswith("#"):
            continue
        out.append((n, line.split("  # ")[0]))
    return out


def test_no_module_but_the_layout_spells_a_run_path():
    offenders = [
        f"{p.relative_to(REPO)}:{n}: {line.strip()}"
        for package in PACKAGES
        if (REPO / package).is_dir()
        for p in sorted((REPO / package).rglob("*.py"))
        if p != REPO / "data_split" / "layout.py"
        for n, line in code_lines(p)
        if RUN_PATH_RE.search(line)
    ]
    assert not offenders, "run paths spelled outside data_split/layout.py:\n" + "\n".join(offenders)


def test_paths_and_child_runs(tmp_path):
    run = RunStorage(str(tmp_path / "run") + "/")
    assert layout.checkpoint(2, 7) == "branches/2/checkpoints/epoch=7.pt"
    assert layout.shard("val", 3, "part-000000000.parquet") == "data/val/branch=3/part-000000000.parquet"
    baseline = run.child(layout.BASELINE)
    assert baseline.path(layout.result(0)) == run.path("baseline", "branches", "0", "result.json")
    assert baseline.endpoint_url == run.endpoint_url


def test_readers(tmp_path):
    run = RunStorage(str(tmp_path / "run"))
    assert layout.read_metrics(run, 0) == [] and layout.read_result(run, 0) is None
    for line in ('{"epoch": 1, "loss": 3.0}', '{"epoch": 2, "loss": 2.0}', "not json", '{"epoch": 2, "loss": 1.5}'):
        run.append_line(layout.metrics(0), line)  # a resumed branch repeats epoch 2: the last line wins
    assert [(m["epoch"], m["loss"]) for m in layout.read_metrics(run, 0)] == [(1, 3.0), (2, 1.5)]
    run.write_json(layout.result(0), {"k": 0})
    assert layout.read_result(run, 0) == {"k": 0}
    with pytest.raises(layout.ManifestError, match="spectral split"):
        layout.load_manifest(run)
    run.write_json(layout.MANIFEST, {"version": layout.MANIFEST_VERSION + 1, "split": {}})
    with pytest.raises(layout.ManifestError, match=f"version {layout.MANIFEST_VERSION + 1}"):
        layout.load_manifest(run, fields=("split",))
