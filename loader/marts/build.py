"""Builds the dbt marts in-process (dbt's programmatic runner) and reports what they hold.

dbt reads its connection from profiles.yml at the repo root, which takes libpq's PG* variables
from the environment; they are set from the URL the loader uses for the build's duration only
(`libpq_variables`), so `dbt build` from a shell and the loader's build reach the same database
and the process's environment is as it was afterwards.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from psycopg import sql

from loader.db.connect import LIBPQ_VARIABLES, connect, libpq_environment
from loader.db.locks import marts_lock
from loader.db.schema import ensure_schemas
from loader.observe.events import Ending, Job, Observers, Started
from loader.settings import PROJECT_DIR

MARTS = ("hires_by_quarter", "departments_above_mean")
SNAPSHOT_TABLE = sql.Identifier("staging", "int_hires_per_department_job")


@dataclass
class MartsBuild:
    """The outcome of one `dbt build`: success, the failing nodes, and rows per mart."""

    success: bool
    failures: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)


def build_marts(
    url: str,
    state_dir: Path,
    observers: Observers | None = None,
    parent: Started | None = None,
) -> MartsBuild:
    """Run `dbt build` on the database at `url`; artefacts and logs go under `state_dir`.
    `observers` hear the build start and end (`parent`: the run that asked for it), and find
    dbt's manifest and run results in the `Finished` they are handed.

    Builds are serialised by the marts lock. Every mart is derived from one table built by one
    statement (`staging.int_hires_per_department_job`), so the marts show one state of core:
    everything committed before that statement began, which is recorded as their `as_of`.
    """
    observers = observers or Observers()
    build_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)
    with observers.job(Job.MARTS_BUILD, build_id, parent=parent, tables=list(MARTS)) as (_, end):
        build = _build_and_record(url, state_dir)
        end.marts, end.dbt_target = build, state_dir / "dbt" / "target"
        if not build.success:
            end.ending, end.error = Ending.FAIL, "dbt build failed: " + "; ".join(build.failures)
    return build


def _build_and_record(url: str, state_dir: Path) -> MartsBuild:
    with connect(url, autocommit=True) as conn, marts_lock(conn):
        ensure_schemas(conn)
        started = datetime.now(UTC)
        with libpq_variables(url):
            build = _dbt_build(state_dir)
        if not build.success:
            return build
        for mart in MARTS:
            build.rows[mart] = conn.execute(
                sql.SQL("select count(*) from {}").format(sql.Identifier("marts", mart))
            ).fetchone()[0]
        snapshot = conn.execute(
            sql.SQL("select max(snapshot_at) from {}").format(SNAPSHOT_TABLE)
        ).fetchone()[0]
        conn.execute(
            "insert into audit.mart_builds (built_at, rows) values (%s, %s::jsonb) "
            "on conflict (built_at) do nothing",
            (snapshot or started, json.dumps(build.rows)),
        )
    return build


@contextmanager
def libpq_variables(url: str) -> Iterator[None]:
    """The PG* variables of `url` in this process's environment while inside, then the
    environment as it was."""
    saved = {variable: os.environ.get(variable) for variable in LIBPQ_VARIABLES.values()}
    for variable in saved:
        os.environ.pop(variable, None)
    os.environ.update(libpq_environment(url))
    try:
        yield
    finally:
        for variable, value in saved.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value


def _dbt_build(state_dir: Path) -> MartsBuild:
    from dbt.cli.main import dbtRunner

    result = dbtRunner().invoke(
        [
            "build",
            "--project-dir",
            str(PROJECT_DIR),
            "--profiles-dir",
            str(PROJECT_DIR),
            "--target-path",
            str(state_dir / "dbt" / "target"),
            "--log-path",
            str(state_dir / "dbt" / "logs"),
            "--quiet",
        ]
    )
    if result.exception is not None:
        return MartsBuild(False, [f"dbt could not run: {result.exception}"])
    failures = [
        f"{node.node.name}: {node.status}: {_one_line(node.message)}"
        for node in (result.result or [])
        if str(node.status) in ("error", "fail", "runtime error")
    ]
    return MartsBuild(bool(result.success) and not failures, failures)


def _one_line(message: str | None) -> str:
    """dbt's multi-line error as one line, cut before the compiled SQL."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    return " ".join(line for line in lines if not line.startswith("compiled code"))[:300]
