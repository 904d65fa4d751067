"""Regenerate the README's configuration table from the config fields' help texts.

    .venv/bin/python scripts/config_table.py      # rewrites README.md between the config-table markers

The table is ``spectral config --markdown``; ``tests/test_config_docs.py`` fails when the README differs.
"""

from __future__ import annotations

import re
from pathlib import Path

from orchestrator.config import config_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
TABLE_RE = re.compile(r"(<!-- config-table:start[^\n]*-->\n).*?(<!-- config-table:end -->)", re.DOTALL)


def readme_with_table(text: str) -> str:
    """``text`` with the table between the markers replaced by the generated one."""
    if not TABLE_RE.search(text):
        raise SystemExit(f"{README}: no config-table markers")
    return TABLE_RE.sub(lambda m: m.group(1) + config_markdown() + m.group(2), text)


if __name__ == "__main__":
    README.write_text(readme_with_table(README.read_text()))
    print(f"{README}: configuration table regenerated")
