"""The one settlement engine: a judged batch's rows raw → core, and the ledger that says so.

File runs, API requests and cluster workers all settle through `Settler.settle`. Settling one
batch is one transaction: under the table's shared lock and the batch's own lock, the ledger
(`audit.batches`) is read again, so a batch settled meanwhile by someone else is answered from
the ledger instead of settled twice; then the batch's accepted rows are upserted into
`core.<table>` with one set-based `INSERT ... SELECT ... ON CONFLICT`, and the ledger row and
the failing rows (`audit.rejected_rows`) are written, or nothing happens at all.

States: `promoted`, `partially_promoted` and `rejected` are settled (a re-run skips them);
`waiting` (held back only because a referenced department or job did not exist) and `failed`
(a transient error outlasted the retries) are taken up again by the next run.

What PostgreSQL refuses (`DataError`, `IntegrityError`) stays a row error: the offending rows
are found one by one inside a rolled-back savepoint and logged with PostgreSQL's message as
their rule. Deadlocks and serialization failures are retried with backoff; a lost connection
propagates, and since nothing was committed the next run settles the batch.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field, replace
from functools import cache

import psycopg
from psycopg import errors, sql

from loader.db.locks import schema_lock, settlement_locks
from loader.flow.gate import Failure, Verdict
from loader.flow.kill_points import AFTER_COMMIT, BEFORE_COMMIT, NOWHERE, KillPoints
from loader.flow.read import RawBatch
from loader.flow.rules import BEYOND_MICROSECONDS, REFERENCE_EXPECTATION, reference_rule
from loader.tables import Column, Table

PROMOTED, PARTIAL, REJECTED = "promoted", "partially_promoted", "rejected"
WAITING, FAILED = "waiting", "failed"
SETTLED = frozenset({PROMOTED, PARTIAL, REJECTED})
ATTEMPTS = 5
BACKOFF_SECONDS = 0.2
TRANSIENT = (errors.SerializationFailure, errors.DeadlockDetected, errors.LockNotAvailable)
REFUSED = (errors.DataError, errors.IntegrityError)
DATABASE_RULE = "postgresql"


@dataclass(frozen=True)
class BatchInfo:
    """Where a batch came from: enough to find its rows in raw and report on it."""

    batch_id: str
    table: str
    source: str
    first_line: int
    last_line: int
    rows: int
    raw_run_id: str | None = None  # the run whose raw copy is settled; None: the settling run's

    @classmethod
    def of(cls, batch: RawBatch, raw_run_id: str | None = None) -> BatchInfo:
        return cls(
            batch.batch_id,
            batch.table,
            batch.source,
            batch.first_line,
            batch.last_line,
            batch.rows,
            raw_run_id,
        )


@dataclass
class Settlement:
    """What settling one batch did (or, `replayed`, what an earlier settlement did)."""

    batch: BatchInfo
    status: str
    rows_promoted: int
    rows_rejected: int
    reasons: list[dict] = field(default_factory=list)
    rejected_rows: list[dict] = field(default_factory=list)
    attempts: int = 1
    replayed: bool = False

    def record(self, run_id: str) -> dict:
        """The batch's ledger record: lineage, verdict, counts and reasons."""
        return {
            **asdict(self.batch),
            "run_id": run_id,
            "status": self.status,
            "rows_promoted": self.rows_promoted,
            "rows_rejected": self.rows_rejected,
            "reasons": self.reasons,
            "attempts": self.attempts,
        }


def ledger_states(conn: psycopg.Connection) -> dict[str, str]:
    """Every batch id in the ledger with its state."""
    return dict(conn.execute("select batch_id, status from audit.batches").fetchall())


def ensure_raw_index(conn: psycopg.Connection, table: Table) -> bool:
    """Index raw by batch, so that settling or finding one batch reads only its own rows;
    False while dlt has not created the raw table yet."""
    if conn.execute("select to_regclass(%s)", (f"raw.{table.name}",)).fetchone()[0] is None:
        return False
    index = f"{table.name}__batch_id"
    if conn.execute("select to_regclass(%s)", (f"raw.{index}",)).fetchone()[0] is None:
        with schema_lock(conn):
            conn.execute(
                sql.SQL("create index if not exists {} on {} (_batch_id)").format(
                    sql.Identifier(index), sql.Identifier("raw", table.name)
                )
            )
    return True


