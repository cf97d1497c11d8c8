"""audit.runs: one row per file run or API request; opened, closed, listed, and marked
`abandoned` when the process that owned a `running` row is gone.

A run holds its liveness lock (a session-level advisory lock) from before its row is written
until its connection closes, so "running, but nobody holds its lock" means the process was
killed or lost its database: no run stays `running` forever.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from datetime import UTC, datetime

import psycopg

from loader.db.locks import hold_liveness, is_alive

RUNNING, COMPLETED, FAILED, ABANDONED = "running", "completed", "failed", "abandoned"


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def open_run(
    conn: psycopg.Connection, run_id: str, source: str, batch_size: int, policy: str
) -> None:
    """Take the run's liveness lock on `conn` (kept open for the run's life), then its row."""
    hold_liveness(conn, run_id)
    conn.execute(
        "insert into audit.runs (run_id, started_at, input, batch_size, policy, status, host, pid) "
        "values (%s, now(), %s, %s, %s, 'running', %s, %s)",
        (run_id, source, batch_size, policy, socket.gethostname(), os.getpid()),
    )


def close_run(conn: psycopg.Connection, run_id: str, status: str, summary: dict) -> None:
    conn.execute(
        "update audit.runs set finished_at = now(), status = %s, summary = %s::jsonb "
        "where run_id = %s",
        (status, json.dumps(summary, default=str), run_id),
    )


def mark_abandoned(conn: psycopg.Connection) -> list[str]:
    """Mark every `running` run whose liveness lock is free as `abandoned`; return their ids."""
    running = [
        row[0]
        for row in conn.execute("select run_id from audit.runs where status = %s", (RUNNING,))
    ]
    dead = [run_id for run_id in running if not is_alive(conn, run_id)]
    for run_id in dead:
        conn.execute(
            "update audit.runs set status = %s, abandoned_noticed_at = now() "
            "where run_id = %s and status = %s",
            (ABANDONED, run_id, RUNNING),
        )
    return dead


def holder_of_run_lock(conn: psycopg.Connection) -> str | None:
    """Words naming the file run that holds the run lock: id, host, pid, start time; None while
    the holder has taken the lock but not yet written its row."""
    found = conn.execute(
        "select run_id, host, pid, started_at from audit.runs "
        "where status = %s and input not like 'api:%%' order by started_at desc limit 1",
        (RUNNING,),
    ).fetchone()
    if found is None:
        return None
    run_id, host, pid, started = found
    return f"run {run_id} (host {host}, pid {pid}, started {started:%Y-%m-%d %H:%M:%S %Z})"


def recent_runs(conn: psycopg.Connection, limit: int) -> list[dict]:
    """The latest runs, newest first, with their counts and duration."""
    cursor = conn.execute(
        "select run_id, input, status, started_at, finished_at, "
        "extract(epoch from coalesce(finished_at, now()) - started_at)::float as seconds, "
        "coalesce((summary -> 'totals' ->> 'rows_read')::bigint, "
        "(summary ->> 'rows_read')::bigint) as rows_read, "
        "coalesce((summary -> 'totals' ->> 'rows_promoted')::bigint, "
        "(summary ->> 'rows_promoted')::bigint) as rows_promoted, "
        "coalesce((summary -> 'totals' ->> 'rows_held_back')::bigint, "
        "(summary ->> 'rows_held_back')::bigint) as rows_held_back, "
        "host, pid from audit.runs order by started_at desc, run_id desc limit %s",
        (limit,),
    )
    names = [column.name for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]
