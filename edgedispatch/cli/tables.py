"""The CLI's tables: a header row and aligned columns, as ``lk`` prints
them, and a sentence instead of an empty table."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> str:
    """``rows`` under ``header``, each column as wide as its widest cell
    (the last one is not padded); ``empty`` (one line) when there are no
    rows, so that an empty answer is not mistaken for no answer."""
    if not rows:
        return empty + "\n"
    table = [list(header), *(list(r) for r in rows)]
    widths = [max(len(r[c]) for r in table) for c in range(len(header) - 1)]
    lines = []
    for row in table:
        cells = [cell.ljust(w) for cell, w in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table (the benches print one, to be
    pasted into a note as it is); numbers are right-aligned."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            text = f"{value:,.3f}".rstrip("0").rstrip(".")
        elif isinstance(value, int) and not isinstance(value, bool):
            text = f"{value:,}"
        else:
            text = str(value)
        return text.replace("|", "\\|")

    numeric = [
        bool(rows) and all(isinstance(r[c], int | float) for r in rows) for c in range(len(header))
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