def raw_copies(conn: psycopg.Connection, table: Table, batches: dict[str, int]) -> dict[str, str]:
    """For batches (id → rows) already whole in raw from an earlier attempt (a run that was
    killed, or one that left them waiting or failed), the run id of such a copy. Settling that
    copy instead of loading the same bytes again keeps raw free of repeats."""
    if not batches or not ensure_raw_index(conn, table):
        return {}
    found = conn.execute(
        sql.SQL(
            "select _batch_id, max(_run_id) from (select _batch_id, _run_id, count(*) as n "
            "from {} where _batch_id = any(%s) group by _batch_id, _run_id) as copies "
            "where n = (%s::jsonb ->> _batch_id)::bigint group by _batch_id"
        ).format(sql.Identifier("raw", table.name)),
        (list(batches), json.dumps(batches)),
    ).fetchall()
    return dict(found)


def held_back(verdict: Verdict, policy: str) -> tuple[str, bool]:
    """The batch's state, and whether any of its rows go to core."""
    if verdict.batch_failures:
        return REJECTED, False
    if not verdict.failing_rows:
        return PROMOTED, True
    waits = [all(f.is_reference for f in found) for found in verdict.failing_rows.values()]
    if policy == "reject_batch":
        return (WAITING if all(waits) else REJECTED), False
    return (WAITING if any(waits) else PARTIAL), True


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


def cast_field(column: Column, field: sql.Composable) -> sql.Composable:
    """A raw text field as its core type, the way promotion casts it: text as it is, a time
    with its fraction truncated to microseconds (rules.BEYOND_MICROSECONDS) rather than
    rounded by PostgreSQL into the next second."""
    if column.kind == "text":
        return field
    if column.kind == "timestamp":
        field = sql.SQL("regexp_replace({}, {}, {})").format(
            field, sql.Literal(BEYOND_MICROSECONDS), sql.Literal(r"\1")
        )
    return sql.SQL("{}::{}").format(field, sql.SQL(column.postgres_type))


def _cast(table: Table, alias: str) -> list[sql.Composable]:
    return [cast_field(column, sql.Identifier(alias, column.name)) for column in table.columns]


@cache  # composed once per table: a run settles thousands of batches
def upsert_statement(table: Table) -> sql.Composed:
    """Rows of one batch from raw into core, skipping the lines in %(failing)s; with %(only)s
    set, that one line alone."""
    columns = [sql.Identifier(column.name) for column in table.columns]
    updated = [column for column in table.columns if column.name != table.primary_key]
    return sql.SQL(
        """insert into {target} ({columns}, _batch_id, _promoted_at)
        select {casts}, r._batch_id, now() from {raw} as r
        where r._batch_id = %(batch_id)s and r._run_id = %(raw_run_id)s
          and r._line_number <> all(%(failing)s)
          and (%(only)s::bigint is null or r._line_number = %(only)s::bigint)
        on conflict ({key}) do update set {updates}, _batch_id = excluded._batch_id,
            _promoted_at = now()
        where ({current}) is distinct from ({incoming})"""
    ).format(
        target=sql.Identifier("core", table.name),
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


@cache  # composed once per table: a run settles thousands of batches
def raw_rows_statement(table: Table) -> sql.Composed:
    """One batch's raw lines with their field values, in file order."""
    return sql.SQL(
        "select _line_number, {columns} from {raw} "
        "where _batch_id = %(batch_id)s and _run_id = %(raw_run_id)s order by _line_number"
    ).format(
        columns=sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns),
        raw=sql.Identifier("raw", table.name),
    )


