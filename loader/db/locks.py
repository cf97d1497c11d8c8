"""PostgreSQL advisory locks: what must not overlap, and the one order they are taken in.

Order, so that no two holders can deadlock on them: run lock (session; file runs; an API
request holds its batch's lock at this level instead) → table lock (transaction; shared while
settling into a table or backing it up, exclusive while restoring it) → batch lock
(transaction; around one batch's settlement). The schema lock and a run's liveness lock are
taken on their own, never while waiting for another of these; the marts lock is taken last
(a file run holds its run lock while it builds the marts).

Keys are pairs `(kind, hashtext(name))`: `kind` keeps our locks apart from each other and from
other applications' single-key locks on the same database.
"""

from __future__ import annotations

from contextlib import contextmanager

import psycopg

SCHEMA, RUN, LIVENESS, TABLE, BATCH, MARTS = (0x4353_0001 + offset for offset in range(6))
SINGLETON = "csv-migrate"


@contextmanager
def schema_lock(conn: psycopg.Connection):
    """Serialise schema set-up and migrations (session-level; waits)."""
    conn.execute("select pg_advisory_lock(%s, hashtext(%s))", (SCHEMA, SINGLETON))
    try:
        yield
    finally:
        conn.execute("select pg_advisory_unlock(%s, hashtext(%s))", (SCHEMA, SINGLETON))


@contextmanager
def marts_lock(conn: psycopg.Connection):
    """One `dbt build` at a time: two builds swapping the same views and tables collide."""
    conn.execute("select pg_advisory_lock(%s, hashtext(%s))", (MARTS, SINGLETON))
    try:
        yield
    finally:
        conn.execute("select pg_advisory_unlock(%s, hashtext(%s))", (MARTS, SINGLETON))


def try_run_lock(conn: psycopg.Connection) -> bool:
    """Take the one-run-per-database lock if it is free; held until the session ends."""
    return conn.execute(
        "select pg_try_advisory_lock(%s, hashtext(%s))", (RUN, SINGLETON)
    ).fetchone()[0]


def run_lock(conn: psycopg.Connection) -> None:
    """Wait for the one-run-per-database lock; held until the session ends."""
    conn.execute("select pg_advisory_lock(%s, hashtext(%s))", (RUN, SINGLETON))


def hold_liveness(conn: psycopg.Connection, run_id: str) -> None:
    """Held by a run for its life: a `running` run whose lock is free has died."""
    conn.execute("select pg_advisory_lock(%s, hashtext(%s))", (LIVENESS, run_id))


def is_alive(conn: psycopg.Connection, run_id: str) -> bool:
    """True while some session holds the run's liveness lock."""
    free = conn.execute(
        "select pg_try_advisory_lock(%s, hashtext(%s))", (LIVENESS, run_id)
    ).fetchone()[0]
    if free:
        conn.execute("select pg_advisory_unlock(%s, hashtext(%s))", (LIVENESS, run_id))
    return not free


def table_lock(conn: psycopg.Connection, table_name: str, exclusive: bool = False) -> None:
    """Transaction-level: shared to settle into or back up a table, exclusive to restore it."""
    function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    conn.execute(f"select {function}(%s, hashtext(%s))", (TABLE, table_name))


def settlement_locks(conn: psycopg.Connection, table_name: str, batch_id: str) -> None:
    """Transaction-level: the table's lock shared, then the batch's (one settlement of a batch
    id at a time), in one round trip: a run settles a thousand batches per million rows. The
    subquery is taken first (OFFSET 0 keeps the planner from flattening it), so the order
    above holds."""
    conn.execute(
        "select pg_advisory_xact_lock(%s, hashtext(%s)) from (select "
        "pg_advisory_xact_lock_shared(%s, hashtext(%s)) offset 0) as table_first",
        (BATCH, batch_id, TABLE, table_name),
    )


def group_settlement_locks(conn: psycopg.Connection, table_name: str, batch_ids: list[str]) -> None:
    """`settlement_locks` for several batches settled in one transaction: the table's lock
    shared, then each batch's in the order of its key, so that two groups waiting on each
    other's batches cannot both hold one (a batch settled alone takes one batch lock only)."""
    conn.execute("select pg_advisory_xact_lock_shared(%s, hashtext(%s))", (TABLE, table_name))
    conn.execute(
        "select pg_advisory_xact_lock(%s, key) from (select distinct hashtext(batch_id) as key "
        "from unnest(%s::text[]) as batch_id order by key) as keys",
        (BATCH, batch_ids),
    )


@contextmanager
def request_lock(conn: psycopg.Connection, batch_id: str):
    """Session-level lock on an API batch for the whole request (in place of the run lock), so
    identical bodies sent at once are judged and loaded once and then answered from the ledger."""
    conn.execute("select pg_advisory_lock(%s, hashtext(%s))", (BATCH, batch_id))
    try:
        yield
    finally:
        conn.execute("select pg_advisory_unlock(%s, hashtext(%s))", (BATCH, batch_id))
