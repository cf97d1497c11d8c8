"""Every query of the ledger: `audit.runs` (one row per file run or API run) and
`audit.batches` with `audit.rejected_rows` (one state per batch id).

A run holds its liveness lock (a session-level advisory lock) from before its row is written
until its connection closes, so "running, but nobody holds its lock" means the process was
killed or lost its database: `mark_abandoned` closes such rows, and no run stays `running`.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Iterable
from datetime import UTC, datetime

import psycopg

from loader.db.locks import hold_liveness, is_alive
from loader.flow.model import SETTLED, BatchInfo, BatchState, RunStatus, Settlement


def records(cursor: psycopg.Cursor) -> list[dict]:
    """A query's rows as dicts by column name, as the CLI's JSON and the dashboard show them."""
    names = [column.name for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


# --- audit.runs ---------------------------------------------------------------------------


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def open_run(
    conn: psycopg.Connection, run_id: str, source: str, batch_size: int, policy: str
) -> None:
    """Take the run's liveness lock on `conn` (kept open for the run's life), then its row."""
    hold_liveness(conn, run_id)
    conn.execute(
        "insert into audit.runs (run_id, started_at, input, batch_size, policy, status, host, pid) "
        "values (%s, now(), %s, %s, %s, %s, %s, %s)",
        (
            run_id,
            source,
            batch_size,
            str(policy),
            RunStatus.RUNNING,
            socket.gethostname(),
            os.getpid(),
        ),
    )


def close_run(conn: psycopg.Connection, run_id: str, status: RunStatus, summary: dict) -> None:
    conn.execute(
        "update audit.runs set finished_at = now(), status = %s, summary = %s::jsonb "
        "where run_id = %s",
        (status, json.dumps(summary, default=str), run_id),
    )


def mark_abandoned(conn: psycopg.Connection) -> list[str]:
    """Mark every `running` run whose liveness lock is free as `abandoned`; return their ids."""
    running = [
        row[0]
        for row in conn.execute(
            "select run_id from audit.runs where status = %s", (RunStatus.RUNNING,)
        )
    ]
    dead = [run_id for run_id in running if not is_alive(conn, run_id)]
    for run_id in dead:
        conn.execute(
            "update audit.runs set status = %s, abandoned_noticed_at = now() "
            "where run_id = %s and status = %s",
            (RunStatus.ABANDONED, run_id, RunStatus.RUNNING),
        )
    return dead


def holder_of_run_lock(conn: psycopg.Connection) -> str | None:
    """Words naming the file run that holds the run lock: id, host, pid, start time; None while
    the holder has taken the lock but not yet written its row."""
    found = conn.execute(
        "select run_id, host, pid, started_at from audit.runs "
        "where status = %s and input not like 'api:%%' order by started_at desc limit 1",
        (RunStatus.RUNNING,),
    ).fetchone()
    if found is None:
        return None
    run_id, host, pid, started = found
    return f"run {run_id} (host {host}, pid {pid}, started {started:%Y-%m-%d %H:%M:%S %Z})"


def recent_runs(conn: psycopg.Connection, limit: int) -> list[dict]:
    """The latest runs, newest first, with their counts (from each run's own summary, so that a
    later settlement of its batches by another run does not change them) and duration."""
    cursor = conn.execute(
        "select run_id, input, status, started_at, finished_at, "
        "extract(epoch from coalesce(finished_at, now()) - started_at)::float as seconds, "
        "coalesce((summary -> 'totals' ->> 'rows_read')::bigint, "
        "(summary ->> 'rows_read')::bigint) as rows_read, "
        "coalesce((summary -> 'totals' ->> 'rows_promoted')::bigint, "
        "(summary ->> 'rows_promoted')::bigint) as rows_promoted, "
        "coalesce((summary -> 'totals' ->> 'rows_held_back')::bigint, "
        "(summary ->> 'rows_held_back')::bigint) as rows_held_back, "
        "jsonb_array_length(coalesce(summary -> 'files', '[]')) as files_read, "
        "jsonb_array_length(coalesce(summary -> 'files_skipped', '[]')) as files_skipped, "
        "host, pid from audit.runs order by started_at desc, run_id desc limit %s",
        (limit,),
    )
    return records(cursor)


# --- audit.batches and audit.rejected_rows ----------------------------------------------------


def batch_states(
    conn: psycopg.Connection, batch_ids: Iterable[str] | None = None
) -> dict[str, BatchState]:
    """Batch id → state in the ledger: of `batch_ids`, or of every batch when None."""
    if batch_ids is None:
        found = conn.execute("select batch_id, status from audit.batches").fetchall()
    else:
        found = conn.execute(
            "select batch_id, status from audit.batches where batch_id = any(%s)",
            (list(batch_ids),),
        ).fetchall()
    return {batch_id: BatchState(status) for batch_id, status in found}


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
    return Settlement(
        batch, BatchState(status), promoted, rejected, why, rows, attempts, replayed=True
    )


def recorded_among(conn: psycopg.Connection, batches: list[BatchInfo]) -> dict[str, Settlement]:
    """`recorded` for several batches in one round trip where none is settled (the usual
    case): batch id → the ledger's settlement, for those that are."""
    found = conn.execute(
        "select batch_id from audit.batches where batch_id = any(%s) and status = any(%s)",
        ([batch.batch_id for batch in batches], [str(state) for state in SETTLED]),
    ).fetchall()
    settled = {batch_id for (batch_id,) in found}
    return {batch.batch_id: recorded(conn, batch) for batch in batches if batch.batch_id in settled}


