"""audit.runs: one row per run of the loader or per API batch, opened and closed here."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime

import psycopg


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def open_run(
    conn: psycopg.Connection, run_id: str, source: str, batch_size: int, policy: str
) -> None:
    conn.execute(
        "insert into audit.runs (run_id, started_at, input, batch_size, policy, status) "
        "values (%s, now(), %s, %s, %s, 'running')",
        (run_id, source, batch_size, policy),
    )


def close_run(conn: psycopg.Connection, run_id: str, status: str, summary: dict) -> None:
    conn.execute(
        "update audit.runs set finished_at = now(), status = %s, summary = %s::jsonb "
        "where run_id = %s",
        (status, json.dumps(summary, default=str), run_id),
    )
