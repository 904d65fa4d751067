"""The one table renderer: a ``TextTable`` of strings, printed by the CLI (rich) or written as markdown
(``report/report.md``, ``tune/sweep.md``), and the number formats every table shares.

Builders live with what they show (``orchestrator.report_text``, ``orchestrator.sweep_text``,
``orchestrator.summaries``); none of them draws a border or pads a column itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.table import Table


@dataclass
class TextTable:
    header: list[str]
    rows: list[list[str]]
    align: str = ""  # "l" or "r" per column; unset: the first column left, the others right
    title: str = ""
    caption: str = ""
    sections: list[int] = field(default_factory=list)  # the rich table draws a rule before these rows

    def aligns(self) -> str:
        return self.align or "l" + "r" * (len(self.header) - 1)

    def markdown(self) -> list[str]:
        """The table's lines as GitHub markdown (no title or caption: the page says what it shows)."""
        rule = "|" + "|".join(":---" if a == "l" else "---:" for a in self.aligns()) + "|"
        return ["| " + " | ".join(self.header) + " |", rule, *("| " + " | ".join(row) + " |" for row in self.rows)]

    def rich(self, *, overflow: str | None = None) -> Table:
        """The table for a rich console; ``overflow="fold"`` wraps long cells instead of cutting them."""
        table = Table(title=self.title or None, caption=self.caption or None)
        for col, a in zip(self.header, self.aligns()):
            table.add_column(
                col, justify="left" if a == "l" else "right", **({"overflow": overflow} if overflow else {})
            )
        for i, row in enumerate(self.rows):
            if i in self.sections:
                table.add_section()
            table.add_row(*row)
        return table


# -- number formats ---------------------------------------------------------------------------------------
def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def size(n_bytes: float | None) -> str:
    """MiB printed "MB", as the paper does; KB below 0.01 MB."""
    if n_bytes is None:
        return "n/a"
    mib = n_bytes / 2**20
    return f"{mib:.2f} MB" if mib >= 0.01 else f"{n_bytes / 1024:.1f} KB"


def seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s:.1f} s" if s < 10 else f"{s:,.0f} s"


def data_bytes(n: float) -> str:
    """Bytes with a binary unit: ``512 B``, ``1.5 KB``, ... ``3.2 GB``."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"
