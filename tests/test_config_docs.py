"""Configuration documentation and defaults: every key has help text, docs/cli.md's table is generated from
it, and the defaults are the embedded default run."""

from __future__ import annotations

import re
from pathlib import Path

from rich.console import Console

from orchestrator import cli
from orchestrator.cli import main
from orchestrator.config import config_markdown, config_reference, load_config

REPO = Path(__file__).resolve().parents[1]
TABLE_RE = re.compile(r"<!-- config-table:start[^\n]*-->\n(.*?)<!-- config-table:end -->", re.DOTALL)


def test_every_config_key_has_help_text():
    rows = config_reference()
    assert len(rows) > 50 and len({key for key, *_ in rows}) == len(rows)
    assert [key for key, *_, meaning in rows if len(meaning) < 8] == []
    assert (
        "train.epochs",
        "3",
        "int >= 1",
        "training epochs of every branch (more epochs extend a finished run)",
    ) in rows


def test_the_documented_config_table_is_the_generated_one():
    found = TABLE_RE.search((REPO / "docs" / "cli.md").read_text())
    assert found, "docs/cli.md lost its config-table markers"
    assert found.group(1) == config_markdown(), "docs/cli.md's config table is stale: run scripts/config_table.py"


def test_config_show_prints_every_key(capsys, monkeypatch):
    monkeypatch.setattr(cli, "out", Console(width=400))  # a table as wide as its rows, whatever the terminal
    assert main(["config", "--show"]) == 0
    out = capsys.readouterr().out
    assert all(key in out and allowed in out for key, _, allowed, _ in config_reference())
    assert main(["config", "--markdown"]) == 0
    assert capsys.readouterr().out == config_markdown()


def test_one_set_of_defaults_the_embedded_default_run():
    """``spectral run`` without --config uses the defaults: exactly configs/fashion_mnist.yaml."""
    assert load_config(None) == load_config(REPO / "configs" / "fashion_mnist.yaml")
