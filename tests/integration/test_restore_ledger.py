"""Restores keep the ledger true: after "restore T, then run the same input again" core.T holds
what it held before the restore, and no row is silently skipped (real PostgreSQL, real runs,
backup files read back)."""

from __future__ import annotations

import json
import secrets
import shutil
import threading
import time
from pathlib import Path

import fastavro
import psycopg
import pytest

from backup.ledger import LEDGER
from backup.restore import restore_table
from backup.store import create_backup, find_backup, verify_backup
from loader.db.locks import table_lock
from loader.flow.file_run import run_files
from loader.sample import write_sample
from tests.conftest import settings_for, with_database

pytestmark = pytest.mark.database

FIRST_ROWS = 3000  # three batches of 1000; the second holds the sample's broken stretch
HIRED = "hired_employees"


@pytest.fixture()
def url(clean):
    """Every test loads, backs up and restores from an empty database."""
    return clean


@pytest.fixture()
def inputs(tmp_path):
    """The first input, and a second one: the same files with lines appended (new hires in two
    batches, one of them rejected for a missing name; a new department and hires in it)."""
    first, second = tmp_path / "first", tmp_path / "second"
    write_sample(first, rows=FIRST_ROWS)
    shutil.copytree(first, second)
    with (second / "departments.csv").open("ab") as handle:
        handle.write(b"13,Restored Later\r\n")
    lines = []
    for number in range(FIRST_ROWS + 1, FIRST_ROWS + 1501):
        name = "" if number == FIRST_ROWS + 1200 else f"Hire {number}"
        department = 13 if number % 100 == 0 else number % 12 + 1
        lines.append(f"{number},{name},2022-03-{number % 28 + 1:02d}T10:00:00Z,{department},1")
    with (second / "hired_employees.csv").open("ab") as handle:
        handle.write("".join(line + "\r\n" for line in lines).encode())
    return first, second


def load(url: str, state: Path, folder: Path) -> None:
    run_files(settings_for(url, state, folder, build_marts=False))


def fingerprint(url: str, table: str) -> tuple:
    """Count and md5 of the table's rows in id order: the fields and the batch that wrote each
    (not `_promoted_at`, which a re-run sets anew)."""
    columns = {
        "departments": "id, department",
        "jobs": "id, job",
        HIRED: "id, name, datetime, department_id, job_id",
    }[table]
    with psycopg.connect(url) as conn:
        conn.execute("set timezone = 'UTC'")
        return conn.execute(
            f"select count(*), md5(coalesce(string_agg(row({columns}, _batch_id)::text, '|' "
            f"order by id), '')) from core.{table}"
        ).fetchone()


def ledger_of(url: str, table: str) -> tuple[list, list]:
    """The table's rows in audit.batches and audit.rejected_rows, every column."""
    with psycopg.connect(url) as conn:
        batches = conn.execute(
            "select * from audit.batches where table_name = %s order by batch_id", (table,)
        ).fetchall()
        rejected = conn.execute(
            "select * from audit.rejected_rows where table_name = %s "
            "order by batch_id, line_number",
            (table,),
        ).fetchall()
    return batches, rejected


def assert_ledger_agrees_with_core(url: str) -> None:
    """No promoted batch whose rows are missing, no core row without its promoted batch, no
    rejected line recorded twice, every batch settled."""
    with psycopg.connect(url) as conn:
        missing = conn.execute(
            "select b.batch_id, b.rows_promoted, count(c.id) from audit.batches b "
            "left join core.hired_employees c on c._batch_id = b.batch_id "
            "where b.table_name = 'hired_employees' "
            "and b.status in ('promoted', 'partially_promoted') "
            "group by b.batch_id, b.rows_promoted having count(c.id) <> b.rows_promoted"
        ).fetchall()
        assert missing == [], "promoted batches whose rows core does not hold"
        orphans = conn.execute(
            "select count(*) from core.hired_employees c where not exists (select 1 from "
            "audit.batches b where b.batch_id = c._batch_id "
            "and b.status in ('promoted', 'partially_promoted'))"
        ).fetchone()[0]
        assert orphans == 0, "core rows whose batch the ledger does not hold as promoted"
        twice = conn.execute(
            "select batch_id, line_number from audit.rejected_rows "
            "group by batch_id, line_number having count(*) > 1"
        ).fetchall()
        assert twice == []
        unsettled = conn.execute(
            "select count(*) from audit.batches where status in ('waiting', 'failed')"
        ).fetchone()[0]
        assert unsettled == 0


def every_line_settled_once(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "select sum(rows_read) from audit.batches where table_name = %s", (table,)
        ).fetchone()[0]


