"""The settlement engine against a real PostgreSQL, dlt and GX: the ledger's states, re-judging
batches that waited for a parent, retrying a deadlock, values PostgreSQL refuses logged as row
failures, and a database of the first release upgraded in place."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from loader.db.schema import MIGRATIONS_DIR, core_table_ddl, migrations
from loader.flow.file_run import run_files
from loader.flow.judge.checkpoints import InProcessGate
from loader.flow.source.csv_reader import read_batches
from loader.tables import TABLES, table_named
from tests.conftest import settings_for

pytestmark = pytest.mark.database


def rows(url, query, *args):
    with psycopg.connect(url) as conn:
        return conn.execute(query, args).fetchall()


def write_input(folder, departments, jobs, hires):
    folder.mkdir(exist_ok=True)
    (folder / "departments.csv").write_text("".join(f"{line}\n" for line in departments))
    (folder / "jobs.csv").write_text("".join(f"{line}\n" for line in jobs))
    (folder / "hired_employees.csv").write_text("".join(f"{line}\n" for line in hires))
    return folder


def run(url, tmp_path, folder, **overrides):
    settings = settings_for(url, tmp_path / "state", folder, build_marts=False, **overrides)
    return run_files(settings)


def hires(count, department=1, start=1):
    return [
        f"{i},Person {i},2021-05-05T10:00:00Z,{department},1" for i in range(start, start + count)
    ]


def table_summary(summary, name):
    return next(table for table in summary.tables if table.table == name)


def test_hires_waiting_for_a_missing_department_are_promoted_once_it_arrives(clean, tmp_path):
    folder = write_input(tmp_path / "in", ["1,Sales"], ["1,Clerk"], hires(5, department=2))
    first = run(clean, tmp_path, folder)
    assert table_summary(first, "hired_employees").batches_waiting == 1
    assert rows(clean, "select status from audit.batches where table_name = 'hired_employees'") == [
        ("waiting",)
    ]
    logged = rows(clean, "select failures->0->>'rule' from audit.rejected_rows")
    assert logged == [("exists in departments",)] * 5

    write_input(folder, ["1,Sales", "2,Research"], ["1,Clerk"], hires(5, department=2))
    second = run(clean, tmp_path, folder)
    hired = table_summary(second, "hired_employees")
    assert (hired.batches_rejudged, hired.batches_promoted, hired.rows_promoted) == (1, 1, 5)
    assert rows(clean, "select count(*) from core.hired_employees where department_id = 2") == [
        (5,)
    ]
    assert rows(clean, "select count(*) from audit.rejected_rows") == [(0,)]
    # The re-judged batch was settled from the copy its first run landed in raw.
    assert rows(clean, "select count(*) from raw.hired_employees") == [(5,)]


def test_with_quarantine_only_the_rows_of_a_missing_department_wait(clean, tmp_path):
    folder = write_input(
        tmp_path / "in", ["1,Sales"], ["1,Clerk"], hires(3) + hires(2, department=2, start=4)
    )
    first = run(clean, tmp_path, folder, policy="quarantine_rows")
    hired = table_summary(first, "hired_employees")
    assert (hired.batches_waiting, hired.rows_promoted, hired.rows_held_back) == (1, 3, 2)

    write_input(
        folder, ["1,Sales", "2,Research"], ["1,Clerk"], hires(3) + hires(2, department=2, start=4)
    )
    run(clean, tmp_path, folder, policy="quarantine_rows")
    assert rows(clean, "select count(*) from core.hired_employees") == [(5,)]
    assert rows(clean, "select status from audit.batches where table_name = 'hired_employees'") == [
        ("promoted",)
    ]


def rules_that_miss(monkeypatch, line):
    """The gate with one line's failures forgotten: a stand-in for a value the rules let through
    and PostgreSQL refuses. test_rules_agree_with_postgres.py finds none today; the net stays."""
    check = InProcessGate.check

    def forgetful(self, *args, **kwargs):
        verdicts = check(self, *args, **kwargs)
        for verdict in verdicts.values():
            verdict.failing_rows.pop(line, None)
        return verdicts

    monkeypatch.setattr(InProcessGate, "check", forgetful)


def hires_settled(url):
    """The hires' batches in the ledger: (status, rows promoted) each."""
    return rows(
        url, "select status, rows_promoted from audit.batches where table_name = 'hired_employees'"
    )


