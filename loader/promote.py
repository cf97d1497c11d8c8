"""Settles validated batches: accepted rows raw → core, and the audit trail (SQL only).

Each batch is settled in one transaction: its rows are upserted into `core.<table>` with one
set-based `INSERT ... SELECT ... ON CONFLICT`, and `audit.batches` (plus `audit.rejected_rows`
for failing rows) records the verdict, or nothing happens at all. A database error during
promotion rolls the batch back and records it as rejected, so every row ends in one place.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import psycopg
from psycopg import sql

from loader.gate import Failure, Verdict
from loader.tables import Table

PROMOTED, REJECTED, PARTIAL = "promoted", "rejected", "partially_promoted"


@dataclass(frozen=True)
class BatchInfo:
    """Where a batch came from: enough to find its rows in raw and report on it."""

    batch_id: str
    table: str
    source: str
    first_line: int
    last_line: int
    rows: int


@dataclass
class Settlement:
    """What settling one batch did."""

    batch: BatchInfo
    status: str
    rows_promoted: int
    rows_rejected: int
    reasons: list[dict] = field(default_factory=list)
    rejected_rows: list[dict] = field(default_factory=list)

    def record(self, run_id: str) -> dict:
        """The batch's audit record: lineage, verdict, counts and reasons."""
        return {
            **asdict(self.batch),
            "run_id": run_id,
            "status": self.status,
            "rows_promoted": self.rows_promoted,
            "rows_rejected": self.rows_rejected,
            "reasons": self.reasons,
        }


def _cast(table: Table, alias: str) -> list[sql.Composable]:
    casts = []
    for column in table.columns:
        name = sql.Identifier(alias, column.name)
        casts.append(
            name
            if column.kind == "text"
            else sql.SQL("{}::{}").format(name, sql.SQL(column.postgres_type))
        )
    return casts


def upsert_statement(table: Table) -> sql.Composed:
    """Rows of one batch from raw into core, skipping the lines in %(failing)s."""
    columns = [sql.Identifier(column.name) for column in table.columns]
    updated = [column for column in table.columns if column.name != table.primary_key]
    target = sql.Identifier("core", table.name)
    return sql.SQL(
        """insert into {target} ({columns}, _batch_id, _promoted_at)
        select {casts}, r._batch_id, now() from {raw} as r
        where r._batch_id = %(batch_id)s and r._run_id = %(run_id)s
          and r._line_number <> all(%(failing)s)
        on conflict ({key}) do update set {updates}, _batch_id = excluded._batch_id,
            _promoted_at = now()
        where ({current}) is distinct from ({incoming})"""
    ).format(
        target=target,
        columns=sql.SQL(", ").join(columns),
        casts=sql.SQL(", ").join(_cast(table, "r")),
        raw=sql.Identifier("raw", table.name),
        key=sql.Identifier(table.primary_key),
        updates=sql.SQL(", ").join(
            sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c.name)) for c in updated
        ),
        current=sql.SQL(", ").join(sql.Identifier(table.name, c.name) for c in updated),
        incoming=sql.SQL(", ").join(sql.Identifier("excluded", c.name) for c in updated),
    )


def rejected_rows_statement(table: Table) -> sql.Composed:
    """Copy the failing lines of one batch from raw into audit.rejected_rows, returning them."""
    values = sql.SQL(", ").join(
        sql.SQL("{}, r.{}").format(sql.Literal(column.name), sql.Identifier(column.name))
        for column in table.columns
    )
    return sql.SQL(
        """insert into audit.rejected_rows
            (batch_id, run_id, table_name, source, line_number, raw_values, failures)
        select r._batch_id, r._run_id, {table_name}, r._source_file, r._line_number,
            jsonb_build_object({values}) || jsonb_strip_nulls(
                jsonb_build_object('_decode_error', r._decode_error)),
            %(failures)s::jsonb -> r._line_number::text
        from {raw} as r
        where r._batch_id = %(batch_id)s and r._run_id = %(run_id)s
          and r._line_number = any(%(failing)s)
        order by r._line_number
        returning line_number, raw_values, failures"""
    ).format(
        table_name=sql.Literal(table.name), values=values, raw=sql.Identifier("raw", table.name)
    )


