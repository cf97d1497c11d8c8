"""The one settlement engine: a judged batch's rows raw → core, and the ledger that says so.

File runs, API requests and cluster workers all settle through `Settler.settle`; a file run's
settle line settles runs of batches whose every row passed together (`settle_together`: one
transaction, one upsert, rolled back and settled one by one on any refusal). Settling one batch
is one transaction: under the table's shared lock and the batch's own lock, the ledger
(`audit.batches`) is read again, so a batch settled meanwhile by someone else is answered from
the ledger instead of settled twice; then the batch's accepted rows are upserted into
`core.<table>` with one set-based `INSERT ... SELECT ... ON CONFLICT`, and the ledger row and
the failing rows (`audit.rejected_rows`) are written, or nothing happens at all.

States: `promoted`, `partially_promoted` and `rejected` are settled (a re-run skips them);
`waiting` (held back only because a referenced department or job did not exist) and `failed`
(a transient error outlasted the retries) are taken up again by the next run.

Foreign keys: where the role may set `session_replication_role` (a superuser, or one granted
SET on it), a batch's references are checked by one set-based statement that locks each parent
FOR KEY SHARE, as PostgreSQL's own check does row by row, and the upsert then runs with the
replica role, which skips the per-row foreign-key triggers (two thirds of PostgreSQL's time in
settling, measured: 1.9 s against 0.6 s for 200 batches of 1000 rows); the declared keys stay
as they are for everyone else. A parent missing there is a refusal like PostgreSQL's, settled
again the plain way. Without the privilege, PostgreSQL's triggers check every row.

What PostgreSQL refuses (`DataError`, `IntegrityError`) stays a row error: the offending rows
are found one by one inside a rolled-back savepoint and logged with PostgreSQL's message as
their rule. Deadlocks and serialization failures are retried with backoff; a lost connection
propagates, and since nothing was committed the next run settles the batch.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace

import psycopg
from psycopg import errors, sql

from loader.db.locks import group_settlement_locks, settlement_locks
from loader.flow.land import ensure_raw_index
from loader.flow.ledger import record_settlement, recorded, recorded_among
from loader.flow.model import (
    REFERENCE_EXPECTATION,
    BatchInfo,
    BatchState,
    Failure,
    Settlement,
    Verdict,
    held_back,
    reasons,
    reference_rule,
)
from loader.flow.runtime.kill_points import AFTER_COMMIT, BEFORE_COMMIT, NOWHERE, KillPoints
from loader.flow.settle.statements import (
    parents_locked_statement,
    raw_rows_statement,
    rejected_rows_statement,
    upsert_statement,
)
from loader.settings import Policy
from loader.tables import Table

ATTEMPTS = 5
BACKOFF_SECONDS = 0.2
TRANSIENT = (errors.SerializationFailure, errors.DeadlockDetected, errors.LockNotAvailable)
REFUSED = (errors.DataError, errors.IntegrityError)
DATABASE_RULE = "postgresql"


def may_skip_key_triggers(conn: psycopg.Connection) -> bool:
    """Whether this session may set `session_replication_role` (see the module)."""
    try:
        with conn.transaction():
            conn.execute("set local session_replication_role = replica")
    except errors.InsufficientPrivilege:
        return False
    return True


def _first_line(error: psycopg.Error) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class Settler:
    """Settles the batches of one run (or API request) on one autocommit connection."""

    def __init__(
        self,
        conn: psycopg.Connection,
        run_id: str,
        policy: Policy,
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
        # A batch's statements touch a thousand rows, but over a raw table of ten million the
        # planner's estimates pass jit_above_cost, and compiling each statement took 20-50 ms
        # of a 1 ms statement: the 10M run spent most of PostgreSQL's time compiling.
        conn.execute("set jit = off")
        self.checks_references = may_skip_key_triggers(conn)

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

    def settle_together(
        self, table: Table, passed: list[tuple[BatchInfo, Verdict]]
    ) -> list[Settlement]:
        """Batches whose every row passed, of one raw copy and sharing no key (`lanes`),
        settled in one transaction: each is still promoted whole or not at all, and the
        round trips, the parents' locks and the upsert are paid once for all of them (300
        batches of 1000 rows: 1.9-2.2 s of PostgreSQL's CPU one by one, about 1 s in one
        statement, measured 2026-12-07). Anything PostgreSQL refuses, a conflict or a
        transient error rolls the group back and settles its batches one by one (`settle`),
        where each gets its own answer."""
        if len(passed) == 1:
            return [self.settle(table, *passed[0])]
        self.prepare(table)
        try:
            return self._settle_together_once(table, passed)
        except (*REFUSED, *TRANSIENT, errors.CardinalityViolation):
            return [self.settle(table, batch, verdict) for batch, verdict in passed]

    def _settle_together_once(
        self, table: Table, passed: list[tuple[BatchInfo, Verdict]]
    ) -> list[Settlement]:
        with self.conn.transaction():
            batches = [batch for batch, _ in passed]
            group_settlement_locks(self.conn, table.name, [batch.batch_id for batch in batches])
            earlier = recorded_among(self.conn, batches)
            fresh = [(batch, verdict) for batch, verdict in passed if batch.batch_id not in earlier]
            if fresh:
                parameters = {
                    "batch_ids": [batch.batch_id for batch, _ in fresh],
                    "raw_run_id": fresh[0][0].raw_run_id or self.run_id,
                    "failing": [],
                    "only": None,
                }
                self._upsert_checked(table, parameters, many=True)
            settlements = {}
            for batch, verdict in fresh:
                settlement = self._outcome(batch, verdict, attempt=1)[0]
                self._write_ledger(table, settlement, verdict)
                settlements[batch.batch_id] = settlement
                self.kill.reach(BEFORE_COMMIT)
        for _ in fresh:
            self.kill.reach(AFTER_COMMIT)
        return [earlier.get(batch.batch_id) or settlements[batch.batch_id] for batch in batches]

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
            settlement, promotes = self._outcome(batch, verdict, attempt)
            if promotes:
                self._upsert(table, batch, verdict, plain=find_refused)
            self._write_ledger(table, settlement, verdict)
            self.kill.reach(BEFORE_COMMIT)
        self.kill.reach(AFTER_COMMIT)
        return settlement

    def _outcome(self, batch: BatchInfo, verdict: Verdict, attempt: int) -> tuple[Settlement, bool]:
        """The settlement the verdict makes under the policy, and whether rows go to core."""
        status, promotes = held_back(verdict, self.policy)
        held = len(verdict.failing_rows) if promotes else batch.rows
        settlement = Settlement(
            batch, status, batch.rows - held, held, reasons(verdict), attempts=attempt
        )
        return settlement, promotes

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

    def _upsert(self, table: Table, batch: BatchInfo, verdict: Verdict, plain: bool) -> None:
        """The batch's accepted rows into core; its references checked set-based (see the
        module) unless `plain` or not allowed."""
        parameters = self._parameters(batch, verdict)
        if plain:
            self.conn.execute(upsert_statement(table), parameters)
        else:
            self._upsert_checked(table, parameters, many=False)

    def _upsert_checked(self, table: Table, parameters: dict, many: bool) -> None:
        """The upsert of one batch's rows or `many` batches', their references checked
        set-based with the key triggers skipped where allowed (see the module)."""
        parents = parents_locked_statement(table, many)
        if parents is None or not self.checks_references:
            self.conn.execute(upsert_statement(table, many), parameters)
            return
        if not self.conn.execute(parents, parameters).fetchone()[0]:
            raise errors.ForeignKeyViolation("a row to promote has no parent")
        self.conn.execute("set local session_replication_role = replica")
        self.conn.execute(upsert_statement(table, many), parameters)
        self.conn.execute("set local session_replication_role = origin")

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
        record_settlement(self.conn, settlement.record(self.run_id))
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
                batch,
                BatchState.FAILED,
                0,
                batch.rows,
                [{**reason.as_dict(), "rows": 0}],
                attempts=ATTEMPTS,
            )
            self._write_ledger(table, settlement, Verdict(batch.batch_id))
        return settlement
