"""The reject loop: the rows a run held back, written out in the export's own layout (header-less
CSV, the table's columns in order) ready to correct, with their reasons beside them.

A corrected file dropped back into the input loads like any export. A held-back row counts as
fixed once its table holds a row with its id promoted after it was held back (a replacement
row, by the same table and id); until then it is open.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from loader.tables import TABLES, Table, table_named


@dataclass
class RejectsWritten:
    """What `write_rejects` wrote: the run, rows per table, and how many are fixed since."""

    run_id: str | None
    rows: dict[str, int]
    fixed: dict[str, int]


def latest_run_with_rejects(conn: psycopg.Connection) -> str | None:
    found = conn.execute(
        "select b.run_id from audit.rejected_rows r join audit.batches b using (batch_id) "
        "order by b.settled_at desc limit 1"
    ).fetchone()
    return found[0] if found else None


def write_rejects(
    conn: psycopg.Connection, out: Path, run_id: str | None, table: str | None
) -> RejectsWritten:
    """The held-back rows of `run_id` (None: the latest run that held rows back), of one table
    or all, to `out`; their line, field and rule to `<out stem>.reasons.csv` beside it."""
    run_id = run_id or latest_run_with_rejects(conn)
    tables = [table_named(table)] if table else list(TABLES)
    written = RejectsWritten(run_id, {}, {})
    reasons_path = out.with_name(out.name.removesuffix(".csv") + ".reasons.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        out.open("w", newline="", encoding="utf-8") as rows_file,
        reasons_path.open("w", newline="", encoding="utf-8") as reasons_file,
    ):
        rows, reasons = csv.writer(rows_file), csv.writer(reasons_file)
        reasons.writerow(["table", "source", "line", "field", "rule"])
        for each in tables:
            held = _held_back(conn, run_id, each)
            written.rows[each.name] = len(held)
            written.fixed[each.name] = sum(fixed for *_, fixed in held)
            for source, line, values, failures, _ in held:
                rows.writerow([values.get(column) or "" for column in each.column_names])
                for failure in failures or [{"field": "*", "rule": "held back with its batch"}]:
                    reasons.writerow([each.name, source, line, failure["field"], failure["rule"]])
    return written


def _held_back(conn: psycopg.Connection, run_id: str | None, table: Table) -> list[tuple]:
    """(source, line, values, failures, fixed since) of every row of `table` the run held
    back, in file order: the failing rows, and the other rows of batches held back whole."""
    if conn.execute("select to_regclass(%s)", (f"raw.{table.name}",)).fetchone()[0] is None:
        return []
    found = conn.execute(
        sql.SQL(
            "select distinct on (r._source_file, r._line_number) r._source_file, "
            "r._line_number, {columns}, f.failures, exists (select 1 from {core} c "
            "where c.{key}::text = r.{key} and c._promoted_at > b.settled_at) "
            "from audit.batches b join {raw} r on r._batch_id = b.batch_id "
            "left join audit.rejected_rows f on f.batch_id = b.batch_id "
            "and f.line_number = r._line_number "
            "where b.run_id = %s and b.table_name = %s "
            "and (b.status in ('rejected', 'waiting', 'failed') or f.batch_id is not null) "
            "order by r._source_file, r._line_number"
        ).format(
            columns=sql.SQL(", ").join(sql.Identifier("r", c) for c in table.column_names),
            core=sql.Identifier("core", table.name),
            raw=sql.Identifier("raw", table.name),
            key=sql.Identifier(table.primary_key),
        ),
        (run_id, table.name),
    ).fetchall()
    width = len(table.column_names)
    return [
        (source, line, dict(zip(table.column_names, rest[:width])), rest[width], rest[width + 1])
        for source, line, *rest in found
    ]