@pytest.mark.parametrize(
    ("policy", "status", "promoted"),
    [("reject_batch", "rejected", 0), ("quarantine_rows", "partially_promoted", 3)],
)
def test_a_value_postgresql_refuses_is_logged_as_a_row_failure_with_its_message(
    clean, tmp_path, monkeypatch, policy, status, promoted
):
    lines = hires(4)
    lines[2] = "3,Far East,2021-05-05T10:00:00+18:00,1,1"
    rules_that_miss(monkeypatch, line=3)
    folder = write_input(tmp_path / "in", ["1,Sales"], ["1,Clerk"], lines)
    run(clean, tmp_path, folder, policy=policy)
    assert hires_settled(clean) == [(status, promoted)]
    (failures,) = rows(clean, "select line_number, failures from audit.rejected_rows")
    assert failures[0] == 3
    (failure,) = failures[1]
    assert failure["field"] == "datetime"
    assert "time zone displacement out of range" in failure["rule"]
    assert rows(clean, "select count(*) from core.hired_employees") == [(promoted,)]


@pytest.mark.parametrize(("policy", "promoted"), [("reject_batch", 0), ("quarantine_rows", 3)])
def test_a_reference_to_a_missing_parent_never_reaches_core_whoever_checks_it(
    clean, tmp_path, monkeypatch, policy, promoted
):
    """The rules miss line 3's department (it does not exist); settling still refuses it: the
    set-based check that stands in for PostgreSQL's per-row triggers finds it, and the row is
    settled the plain way, where PostgreSQL's foreign key refuses it; it waits for its
    department like a row the rules caught."""
    lines = hires(4)
    lines[2] = "3,Nowhere,2021-05-05T10:00:00Z,2,1"
    rules_that_miss(monkeypatch, line=3)
    folder = write_input(tmp_path / "in", ["1,Sales"], ["1,Clerk"], lines)
    run(clean, tmp_path, folder, policy=policy)
    assert hires_settled(clean) == [("waiting", promoted)]
    (failures,) = rows(clean, "select line_number, failures from audit.rejected_rows")
    assert failures[0] == 3
    assert [(f["field"], f["rule"]) for f in failures[1]] == [
        ("department_id", "exists in departments")
    ]
    assert rows(
        clean,
        "select count(*) from core.hired_employees h "
        "where not exists (select from core.departments d where d.id = h.department_id)",
    ) == [(0,)]
    assert rows(clean, "select count(*) from core.hired_employees") == [(promoted,)]


def test_batches_settled_together_still_settle_alone_when_one_is_refused(
    clean, tmp_path, monkeypatch
):
    """Three batches that passed the rules settle in one transaction; the middle one's missing
    department (which the rules missed) rolls that back, and each batch then settles alone:
    the other two promoted, the middle one waiting, nothing of it in core."""
    lines = hires(6)
    lines[2] = "3,Nowhere,2021-05-05T10:00:00Z,2,1"
    rules_that_miss(monkeypatch, line=3)
    folder = write_input(tmp_path / "in", ["1,Sales"], ["1,Clerk"], lines)
    run(clean, tmp_path, folder, batch_size=2, settle_connections=1)  # one lane, one group
    assert rows(
        clean,
        "select first_line, status, rows_promoted from audit.batches "
        "where table_name = 'hired_employees' order by first_line",
    ) == [(1, "promoted", 2), (3, "waiting", 0), (5, "promoted", 2)]
    assert rows(clean, "select id from core.hired_employees order by id") == [
        (1,), (2,), (5,), (6,)
    ]  # fmt: skip


def waiting_backends(url, other_than):
    return rows(
        url,
        "select pid from pg_stat_activity where wait_event_type = 'Lock' and pid <> %s "
        "and datname = current_database()",
        other_than,
    )


