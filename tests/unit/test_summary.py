"""The run summary as a person reads it on a terminal of 80 columns."""

from __future__ import annotations

import io
import re

from rich.console import Console

from loader.flow.summary import BATCH_COLUMNS, ROW_COLUMNS, RunSummary, TableSummary
from loader.tables import TABLES


def million_row_summary() -> RunSummary:
    summary = RunSummary("20261126T080000Z-abc123", "/data/in", 1000, "reject_batch")
    for table, rows in zip(TABLES, (12, 120, 1_234_567)):
        item = TableSummary(table.name, f"/data/in/{table.file_name}")
        item.rows_read, item.rows_failing = rows, rows // 50
        item.rows_promoted, item.rows_held_back = rows - rows // 40, rows // 40
        item.batches_read = item.batches_skipped = -(-rows // 1000)
        item.batches_promoted, item.batches_rejected = item.batches_read - 7, 7
        item.batches_waiting, item.batches_failed, item.batches_partially_promoted = 3, 2, 1
        summary.tables.append(item)
    return summary


def rendered(summary: RunSummary, width: int) -> list[str]:
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    summary.render(console)
    return [line.rstrip() for line in console.export_text().splitlines()]


def table_rows(lines: list[str], title: str) -> dict[str, list[str]]:
    """The rows of one of the summary's tables, by their first cell."""
    start = lines.index(title)
    rows = {}
    for line in lines[start + 3 :]:
        if not line.strip() or line.startswith(" "):  # the notes below the last table
            break
        name, *cells = line.split()
        rows[name] = cells
    return rows


def test_at_80_columns_every_table_name_and_every_count_is_shown_whole():
    summary = million_row_summary()
    lines = rendered(summary, 80)
    assert max(len(line.rstrip()) for line in lines) <= 80
    assert not any("…" in line for line in lines)
    for title, columns in (("rows", ROW_COLUMNS), ("batches", BATCH_COLUMNS)):
        shown = table_rows(lines, title)
        assert list(shown) == [table.name for table in TABLES] + ["total"]
        for item in summary.tables:
            expected = [f"{getattr(item, name):,}" for name in columns.values()]
            assert shown[item.table] == expected
        assert shown["total"] == [f"{summary.total(name):,}" for name in columns.values()]
    assert any(re.search(r"\bheld back\b", line) for line in lines)
