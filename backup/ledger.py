"""The ledger's share of a backup: which audit rows it takes, and how a restore puts them back.

A backup of core tables T takes, in the same snapshot as their rows: T's `audit.batches` rows,
the `audit.rejected_rows` of those batches, and the `audit.runs` rows either references (so
that a restore into another database keeps its foreign keys). Restoring T makes T's ledger what
it was at the backup, in the restore's transaction; core and ledger then agree, and the next run
redoes exactly the batches whose rows the restore took away.

A backup made before ledger files existed cannot do that. Its restore takes out of the ledger
T's batches settled at or after the backup's snapshot (with their rejected rows), so the next
run of the same input redoes them instead of skipping them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg import sql

from backup.avro import Field, Written, export_query, import_file, record_schema, selected


@dataclass(frozen=True)
class AuditTable:
    """An audit table as a backup holds it."""

    name: str
    doc: str
    fields: tuple[Field, ...]
    order: tuple[str, ...]

    @property
    def file_name(self) -> str:
        return f"audit.{self.name}.avro"

    @property
    def schema(self) -> dict:
        return record_schema(self.name, "csv_migrate.audit", self.doc, self.fields)

    @property
    def names(self) -> list[str]:
        return [field.name for field in self.fields]

    @property
    def staged(self) -> sql.Identifier:
        return sql.Identifier(f"restore_audit_{self.name}")


def _text(name: str, doc: str, nullable: bool = False) -> Field:
    return Field(name, "text", doc, nullable)


RUNS = AuditTable(
    "runs",
    "One row per file run or API request.",
    (
        _text("run_id", "Run id."),
        Field("started_at", "timestamp", "When the run started."),
        Field("finished_at", "timestamp", "When it finished.", nullable=True),
        _text("input", "Input folder, or api:<table>."),
        Field("batch_size", "integer", "Rows per batch."),
        _text("policy", "Rejection policy."),
        _text("status", "running, completed, failed or abandoned."),
        Field("summary", "json", "The run's summary.", nullable=True),
        _text("host", "Host the run ran on.", nullable=True),
        Field("pid", "integer", "Its process id.", nullable=True),
        Field("abandoned_noticed_at", "timestamp", "When it was found dead.", nullable=True),
    ),
    ("run_id",),
)
BATCHES = AuditTable(
    "batches",
    "The ledger: one row per batch id, its state and lineage.",
    (
        _text("batch_id", "Batch id."),
        _text("run_id", "Run that settled it (audit.runs)."),
        _text("table_name", "Core table."),
        _text("source", "File or request it came from."),
        Field("first_line", "integer", "First line."),
        Field("last_line", "integer", "Last line."),
        Field("rows_read", "integer", "Rows read."),
        Field("rows_promoted", "integer", "Rows promoted."),
        Field("rows_rejected", "integer", "Rows held back."),
        _text("status", "promoted, partially_promoted, rejected, waiting or failed."),
        Field("reasons", "json", "Broken rules with their row counts."),
        Field("settled_at", "timestamp", "When it was settled."),
        Field("attempts", "integer", "Settlement attempts."),
    ),
    ("batch_id",),
)
REJECTED_ROWS = AuditTable(
    "rejected_rows",
    "One row per rejected input line.",
    (
        _text("batch_id", "Batch (audit.batches)."),
        _text("run_id", "Run whose raw copy was settled."),
        _text("table_name", "Core table."),
        _text("source", "File or request."),
        Field("line_number", "integer", "Line in the file."),
        Field("raw_values", "json", "The line's fields as read."),
        Field("failures", "json", "Every rule it broke."),
    ),
    ("batch_id", "line_number"),
)
# Parents first: the order rows go back in.
LEDGER: tuple[AuditTable, ...] = (RUNS, BATCHES, REJECTED_ROWS)
LEDGER_BY_NAME = {audit.name: audit for audit in LEDGER}


def _names(table_names: list[str]) -> sql.Composed:
    return sql.SQL(", ").join(map(sql.Literal, sorted(table_names)))


def _scope(audit: AuditTable, table_names: list[str]) -> sql.Composed:
    """The rows of `audit` that belong to the ledger of `table_names`."""
    batches = sql.SQL("select batch_id from audit.batches where table_name in ({})").format(
        _names(table_names)
    )
    if audit is BATCHES:
        return sql.SQL("table_name in ({})").format(_names(table_names))
    if audit is REJECTED_ROWS:
        return sql.SQL("batch_id in ({})").format(batches)
    return sql.SQL(
        "run_id in (select run_id from audit.batches where table_name in ({}) "
        "union select run_id from audit.rejected_rows where batch_id in ({}))"
    ).format(_names(table_names), batches)


def export_audit(
    conn: psycopg.Connection, audit: AuditTable, table_names: list[str], path: Path
) -> Written:
    """Write the ledger rows of `table_names` in `audit` (in the connection's current
    transaction) to an Avro file."""
    query = sql.SQL("select {} from {} where {} order by {}").format(
        selected(audit.fields),
        sql.Identifier("audit", audit.name),
        _scope(audit, table_names),
        sql.SQL(", ").join(map(sql.Identifier, audit.order)),
    )
    return export_query(conn, query, audit.fields, audit.schema, path)


def stage(conn: psycopg.Connection, audit: AuditTable, path: Path, table_names: list[str]) -> int:
    """COPY a backup's `audit` rows into a temporary table and keep those that belong to
    `table_names`; return how many records the file holds (every one is decoded, for the
    manifest's count)."""
    conn.execute(
        sql.SQL("create temp table {} (like {}) on commit drop").format(
            audit.staged, sql.Identifier("audit", audit.name)
        )
    )
    records = import_file(conn, audit.staged, audit.fields, path)
    if "table_name" in audit.names:
        conn.execute(
            sql.SQL("delete from {} where table_name not in ({})").format(
                audit.staged, _names(table_names)
            )
        )
    return records


def _columns(audit: AuditTable) -> sql.Composed:
    return sql.SQL(", ").join(map(sql.Identifier, audit.names))


def put_back(conn: psycopg.Connection, table_names: list[str]) -> dict[str, tuple[int, int]]:
    """Replace the ledger of `table_names` with the staged one (after `stage` of every
    `LEDGER` table); return, per table, the batches and rejected rows it now holds."""
    conn.execute(
        sql.SQL(
            "delete from audit.rejected_rows where table_name in ({0}) "
            "or batch_id in (select batch_id from audit.batches where table_name in ({0}))"
        ).format(_names(table_names))
    )
    conn.execute(
        sql.SQL("delete from audit.batches where table_name in ({})").format(_names(table_names))
    )
    # A run row is shared by every table the run loaded: keep the one the database holds.
    conn.execute(
        sql.SQL(
            "insert into audit.runs ({columns}) select {columns} from {runs} where run_id in "
            "(select run_id from {batches} union select run_id from {rejected}) "
            "on conflict (run_id) do nothing"
        ).format(
            columns=_columns(RUNS),
            runs=RUNS.staged,
            batches=BATCHES.staged,
            rejected=REJECTED_ROWS.staged,
        )
    )
    conn.execute(
        sql.SQL("insert into audit.batches ({0}) select {0} from {1}").format(
            _columns(BATCHES), BATCHES.staged
        )
    )
    conn.execute(
        sql.SQL(
            "insert into audit.rejected_rows ({0}) select {0} from {1} "
            "where batch_id in (select batch_id from {2})"
        ).format(_columns(REJECTED_ROWS), REJECTED_ROWS.staged, BATCHES.staged)
    )
    counts = conn.execute(
        sql.SQL(
            "select b.table_name, count(distinct b.batch_id), count(r.batch_id) "
            "from {} b left join {} r using (batch_id) group by b.table_name"
        ).format(BATCHES.staged, REJECTED_ROWS.staged)
    ).fetchall()
    found = {name: (batches, rejected) for name, batches, rejected in counts}
    return {name: found.get(name, (0, 0)) for name in table_names}


def forget_settled_since(
    conn: psycopg.Connection, table_names: list[str], snapshot_at: datetime
) -> dict[str, int]:
    """For a backup without ledger files: take out of the ledger the batches of `table_names`
    settled at or after the backup's snapshot, with their rejected rows, so that the next run
    redoes them; return how many batches per table."""
    doomed = sql.SQL(
        "select batch_id from audit.batches where table_name in ({}) and settled_at >= {}"
    ).format(_names(table_names), sql.Literal(snapshot_at))
    conn.execute(sql.SQL("delete from audit.rejected_rows where batch_id in ({})").format(doomed))
    gone = conn.execute(
        sql.SQL("delete from audit.batches where batch_id in ({}) returning table_name").format(
            doomed
        )
    ).fetchall()
    return {name: sum(1 for (owner,) in gone if owner == name) for name in table_names}
