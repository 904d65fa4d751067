"""Regenerate docs/cli.md's configuration table from the config fields' help texts.

    .venv/bin/python scripts/config_table.py      # rewrites docs/cli.md between the config-table markers

The table is ``spectral config --markdown``; ``tests/test_config_docs.py`` fails when the page differs.
"""

from __future__ import annotations

import re
from pathlib import Path

from orchestrator.config import config_markdown

PAGE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
TABLE_RE = re.compile(r"(<!-- config-table:start[^\n]*-->\n).*?(<!-- config-table:end -->)", re.DOTALL)


def page_with_table(text: str) -> str:
    """``text`` with the table between the markers replaced by the generated one."""
    if not TABLE_RE.search(text):
        raise SystemExit(f"{PAGE}: no config-table markers")
    return TABLE_RE.sub(lambda m: m.group(1) + config_markdown() + m.group(2), text)


if __name__ == "__main__":
    PAGE.write_text(page_with_table(PAGE.read_text()))
    print(f"{PAGE}: configuration table regenerated")