def test_restore_then_rerun_gives_back_what_core_held_before_the_restore(url, inputs, tmp_path):
    first, second = inputs
    state, folder = tmp_path / "state", tmp_path / "backups"
    load(url, state, first)
    at_backup = fingerprint(url, HIRED)
    made = create_backup(url, folder)
    ledger_at_backup = ledger_of(url, HIRED)
    assert ledger_at_backup[1], "the sample's broken stretch gives rejected rows"

    load(url, state, second)
    before_restore = fingerprint(url, HIRED)
    rejected_before_restore = ledger_of(url, HIRED)[1]
    others = ledger_of(url, "departments"), ledger_of(url, "jobs")
    assert before_restore[0] == at_backup[0] + 1000, "one new batch promoted, one rejected"

    (done,) = restore_table(url, folder, HIRED, made.stamp)
    assert fingerprint(url, HIRED) == at_backup
    assert ledger_of(url, HIRED) == ledger_at_backup, "the ledger is exactly the backup's"
    assert (done.batches, done.rejected_rows, done.redo) == (
        len(ledger_at_backup[0]),
        len(ledger_at_backup[1]),
        None,
    )
    assert (ledger_of(url, "departments"), ledger_of(url, "jobs")) == others, "left as they were"
    assert_ledger_agrees_with_core(url)

    load(url, state, second)
    assert fingerprint(url, HIRED) == before_restore
    assert ledger_of(url, HIRED)[1] == rejected_before_restore
    assert every_line_settled_once(url, HIRED) == FIRST_ROWS + 1500
    assert_ledger_agrees_with_core(url)


def test_the_backup_holds_the_ledger_from_the_same_snapshot_in_avro_files(url, inputs, tmp_path):
    first, _ = inputs
    load(url, tmp_path / "state", first)
    made = create_backup(url, tmp_path / "backups")
    manifest = json.loads((made.path / "manifest.json").read_text())
    assert set(manifest["ledger"]) == {"runs", "batches", "rejected_rows"}
    records = {}
    for audit in LEDGER:
        entry = manifest["ledger"][audit.name]
        with (made.path / entry["file"]).open("rb") as handle:
            records[audit.name] = list(fastavro.reader(handle))
        assert len(records[audit.name]) == entry["rows"] > 0
    batches, rejected = ledger_of(url, HIRED)
    hired = [r for r in records["batches"] if r["table_name"] == HIRED]
    assert [(r["batch_id"], r["status"], r["settled_at"]) for r in hired] == [
        (b[0], b[9], b[11]) for b in batches
    ]
    lines = [r for r in records["rejected_rows"] if r["table_name"] == HIRED]
    assert [(r["batch_id"], r["line_number"], json.loads(r["failures"])) for r in lines] == [
        (r[0], r[4], r[6]) for r in rejected
    ]
    referenced = {r["run_id"] for r in records["batches"]}
    assert referenced <= {r["run_id"] for r in records["runs"]}
    checked = verify_backup(find_backup(tmp_path / "backups", made.stamp))
    assert checked["audit.batches"] == len(records["batches"])


def test_a_restore_with_dependents_puts_back_every_restored_tables_ledger(url, inputs, tmp_path):
    first, second = inputs
    state, folder = tmp_path / "state", tmp_path / "backups"
    load(url, state, first)
    made = create_backup(url, folder)
    at_backup = {t: (fingerprint(url, t), ledger_of(url, t)) for t in ("departments", HIRED)}
    load(url, state, second)
    before_restore = {t: fingerprint(url, t) for t in ("departments", HIRED)}
    assert before_restore["departments"][0] == 13

    done = restore_table(url, folder, "departments", made.stamp, with_dependents=True)
    assert [d.table for d in done] == ["departments", HIRED]
    for table, (rows, ledger) in at_backup.items():
        assert fingerprint(url, table) == rows
        assert ledger_of(url, table) == ledger
    assert_ledger_agrees_with_core(url)

    load(url, state, second)
    assert {t: fingerprint(url, t) for t in ("departments", HIRED)} == before_restore
    assert_ledger_agrees_with_core(url)


def test_a_backup_without_ledger_files_restores_and_the_rerun_brings_the_rows_back(
    url, inputs, tmp_path
):
    """A backup made by the earlier release: its restore takes the batches settled since the
    backup out of the ledger, so the next run redoes them."""
    first, second = inputs
    state, folder = tmp_path / "state", tmp_path / "backups"
    load(url, state, first)
    at_backup = fingerprint(url, HIRED)
    made = create_backup(url, folder)
    manifest_path = made.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest.pop("ledger").values():
        (made.path / entry["file"]).unlink()
    manifest["format"] = 1  # as the earlier release wrote it
    manifest_path.write_text(json.dumps(manifest, indent=2))
    assert set(verify_backup(find_backup(folder, made.stamp))) == {"departments", "jobs", HIRED}

    load(url, state, second)
    before_restore = fingerprint(url, HIRED)
    (done,) = restore_table(url, folder, HIRED, made.stamp)
    assert done.redo == 2, "the two batches of the appended lines"
    assert fingerprint(url, HIRED) == at_backup
    assert_ledger_agrees_with_core(url)

    load(url, state, second)
    assert fingerprint(url, HIRED) == before_restore
    assert every_line_settled_once(url, HIRED) == FIRST_ROWS + 1500
    assert_ledger_agrees_with_core(url)


