"""benchmarks/_common: one record schema for every benchmark, and the results written before it read in it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import _common

REPO = Path(__file__).resolve().parents[1]
RESULT_FILES = sorted((REPO / "benchmarks" / "results").glob("*.json"))


def test_record_writes_the_schema(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "machine_info", lambda: {"cpu": "test", "nproc": 2})
    begun = _common.begin("storage", ["--part", "storage"])
    doc = _common.record(begun, {"ratio": 0.98}, tmp_path / "storage.json")
    assert json.loads((tmp_path / "storage.json").read_text()) == doc
    assert tuple(doc) == _common.RECORD_KEYS and doc["results"] == {"ratio": 0.98}
    assert doc["command"] == ".venv/bin/python -m benchmarks.storage --part storage"
    assert doc["machine"] == {"cpu": "test", "nproc": 2} and doc["benchmark"] == "storage"
    assert len(doc["load_average"]["before"]) == len(doc["load_average"]["after"]) == 3
    assert len(doc["git"]["commit"]) == 40 and isinstance(doc["git"]["dirty"], bool)
    assert _common.load(tmp_path / "storage.json") == doc


def test_an_older_record_is_read_in_the_schema_with_its_numbers_unchanged(tmp_path):
    old = {
        "command": "python -m benchmarks.vs_ddp",
        "date": "2026-11-28T16:20:35Z",
        "benchmark": "vs_ddp",
        "machine": {"cpu": "AMD EPYC", "loadavg_1m_before": 1.04, "loadavg_1m_after": 1.9},
        "load_before": [37.31, 54.49, 63.5],
        "load_after": [17.44, 41.27, 56.38],
        "wall_s": 12.5,
        "engines": [{"engine": "ddp", "bytes_per_worker": 36519086640}],
    }
    (tmp_path / "vs_ddp.json").write_text(json.dumps(old))
    doc = _common.load(tmp_path / "vs_ddp.json")
    assert tuple(doc) == _common.RECORD_KEYS and doc["git"] is None and doc["seconds"] == 12.5
    assert doc["started"] == "2026-11-28T16:20:35Z" and doc["machine"] == {"cpu": "AMD EPYC"}
    assert doc["load_average"] == {"before": [37.31, 54.49, 63.5], "after": [17.44, 41.27, 56.38]}
    assert doc["results"] == {"engines": old["engines"]}


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: p.name)
def test_every_committed_result_reads_in_the_schema(path):
    doc = _common.load(path)
    assert tuple(doc) == _common.RECORD_KEYS and doc["benchmark"] == path.stem
    assert doc["command"] and doc["machine"]["nproc"] >= 1 and doc["results"]


def test_the_benchmarks_page_and_the_readme_table_are_the_generated_ones():
    import sys

    sys.path.insert(0, str(REPO / "scripts"))
    import benchmarks_page

    assert (REPO / "docs" / "benchmarks.md").read_text() == benchmarks_page.page(), (
        "docs/benchmarks.md is stale: run scripts/benchmarks_page.py"
    )
    readme = (REPO / "README.md").read_text()
    assert benchmarks_page.readme_with_table(readme) == readme, (
        "README's results table is stale: run scripts/benchmarks_page.py"
    )
