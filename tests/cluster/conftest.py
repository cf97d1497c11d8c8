"""Fixtures for the cluster tests: sample input, fresh databases, a sequential run to compare
with, and what "the same result" means: every ledger row, core row and rejected row, raw's
row count per batch, and the summary's counts."""

from __future__ import annotations

import secrets
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from loader.flow.file_run import run_files
from loader.sample import write_sample
from loader.settings import Settings
from loader.tables import TABLES
from tests.conftest import with_database

ROWS = 3000
BATCH_SIZE = 100
TASK_ROWS = 500  # six tasks of hires: several per worker, and some to kill a worker in
# An id written again 2,250 lines after its first row, under another name: a sequential run
# keeps the later row, so settling on several connections must settle the two in file order.
REPEATED_AT, REPEATED_ID, REPEATED_NAME = 2500, 250, "Written Later"
COUNTS = ("tables", "batch_size", "policy", "status", "input")


@pytest.fixture(scope="session")
def cluster_sample(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cluster-sample")
    write_sample(folder, rows=ROWS)
    path = folder / "hired_employees.csv"
    lines = path.read_bytes().split(b"\r\n")
    lines.insert(REPEATED_AT, f"{REPEATED_ID},{REPEATED_NAME},2021-03-01T10:00:00Z,1,1".encode())
    path.write_bytes(b"\r\n".join(lines))
    return folder


@pytest.fixture(scope="session")
def sequential_result(server_url, cluster_sample, tmp_path_factory):
    """The sequential run of the sample under a policy, made once per session and policy."""
    made: dict[str, dict] = {}
    with databases(server_url) as new_database:

        def result(policy: str) -> dict:
            if policy not in made:
                state = tmp_path_factory.mktemp(f"sequential-{policy}")
                made[policy] = sequential(new_database(), state, cluster_sample, policy)
            return made[policy]

        yield result


@pytest.fixture()
def new_database(server_url):
    """Make databases of this test's own, with no schemas yet; dropped afterwards."""
    with databases(server_url) as make:
        yield make


@contextmanager
def databases(server_url: str):
    """A function making fresh databases on the server; they are dropped on leaving."""
    made = []

    def make() -> str:
        name = f"test_cluster_{secrets.token_hex(4)}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'create database "{name}"')
        made.append(name)
        return with_database(server_url, name)

    try:
        yield make
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            for name in made:
                conn.execute(f'drop database if exists "{name}" with (force)')


def settings(url: str, state: Path, input_dir: Path, policy: str, **more) -> Settings:
    return Settings(
        database_url=url,
        state_dir=state,
        input_dir=input_dir,
        batch_size=BATCH_SIZE,
        policy=policy,
        task_rows=TASK_ROWS,
        build_marts=False,
        **more,
    )


def sequential(url: str, state: Path, input_dir: Path, policy: str) -> dict:
    """The result of today's in-process run of the same input: what a cluster run must equal."""
    summary = run_files(settings(url, state, input_dir, policy))
    return {"database": snapshot(url), "summary": counts(summary.as_dict())}


def counts(summary: dict) -> dict:
    """The summary without what differs between any two runs (ids, times, folders)."""
    return {key: summary[key] for key in COUNTS} | {"totals": summary["totals"]}


def snapshot(url: str) -> dict:
    """Every row a run leaves, but the times it wrote and its run id."""
    with psycopg.connect(url) as conn:

        def rows(statement: str) -> list[tuple]:
            return conn.execute(statement).fetchall()

        found = {
            "ledger": rows(
                "select batch_id, table_name, source, first_line, last_line, rows_read, "
                "rows_promoted, rows_rejected, status, reasons, attempts "
                "from audit.batches order by batch_id"
            ),
            "rejected": rows(
                "select batch_id, table_name, source, line_number, raw_values, failures "
                "from audit.rejected_rows order by batch_id, line_number"
            ),
        }
        for table in TABLES:
            columns = ", ".join([*table.column_names, "_batch_id"])
            found[f"core.{table.name}"] = rows(
                f'select {columns} from core."{table.name}" order by id'
            )
            found[f"raw.{table.name}"] = rows(
                f'select _batch_id, _line_number, count(*) from raw."{table.name}" '
                "group by 1, 2 order by 1, 2"
            )
    return found