INSERT_BATCH = """insert into audit.batches (batch_id, run_id, table_name, source, first_line,
    last_line, rows_read, rows_promoted, rows_rejected, status, reasons)
    values (%(batch_id)s, %(run_id)s, %(table)s, %(source)s, %(first_line)s, %(last_line)s,
    %(rows)s, %(rows_promoted)s, %(rows_rejected)s, %(status)s, %(reasons)s::jsonb)"""


def reasons(verdict: Verdict) -> list[dict]:
    """The batch's broken rules with the number of rows breaking each, most frequent first."""
    counts: dict[Failure, int] = {}
    for failure in verdict.batch_failures:
        counts[failure] = counts.get(failure, 0)
    for failures in verdict.failing_rows.values():
        for failure in failures:
            counts[failure] = counts.get(failure, 0) + 1
    ordered = sorted(counts.items(), key=lambda item: -item[1])
    return [{**failure.as_dict(), "rows": rows} for failure, rows in ordered]


class Promoter:
    """Settles the batches of one run on one connection."""

    def __init__(self, conn: psycopg.Connection, run_id: str, policy: str):
        self.conn = conn
        self.run_id = run_id
        self.policy = policy
        self._statements: dict[str, tuple[sql.Composed, sql.Composed]] = {}
        # A crash loses at most the last few settlements, which the next run redoes: the batch
        # is not in audit.batches, so it is not skipped. Nothing is ever half-settled.
        conn.execute("set synchronous_commit = off")

    def prepare(self, table: Table) -> None:
        """Index raw by batch so that settling one batch reads only its own rows."""
        with self.conn.transaction():
            self.conn.execute(
                sql.SQL("create index if not exists {} on {} (_batch_id)").format(
                    sql.Identifier(f"{table.name}__batch_id"), sql.Identifier("raw", table.name)
                )
            )
        self._statements[table.name] = (upsert_statement(table), rejected_rows_statement(table))

    def settle(self, table: Table, batch: BatchInfo, verdict: Verdict) -> Settlement:
        """Promote, partially promote or reject one batch, in one transaction."""
        whole_batch_fails = bool(verdict.batch_failures) or (
            self.policy == "reject_batch" and bool(verdict.failing_rows)
        )
        try:
            return self._settle(table, batch, verdict, whole_batch_fails)
        except psycopg.Error as error:
            reason = Failure("*", f"promotion failed: {str(error).splitlines()[0]}", "promotion")
            failed = Verdict(
                batch.batch_id, verdict.failing_rows, [*verdict.batch_failures, reason]
            )
            return self._settle(table, batch, failed, True)

    def _settle(self, table: Table, batch: BatchInfo, verdict: Verdict, reject_all: bool):
        upsert, reject = self._statements[table.name]
        failing = sorted(verdict.failing_rows)
        parameters = {"batch_id": batch.batch_id, "run_id": self.run_id, "failing": failing}
        with self.conn.transaction():
            promoted = 0
            if not reject_all:
                self.conn.execute(upsert, parameters)
                promoted = batch.rows - len(failing)
            status = REJECTED if reject_all else (PARTIAL if failing else PROMOTED)
            settlement = Settlement(
                batch, status, promoted, batch.rows - promoted, reasons(verdict)
            )
            record = settlement.record(self.run_id)
            self.conn.execute(INSERT_BATCH, {**record, "reasons": json.dumps(record["reasons"])})
            if failing:
                failures = {
                    str(line): [failure.as_dict() for failure in found]
                    for line, found in verdict.failing_rows.items()
                }
                cursor = self.conn.execute(reject, {**parameters, "failures": json.dumps(failures)})
                settlement.rejected_rows = [
                    {"line": line, "values": values, "failures": found}
                    for line, values, found in cursor.fetchall()
                ]
        return settlement
