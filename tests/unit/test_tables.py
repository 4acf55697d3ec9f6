"""The CLI's tables: aligned with a header, markdown for the benches, and
the benches' latency plots."""

from __future__ import annotations

from pathlib import Path

from edgedispatch.cli.bench import plot
from edgedispatch.cli.tables import format_table, markdown_table


def test_a_table_has_a_header_and_aligned_columns() -> None:
    text = format_table(("ID", "NAME", "NOTE"), [("RM_1", "lobby", "x"), ("RM_22", "a", "")], "-")
    assert text.splitlines() == ["ID     NAME   NOTE", "RM_1   lobby  x", "RM_22  a"]


def test_an_empty_table_says_so() -> None:
    assert format_table(("ID", "NAME"), [], "no rooms") == "no rooms\n"


def test_markdown_tables_right_align_numbers_and_escape_pipes() -> None:
    text = markdown_table(("impl", "decisions/s", "p99 ms"), [["a|b", 1234567, 2.5]])
    assert text.splitlines() == [
        "| impl | decisions/s | p99 ms |",
        "|---|---:|---:|",
        "| a\\|b | 1,234,567 | 2.5 |",
    ]


def test_latency_plot_draws_a_png(tmp_path: Path) -> None:
    out = tmp_path / "latency.png"
    series = {"fast": [0.5 + i / 100 for i in range(200)], "slow": [3.0, 4.0, 40.0], "none": []}
    assert plot.latency_plot(str(out), "test", series) == 2
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