def test_a_restore_into_another_database_brings_the_ledger_and_its_runs(url, inputs, tmp_path):
    first, _ = inputs
    load(url, tmp_path / "state", first)
    made = create_backup(url, tmp_path / "backups")
    name = f"test_restore_ledger_copy_{secrets.token_hex(3)}"
    target = with_database(url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    try:
        for table in ("departments", "jobs"):
            restore_table(target, tmp_path / "backups", table, made.stamp)
        restore_table(target, tmp_path / "backups", HIRED, made.stamp)
        for table in ("departments", "jobs", HIRED):
            assert fingerprint(target, table) == fingerprint(url, table)
            assert ledger_of(target, table) == ledger_of(url, table)
        with psycopg.connect(target) as conn:
            runs = conn.execute("select run_id, status from audit.runs").fetchall()
        assert len(runs) == 1
        assert_ledger_agrees_with_core(target)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)')


def test_the_ledger_schemas_declare_every_audit_column(url, inputs, tmp_path):
    load(url, tmp_path / "state", inputs[0])
    kinds = {"text": "text", "integer": "int4", "json": "jsonb", "timestamp": "timestamptz"}
    with psycopg.connect(url) as conn:
        for audit in LEDGER:
            found = conn.execute(
                "select column_name, udt_name, is_nullable = 'YES' from information_schema.columns "
                "where table_schema = 'audit' and table_name = %s order by ordinal_position",
                (audit.name,),
            ).fetchall()
            declared = [(f.name, kinds[f.kind], f.nullable) for f in audit.fields]
            assert sorted(found) == sorted(declared), audit.name


def waiting_for_advisory_locks(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "select count(*) from pg_locks where locktype = 'advisory' and not granted "
            "and database = (select oid from pg_database where datname = current_database())"
        ).fetchone()[0]


def test_a_restore_waits_for_settlements_into_its_table_and_a_backup_does_not(
    url, inputs, tmp_path
):
    load(url, tmp_path / "state", inputs[0])
    folder = tmp_path / "backups"
    made = create_backup(url, folder)
    outcome: dict = {}

    def back_up() -> None:
        outcome["backup"] = create_backup(url, folder)

    def restore() -> None:
        outcome["restored"] = restore_table(url, folder, HIRED, made.stamp)

    with psycopg.connect(url) as settling:
        table_lock(settling, HIRED)  # shared, in an open transaction, as a settlement holds it
        backing_up = threading.Thread(target=back_up)
        backing_up.start()
        backing_up.join(timeout=60)
        assert "backup" in outcome, "a backup (shared) must not wait for a settlement (shared)"
        restoring = threading.Thread(target=restore)
        restoring.start()
        deadline = time.monotonic() + 30
        while not waiting_for_advisory_locks(url) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert waiting_for_advisory_locks(url) == 1 and "restored" not in outcome
        settling.rollback()
    restoring.join(timeout=60)
    assert [done.table for done in outcome["restored"]] == [HIRED]


def test_a_stored_api_answer_about_a_batch_the_restore_removed_is_forgotten(url, inputs, tmp_path):
    first, second = inputs
    state, folder = tmp_path / "state", tmp_path / "backups"
    load(url, state, first)
    made = create_backup(url, folder)
    load(url, state, second)
    with psycopg.connect(url) as conn:
        kept, removed = (
            conn.execute(
                "select batch_id from audit.batches where table_name = %s and first_line "
                f"{operator} %s order by first_line limit 1",
                (HIRED, FIRST_ROWS),
            ).fetchone()[0]
            for operator in ("<", ">")
        )
        for key, batch_id in (("kept", kept), ("removed", removed)):
            conn.execute(
                "insert into audit.api_requests (idempotency_key, body_sha256, status_code, "
                "response) values (%s, 'x', 201, %s)",
                (key, json.dumps({"batch_id": batch_id, "status": "promoted"})),
            )
    restore_table(url, folder, HIRED, made.stamp)
    with psycopg.connect(url) as conn:
        keys = conn.execute("select idempotency_key from audit.api_requests").fetchall()
    assert keys == [("kept",)], "a re-send of the removed batch is settled again, not replayed"