def record_settlement(conn: psycopg.Connection, record: dict) -> None:
    """Write a batch's ledger row (`Settlement.record`), clearing failing rows an earlier
    settlement of the same batch logged (the caller logs this one's)."""
    conn.execute(
        """with cleared as (delete from audit.rejected_rows where batch_id = %(batch_id)s)
        insert into audit.batches (batch_id, run_id, table_name, source, first_line,
        last_line, rows_read, rows_promoted, rows_rejected, status, reasons, attempts)
        values (%(batch_id)s, %(run_id)s, %(table)s, %(source)s, %(first_line)s, %(last_line)s,
        %(rows)s, %(rows_promoted)s, %(rows_rejected)s, %(status)s, %(reasons)s::jsonb,
        %(attempts)s)
        on conflict (batch_id) do update set run_id = excluded.run_id,
        rows_promoted = excluded.rows_promoted, rows_rejected = excluded.rows_rejected,
        status = excluded.status, reasons = excluded.reasons, settled_at = now(),
        attempts = audit.batches.attempts + excluded.attempts""",
        {**record, "reasons": json.dumps(record["reasons"])},
    )


# --- what the API and the dashboard show ------------------------------------------------------


def run_record(conn: psycopg.Connection, run_id: str) -> dict | None:
    """A run's row in audit.runs, its summary (the run's own counts) included; None if there is
    no such run."""
    cursor = conn.execute(
        "select run_id, started_at, finished_at, input, batch_size, policy, status, host, pid, "
        "summary from audit.runs where run_id = %s",
        (run_id,),
    )
    found = cursor.fetchone()
    if found is None:
        return None
    return dict(zip([column.name for column in cursor.description], found))


def run_verdicts(conn: psycopg.Connection, run_ids: list[str]) -> dict[str, dict]:
    """Run id → its batches by verdict (`batches_promoted`, `batches_partially_promoted`,
    `batches_rejected`), from the run's own summary like the row counts of `recent_runs`: a
    batch that another run settles later stays counted by the run that settled it first. A run
    still running has no summary yet: its counts are None."""
    cursor = conn.execute(
        "select run_id, (totals ->> 'batches_promoted')::bigint as batches_promoted, "
        "(totals ->> 'batches_partially_promoted')::bigint as batches_partially_promoted, "
        "(totals ->> 'batches_rejected')::bigint as batches_rejected "
        "from audit.runs "
        "cross join lateral (select coalesce(summary -> 'totals', summary) as totals) as summed "
        "where run_id = any(%s)",
        (list(run_ids),),
    )
    names = [column.name for column in cursor.description][1:]
    return {run_id: dict(zip(names, counts)) for run_id, *counts in cursor.fetchall()}


def batch_record(conn: psycopg.Connection, batch_id: str) -> dict | None:
    """A batch's row in audit.batches with its failing rows (`failing_rows`: line, values,
    failures, by line); None if the ledger has no such batch."""
    cursor = conn.execute(
        "select batch_id, run_id, table_name, source, first_line, last_line, rows_read, "
        "rows_promoted, rows_rejected, status, reasons, attempts, settled_at "
        "from audit.batches where batch_id = %s",
        (batch_id,),
    )
    found = cursor.fetchone()
    if found is None:
        return None
    record = dict(zip([column.name for column in cursor.description], found))
    failing = conn.execute(
        "select line_number, raw_values, failures from audit.rejected_rows where batch_id = %s "
        "order by line_number",
        (batch_id,),
    ).fetchall()
    record["failing_rows"] = [
        {"line": line, "values": values, "failures": failures} for line, values, failures in failing
    ]
    return record


def rejection_reasons(conn: psycopg.Connection, limit: int) -> list[dict]:
    """Failing rows per field and rule over every batch in the ledger, most first."""
    cursor = conn.execute(
        "select reason ->> 'field' as field, reason ->> 'rule' as rule, "
        "sum(coalesce((reason ->> 'rows')::int, 0)) as rows "
        "from audit.batches, jsonb_array_elements(reasons) as reason "
        "group by 1, 2 order by 3 desc, 1, 2 limit %s",
        (limit,),
    )
    return records(cursor)