@cache  # composed once per table: a run settles thousands of batches
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
        where r._batch_id = %(batch_id)s and r._run_id = %(raw_run_id)s
          and r._line_number = any(%(failing)s)
        order by r._line_number
        returning line_number, raw_values, failures"""
    ).format(
        table_name=sql.Literal(table.name), values=values, raw=sql.Identifier("raw", table.name)
    )


LEDGER_UPSERT = """with cleared as (delete from audit.rejected_rows where batch_id = %(batch_id)s)
    insert into audit.batches (batch_id, run_id, table_name, source, first_line,
    last_line, rows_read, rows_promoted, rows_rejected, status, reasons, attempts)
    values (%(batch_id)s, %(run_id)s, %(table)s, %(source)s, %(first_line)s, %(last_line)s,
    %(rows)s, %(rows_promoted)s, %(rows_rejected)s, %(status)s, %(reasons)s::jsonb, %(attempts)s)
    on conflict (batch_id) do update set run_id = excluded.run_id,
    rows_promoted = excluded.rows_promoted, rows_rejected = excluded.rows_rejected,
    status = excluded.status, reasons = excluded.reasons, settled_at = now(),
    attempts = audit.batches.attempts + excluded.attempts"""


def recorded(conn: psycopg.Connection, batch: BatchInfo) -> Settlement | None:
    """The ledger's settlement of `batch`, with its failing rows, if it is settled."""
    found = conn.execute(
        "select status, rows_promoted, rows_rejected, reasons, attempts from audit.batches "
        "where batch_id = %s",
        (batch.batch_id,),
    ).fetchone()
    if found is None or found[0] not in SETTLED:
        return None
    status, promoted, rejected, why, attempts = found
    failing = conn.execute(
        "select line_number, raw_values, failures from audit.rejected_rows where batch_id = %s "
        "order by line_number",
        (batch.batch_id,),
    ).fetchall()
    rows = [{"line": line, "values": values, "failures": f} for line, values, f in failing]
    return Settlement(batch, status, promoted, rejected, why, rows, attempts, replayed=True)