def test_a_deadlock_during_promotion_is_retried_and_the_batch_promoted(clean, tmp_path):
    names = [f"{i},Department {i}" for i in range(1, 51)]
    folder = write_input(tmp_path / "in", names, ["1,Clerk"], [])
    run(clean, tmp_path, folder)
    renamed = [f"{i},Renamed {i}" for i in range(1, 51)]
    write_input(folder, renamed, ["1,Clerk"], [])

    blocker = psycopg.connect(clean)
    blocker.execute("set deadlock_timeout = '30s'")  # the loader's backend detects the cycle
    blocker.execute("update core.departments set department = department where id = 50")
    outcome = {}
    loader = threading.Thread(
        target=lambda: outcome.setdefault("summary", run(clean, tmp_path, folder))
    )
    loader.start()
    deadline = time.monotonic() + 60
    while not waiting_backends(clean, blocker.info.backend_pid):
        assert time.monotonic() < deadline, "the loader never waited for the locked row"
        time.sleep(0.02)
    # Returns once the loader's backend has found the cycle and aborted its own transaction.
    blocker.execute("update core.departments set department = department where id = 1")
    blocker.rollback()
    blocker.close()
    loader.join(timeout=120)

    departments = table_summary(outcome["summary"], "departments")
    assert (departments.batches_promoted, departments.batches_failed) == (1, 0)
    assert rows(
        clean,
        "select attempts from audit.batches where table_name = 'departments' "
        "order by settled_at desc limit 1",
    ) == [(2,)]
    assert rows(
        clean, "select count(*) from core.departments where department like 'Renamed %%'"
    ) == [(50,)]


def first_release_schema(conn):
    """The schema the first release created: no migrations table, the old ledger states."""
    conn.execute("create schema core")
    conn.execute("create schema audit")
    for table in TABLES:
        conn.execute(core_table_ddl(table))
    conn.execute((MIGRATIONS_DIR / "001_audit.sql").read_text())


def test_a_database_of_the_first_release_is_upgraded_in_place_with_nothing_lost(clean, tmp_path):
    folder = write_input(
        tmp_path / "in",
        ["1,Sales"],
        ["1,Clerk"],
        hires(3) + hires(2, department=2, start=4),
    )
    (departments,) = read_batches(folder / "departments.csv", table_named("departments"), 1000)
    (jobs,) = read_batches(folder / "jobs.csv", table_named("jobs"), 1000)
    promotion_failed, missing_department = read_batches(
        folder / "hired_employees.csv", table_named("hired_employees"), 3
    )
    with psycopg.connect(clean, autocommit=True) as conn:
        first_release_schema(conn)
        conn.execute(
            "insert into audit.runs values ('old-run', now(), null, 'x', 3, 'reject_batch', "
            "'completed', null)"
        )
        conn.execute(
            "insert into core.departments values (1, 'Sales', %s, now())", (departments.batch_id,)
        )
        conn.execute("insert into core.jobs values (1, 'Clerk', %s, now())", (jobs.batch_id,))
        ledger = [
            (departments, "departments", "promoted", "[]"),
            (jobs, "jobs", "promoted", "[]"),
            (
                promotion_failed,
                "hired_employees",
                "rejected",
                (
                    '[{"field": "*", "rule": "promotion failed: deadlock detected", '
                    '"expectation": "promotion", "rows": 0}]'
                ),
            ),
            (
                missing_department,
                "hired_employees",
                "rejected",
                (
                    '[{"field": "department_id", "rule": "exists in departments", '
                    '"expectation": "expect_column_values_to_be_in_set", "rows": 2}]'
                ),
            ),
        ]
        for batch, table, status, reasons in ledger:
            conn.execute(
                "insert into audit.batches values (%s, 'old-run', %s, 'x', %s, %s, %s, %s, %s, "
                "%s, %s::jsonb, now())",
                (
                    batch.batch_id,
                    table,
                    batch.first_line,
                    batch.last_line,
                    batch.rows,
                    batch.rows if status == "promoted" else 0,
                    0 if status == "promoted" else batch.rows,
                    status,
                    reasons,
                ),
            )

    write_input(
        folder, ["1,Sales", "2,Research"], ["1,Clerk"], hires(3) + hires(2, department=2, start=4)
    )
    summary = run(clean, tmp_path, folder, batch_size=3)

    versions = rows(clean, "select version from audit.schema_migrations order by 1")
    assert versions == [(version,) for version, _, _ in migrations()]
    hired = table_summary(summary, "hired_employees")
    assert (hired.batches_retried, hired.batches_rejudged, hired.batches_promoted) == (1, 1, 2)
    assert rows(clean, "select count(*) from core.hired_employees") == [(5,)]
    assert table_summary(summary, "jobs").batches_skipped == 1
    assert rows(clean, "select count(*) from audit.batches where status <> 'promoted'") == [(0,)]