def _first_line(error: psycopg.Error) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class Settler:
    """Settles the batches of one run (or API request) on one autocommit connection."""

    def __init__(
        self,
        conn: psycopg.Connection,
        run_id: str,
        policy: str,
        kill: KillPoints = NOWHERE,
        durable: bool = False,
    ):
        """`durable`: each settlement is on disk before it is answered (an API client told
        `promoted` has no reason to send the rows again). Otherwise a crash loses at most the
        last few settlements, which the next run of the same input redoes: they are not in the
        ledger, so they are not skipped. Nothing is ever half-settled either way."""
        self.conn = conn
        self.run_id = run_id
        self.policy = policy
        self.kill = kill
        self._prepared: set[str] = set()
        conn.execute(f"set synchronous_commit = {'on' if durable else 'off'}")

    def prepare(self, table: Table) -> None:
        if table.name not in self._prepared:
            ensure_raw_index(self.conn, table)
            self._prepared.add(table.name)

    def settle(self, table: Table, batch: BatchInfo, verdict: Verdict) -> Settlement:
        """Settle one batch in one transaction, retrying deadlocks and serialization failures;
        after the last attempt the batch is recorded `failed`, for the next run to retry."""
        self.prepare(table)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return self._settle_once(table, batch, verdict, attempt)
            except TRANSIENT as error:
                last = error
                time.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
        return self._record_failed(table, batch, last)

    def _settle_once(
        self, table: Table, batch: BatchInfo, verdict: Verdict, attempt: int
    ) -> Settlement:
        try:
            return self._settle_in_transaction(table, batch, verdict, attempt)
        except REFUSED:
            # PostgreSQL refused a row the rules let through: the transaction is gone, so
            # settle again, this time finding such rows first. Rare, so the common path pays
            # no savepoint for it.
            return self._settle_in_transaction(table, batch, verdict, attempt, find_refused=True)

    def _settle_in_transaction(
        self,
        table: Table,
        batch: BatchInfo,
        verdict: Verdict,
        attempt: int,
        find_refused: bool = False,
    ) -> Settlement:
        """Six round trips in all (begin, locks, ledger, upsert, ledger write, commit), plus one
        for failing rows: a million rows are a thousand settlements."""
        with self.conn.transaction():
            earlier = self._lock_and_reread(table, batch)
            if earlier is not None:
                return earlier
            if find_refused:
                verdict = self._with_refused_rows(table, batch, verdict)
            status, promotes = held_back(verdict, self.policy)
            if promotes:
                self._upsert(table, batch, verdict)
            held = len(verdict.failing_rows) if promotes else batch.rows
            settlement = Settlement(
                batch, status, batch.rows - held, held, reasons(verdict), attempts=attempt
            )
            self._write_ledger(table, settlement, verdict)
            self.kill.reach(BEFORE_COMMIT)
        self.kill.reach(AFTER_COMMIT)
        return settlement

    def _lock_and_reread(self, table: Table, batch: BatchInfo) -> Settlement | None:
        """Inside the settlement's transaction: take the table's and the batch's locks, then
        read the ledger again (a statement of its own, so that its snapshot is taken once the
        locks are held); the earlier settlement if someone settled the batch meanwhile."""
        settlement_locks(self.conn, table.name, batch.batch_id)
        return recorded(self.conn, batch)

    def _parameters(self, batch: BatchInfo, verdict: Verdict, only: int | None = None) -> dict:
        return {
            "batch_id": batch.batch_id,
            "raw_run_id": batch.raw_run_id or self.run_id,
            "failing": sorted(verdict.failing_rows),
            "only": only,
        }

    def _upsert(self, table: Table, batch: BatchInfo, verdict: Verdict) -> None:
        self.conn.execute(upsert_statement(table), self._parameters(batch, verdict))

    def _with_refused_rows(self, table: Table, batch: BatchInfo, verdict: Verdict) -> Verdict:
        """The verdict plus every row PostgreSQL refuses, found one row at a time in a
        savepoint that is always rolled back (the caller promotes the rest set-based)."""
        failing = {line: list(found) for line, found in verdict.failing_rows.items()}
        statement = upsert_statement(table)
        with self.conn.transaction(force_rollback=True):
            lines = self.conn.execute(raw_rows_statement(table), self._parameters(batch, verdict))
            for line, *values in lines.fetchall():
                if line in failing:
                    continue
                try:
                    with self.conn.transaction():
                        self.conn.execute(statement, self._parameters(batch, verdict, line))
                except REFUSED as error:
                    failing[line] = [self._explain(table, values, error)]
        return replace(verdict, failing_rows=failing)

    def _explain(self, table: Table, values: list, error: psycopg.Error) -> Failure:
        """The field PostgreSQL refused and its message, as a row failure."""
        if isinstance(error, errors.ForeignKeyViolation):
            column = next(
                (c for c in table.foreign_keys if c.name in (error.diag.constraint_name or "")),
                None,
            )
            if column is not None:
                return Failure(
                    column.name, reference_rule(column.references), REFERENCE_EXPECTATION
                )
        for column, value in zip(table.columns, values):
            if column.kind == "text" or value is None:
                continue
            try:
                with self.conn.transaction():
                    self.conn.execute(
                        sql.SQL("select %s::{}").format(sql.SQL(column.postgres_type)), (value,)
                    )
            except errors.DataError as refused:
                return Failure(
                    column.name, f"refused by PostgreSQL: {_first_line(refused)}", DATABASE_RULE
                )
        return Failure("*", f"refused by PostgreSQL: {_first_line(error)}", DATABASE_RULE)

    def _write_ledger(self, table: Table, settlement: Settlement, verdict: Verdict) -> None:
        record = settlement.record(self.run_id)
        self.conn.execute(LEDGER_UPSERT, {**record, "reasons": json.dumps(record["reasons"])})
        if not verdict.failing_rows:
            return
        failures = {
            str(line): [failure.as_dict() for failure in found]
            for line, found in verdict.failing_rows.items()
        }
        cursor = self.conn.execute(
            rejected_rows_statement(table),
            {**self._parameters(settlement.batch, verdict), "failures": json.dumps(failures)},
        )
        settlement.rejected_rows = [
            {"line": line, "values": values, "failures": found}
            for line, values, found in cursor.fetchall()
        ]

    def _record_failed(self, table: Table, batch: BatchInfo, error: psycopg.Error) -> Settlement:
        reason = Failure("*", f"transient database error: {_first_line(error)}", DATABASE_RULE)
        with self.conn.transaction():
            earlier = self._lock_and_reread(table, batch)
            if earlier is not None:
                return earlier
            settlement = Settlement(
                batch, FAILED, 0, batch.rows, [{**reason.as_dict(), "rows": 0}], attempts=ATTEMPTS
            )
            self._write_ledger(table, settlement, Verdict(batch.batch_id))
        return settlement
