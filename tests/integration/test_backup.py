"""AVRO backups against a real PostgreSQL: round trip, damage refused, atomic restores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC

import fastavro
import psycopg
import pytest
from psycopg.pq import TransactionStatus

from backup.avro import export_table, file_sha256
from backup.restore import restore_table
from backup.store import (
    BackupError,
    create_backup,
    find_backup,
    list_backups,
    prune,
    verify_backup,
)
from loader.flow.file_run import run_files
from loader.sample import write_sample
from tests.conftest import REPO, settings_for

pytestmark = pytest.mark.database


def checksum(url, table):
    with psycopg.connect(url) as conn:
        return conn.execute(
            f"select count(*), md5(coalesce(string_agg(t::text, '|' order by t.id), '')) "
            f"from core.{table} t"
        ).fetchone()


@pytest.fixture(scope="module")
def loaded(database_url, tmp_path_factory):
    folder = tmp_path_factory.mktemp("in")
    write_sample(folder, rows=3000, broken_share=0)
    state = tmp_path_factory.mktemp("state")
    run_files(settings_for(database_url, state, folder, build_marts=False))
    return database_url


@pytest.fixture()
def folder(tmp_path):
    return tmp_path / "backups"


def test_create_delete_restore_gives_back_the_same_table(loaded, folder):
    before = checksum(loaded, "hired_employees")
    made = create_backup(loaded, folder)
    with psycopg.connect(loaded, autocommit=True) as conn:
        conn.execute("delete from core.hired_employees where id % 3 = 0")
        conn.execute("update core.hired_employees set name = 'changed' where id % 5 = 0")
    assert checksum(loaded, "hired_employees") != before
    (done,) = restore_table(loaded, folder, "hired_employees", made.stamp)
    assert checksum(loaded, "hired_employees") == before
    assert done.rows == before[0] and done.deleted == 0


def test_manifest_describes_every_table_and_files_read_with_plain_fastavro(loaded, folder):
    made = create_backup(loaded, folder)
    manifest = json.loads((made.path / "manifest.json").read_text())
    assert set(manifest["tables"]) == {"departments", "jobs", "hired_employees"}
    assert manifest["codec"] == "deflate" and manifest["version"]
    with (made.path / "hired_employees.avro").open("rb") as handle:
        records = list(fastavro.reader(handle))
    assert len(records) == manifest["tables"]["hired_employees"]["rows"]
    with psycopg.connect(loaded) as conn:
        first = conn.execute(
            "select id, name, datetime, department_id, job_id "
            "from core.hired_employees order by id limit 1"
        ).fetchone()
    record = records[0]
    assert (
        record["id"],
        record["name"],
        record["datetime"],
        record["department_id"],
        record["job_id"],
    ) == first
    assert (
        record["datetime"].tzinfo is not None
        and record["datetime"].utcoffset().total_seconds() == 0
    )
    assert first[2].astimezone(UTC) == record["datetime"]


def ids_in(path) -> set[int]:
    with path.open("rb") as handle:
        return {record["id"] for record in fastavro.reader(handle)}


def test_all_tables_come_from_one_snapshot_while_writes_go_on(loaded, folder, monkeypatch):
    """A department and a hire in it, committed by another session once the backup has written
    departments and before it reads hired_employees: the backup holds neither (the hire would
    point at a department missing from it), the database both."""
    with psycopg.connect(loaded) as conn:
        at_snapshot = {
            table: {row[0] for row in conn.execute(f"select id from core.{table}")}
            for table in ("departments", "hired_employees")
        }
    written = []

    def export_then_write(conn, table, path):
        exported = export_table(conn, table, path)
        if table.name == "departments":
            assert conn.info.transaction_status == TransactionStatus.INTRANS, "snapshot held"
            with psycopg.connect(loaded, autocommit=True) as writer:
                # A backup that blocked writes would leave this waiting on itself for ever.
                writer.execute("set lock_timeout = '10s'")
                writer.execute("insert into core.departments values (1000, 'tmp', 'x', now())")
                writer.execute(
                    "insert into core.hired_employees values (100000, 'n', now(), 1000, 1, 'x', "
                    "now())"
                )
            written.append(table.name)
        return exported

    monkeypatch.setattr("backup.store.export_table", export_then_write)
    try:
        made = create_backup(loaded, folder)
        with psycopg.connect(loaded) as conn:
            landed = conn.execute(
                "select (select count(*) from core.departments where id = 1000), "
                "(select count(*) from core.hired_employees where id = 100000)"
            ).fetchone()
    finally:
        with psycopg.connect(loaded, autocommit=True) as conn:
            conn.execute("delete from core.hired_employees where id = 100000")
            conn.execute("delete from core.departments where id = 1000")
    assert written == ["departments"], "the write ran between two of the backup's exports"
    assert landed == (1, 1), "the write was not held up and is in the database"
    for table, ids in at_snapshot.items():
        assert ids_in(made.path / f"{table}.avro") == ids, table
        assert made.tables[table]["rows"] == len(ids), table


@pytest.mark.parametrize("damage", ["truncate", "flip", "manifest", "schema"])
def test_damaged_backups_are_refused_and_the_table_is_untouched(loaded, folder, damage):
    made = create_backup(loaded, folder)
    path = made.path / "hired_employees.avro"
    manifest_path = made.path / "manifest.json"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :])
    else:
        manifest = json.loads(manifest_path.read_text())
        entry = manifest["tables"]["hired_employees"]
        if damage == "manifest":
            entry["sha256"] = "0" * 64
        else:
            entry["schema"]["fields"] = entry["schema"]["fields"][:-1]
        manifest_path.write_text(json.dumps(manifest))
    with psycopg.connect(loaded, autocommit=True) as conn:
        conn.execute("delete from core.hired_employees where id <= 10")
    before = checksum(loaded, "hired_employees")
    with pytest.raises(BackupError):
        verify_backup(list_backups(folder)[-1])
    with pytest.raises(BackupError):
        restore_table(loaded, folder, "hired_employees", made.stamp)
    assert checksum(loaded, "hired_employees") == before
    create_backup(loaded, folder)  # leave a sound newest backup for the next tests


def ledger_count(url):
    with psycopg.connect(url) as conn:
        return conn.execute(
            "select (select count(*) from audit.batches), "
            "(select count(*) from audit.rejected_rows)"
        ).fetchone()


@pytest.mark.parametrize("damage", ["flip", "missing"])
def test_a_damaged_ledger_file_is_refused_and_nothing_changes(loaded, folder, damage):
    made = create_backup(loaded, folder)
    path = made.path / "audit.batches.avro"
    if damage == "flip":
        data = path.read_bytes()
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :])
    else:
        path.unlink()
    with psycopg.connect(loaded, autocommit=True) as conn:
        conn.execute("delete from core.hired_employees where id <= 10")
    before = checksum(loaded, "hired_employees"), ledger_count(loaded)
    with pytest.raises(BackupError, match="audit.batches.avro"):
        verify_backup(list_backups(folder)[-1])
    with pytest.raises(BackupError, match="audit.batches.avro"):
        restore_table(loaded, folder, "hired_employees", made.stamp)
    assert (checksum(loaded, "hired_employees"), ledger_count(loaded)) == before
    create_backup(loaded, folder)  # leave a sound newest backup for the next tests


def test_a_parent_restore_that_would_orphan_children_is_refused_naming_them(loaded, folder):
    made = create_backup(loaded, folder)
    with psycopg.connect(loaded, autocommit=True) as conn:
        hire = conn.execute("select max(id) from core.hired_employees").fetchone()[0]
        conn.execute("insert into core.departments values (77, 'New', 'x', now())")
        conn.execute("update core.hired_employees set department_id = 77 where id = %s", (hire,))
    before = checksum(loaded, "departments"), checksum(loaded, "hired_employees")
    with pytest.raises(
        BackupError,
        match=rf"1 hired_employees rows reference departments ids "
        rf"missing from backup .*hired_employees.id {hire} → 77.*--with-dependents",
    ):
        restore_table(loaded, folder, "departments", made.stamp)
    assert (checksum(loaded, "departments"), checksum(loaded, "hired_employees")) == before
    done = restore_table(loaded, folder, "departments", made.stamp, with_dependents=True)
    assert [d.table for d in done] == ["departments", "hired_employees"]
    with psycopg.connect(loaded) as conn:
        assert (
            conn.execute(
                "select department_id from core.hired_employees where id = %s", (hire,)
            ).fetchone()[0]
            != 77
        )
        assert (
            conn.execute("select count(*) from core.departments where id = 77").fetchone()[0] == 0
        )


def test_a_restore_killed_halfway_leaves_the_table_as_it_was(loaded, folder):
    with psycopg.connect(loaded, autocommit=True) as conn:
        conn.execute(
            "insert into core.hired_employees select i, 'bulk', now(), 1, 1, 'x', now() "
            "from generate_series(100001, 400000) i"
        )
    made = create_backup(loaded, folder)
    with psycopg.connect(loaded, autocommit=True) as conn:
        conn.execute("delete from core.hired_employees where id > 300000")
    before = checksum(loaded, "hired_employees")
    env = {**os.environ, "DATABASE_URL": loaded, "BACKUP_DIR": str(folder), "PYTHONPATH": str(REPO)}
    restore = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "backup",
            "restore",
            "--table",
            "hired_employees",
            "--from",
            made.stamp,
        ],
        env=env,
    )
    writing = 0
    with psycopg.connect(loaded, autocommit=True) as watch:
        while not writing and restore.poll() is None:
            writing = watch.execute(
                "select count(*) from pg_stat_activity where state = 'active' "
                'and query like \'copy "core"."hired_employees" %%\''
            ).fetchone()[0]
            time.sleep(0.01)
    restore.send_signal(signal.SIGKILL)
    restore.wait(timeout=30)
    assert writing, "the restore finished before it could be caught writing"
    assert checksum(loaded, "hired_employees") == before
    with psycopg.connect(loaded, autocommit=True) as conn:
        conn.execute("delete from core.hired_employees where id > 100000")


def test_prune_keeps_the_newest(loaded, folder):
    stamps = [create_backup(loaded, folder).stamp for _ in range(3)]
    assert prune(folder, 2) == stamps[:1]
    assert [b.stamp for b in list_backups(folder)] == stamps[1:]


def test_a_scheduled_run_backs_up_and_keeps_the_newest(loaded, folder):
    from backup.location import Location
    from backup.schedule import backup_and_prune

    for _ in range(3):
        backup_and_prune(lambda: loaded, Location(folder, folder.parent / "staging"), keep=2)
    backups = list_backups(folder)
    assert len(backups) == 2
    assert all(set(b.tables) == {"departments", "jobs", "hired_employees"} for b in backups)
    nowhere = "postgresql://nobody@127.0.0.1:9/none"
    backup_and_prune(lambda: nowhere, Location(folder, folder.parent / "staging"), keep=2)
    assert len(list_backups(folder)) == 2, "a failed night changes nothing and does not raise"


def database_state(url):
    """Every core table's checksum and the ledger's counts."""
    return [checksum(url, t) for t in ("departments", "jobs", "hired_employees")], ledger_count(url)


def test_prune_refuses_to_keep_fewer_than_one_and_deletes_nothing(loaded, folder):
    from backup.location import Location
    from backup.schedule import backup_and_prune

    stamps = [create_backup(loaded, folder).stamp for _ in range(2)]
    for keep in (0, -1):
        with pytest.raises(ValueError, match="at least 1"):
            prune(folder, keep)
        with pytest.raises(ValueError, match="at least 1"):
            backup_and_prune(lambda: loaded, Location(folder, folder.parent / "staging"), keep)
    assert [b.stamp for b in list_backups(folder)] == stamps, "nothing made, nothing deleted"


def test_restore_refuses_an_unknown_manifest_format_before_it_connects(loaded, folder):
    made = create_backup(loaded, folder)
    manifest_path = made.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format"] = 3
    manifest_path.write_text(json.dumps(manifest))
    nowhere = "postgresql://nobody@127.0.0.1:9/none"  # reached only if it got past the refusal
    for stamp in (made.stamp, None):
        with pytest.raises(BackupError, match="format 3, unknown to this version"):
            restore_table(nowhere, folder, "jobs", stamp)
    with pytest.raises(BackupError, match="format 3"):
        verify_backup(list_backups(folder)[-1])


@pytest.mark.parametrize("name", ["../..", "..", "/tmp", "ABSOLUTE", "a/b", ".PARTIAL", ""])
def test_a_backup_is_named_by_its_stamp_never_by_a_path(loaded, folder, name):
    made = create_backup(loaded, folder)
    name = {"ABSOLUTE": str(made.path), ".PARTIAL": f".{made.stamp}.partial"}.get(name, name)
    (folder / f".{made.stamp}.partial").mkdir()
    with pytest.raises(BackupError, match="is not a backup's name"):
        find_backup(folder, name)
    with pytest.raises(BackupError, match="is not a backup's name"):
        restore_table("postgresql://nobody@127.0.0.1:9/none", folder, "jobs", name)


def scribbled(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]


DAMAGES = {
    "truncated": lambda data: data[:-20],  # header whole: found only by decoding the records
    "flipped": scribbled,
    "emptied": lambda data: b"",
    "not avro": lambda data: b"id,department\r\n1,Product Management\r\n",
}


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("file", ["hired_employees.avro", "audit.batches.avro"])
def test_a_damaged_file_whose_checksum_was_rewritten_is_one_backup_error(
    loaded, folder, damage, file
):
    made = create_backup(loaded, folder)
    path = made.path / file
    path.write_bytes(DAMAGES[damage](path.read_bytes()))
    manifest_path = made.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    group, name = ("ledger", "batches") if file.startswith("audit.") else ("tables", file[:-5])
    manifest[group][name]["sha256"] = file_sha256(path)
    manifest_path.write_text(json.dumps(manifest))
    with psycopg.connect(loaded, autocommit=True) as conn:
        conn.execute("delete from core.hired_employees where id <= 10")
    before = database_state(loaded)
    where = f"backup {made.stamp}, {file}: "
    with pytest.raises(BackupError, match=where) as verified:
        verify_backup(find_backup(folder, made.stamp))
    with pytest.raises(BackupError, match=where) as restored:
        restore_table(loaded, folder, "hired_employees", made.stamp)
    for error in (verified.value, restored.value):
        assert "\n" not in str(error)
    assert database_state(loaded) == before
    create_backup(loaded, folder)  # leave a sound newest backup for the next tests


def test_a_file_that_decodes_only_up_to_a_point_is_refused_while_staged(loaded, folder):
    """The header and the first blocks are sound, so only the restore's COPY meets the damage:
    it is cancelled, and core and the ledger stay as they were."""
    made = create_backup(loaded, folder)
    path = made.path / "hired_employees.avro"
    path.write_bytes(path.read_bytes()[:-20])
    manifest_path = made.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["tables"]["hired_employees"]["sha256"] = file_sha256(path)
    manifest_path.write_text(json.dumps(manifest))
    with psycopg.connect(loaded, autocommit=True) as conn:
        conn.execute("delete from core.hired_employees where id <= 10")
    before = database_state(loaded)
    with pytest.raises(BackupError, match=r"does not decode \(.*\); nothing changed$"):
        restore_table(loaded, folder, "hired_employees", made.stamp)
    assert database_state(loaded) == before
    create_backup(loaded, folder)


@pytest.mark.parametrize(
    "broken",
    {
        "not json": "{",
        "not an object": "[]",
        "no tables": json.dumps({"format": 2, "snapshot_at": "2024-01-01T00:00:00+00:00"}),
        "a file out of the folder": "OUT",
        "format 2 without its ledger": "NO LEDGER",
    },
)
def test_an_unreadable_newest_manifest_is_reported_not_passed_over(loaded, folder, broken):
    older = create_backup(loaded, folder)
    newest = create_backup(loaded, folder)
    manifest_path = newest.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if broken == "a file out of the folder":
        manifest["tables"]["jobs"]["file"] = f"../{older.stamp}/jobs.avro"
        text = json.dumps(manifest)
    elif broken == "format 2 without its ledger":
        del manifest["ledger"]
        text = json.dumps(manifest)
    else:
        text = broken
    manifest_path.write_text(text)
    listed = list_backups(folder)
    assert [b.stamp for b in listed] == [older.stamp, newest.stamp]
    assert listed[0].problem is None and listed[1].problem.startswith("manifest.json")
    with pytest.raises(BackupError, match=f"the newest backup, {newest.stamp}, cannot be used"):
        find_backup(folder, None)
    with pytest.raises(BackupError, match=f"backup {newest.stamp} cannot be used"):
        find_backup(folder, newest.stamp)
    with pytest.raises(BackupError, match=f"backup {newest.stamp} cannot be used"):
        verify_backup(listed[1])
    assert prune(folder, 1) == [], "the one sound backup is the newest that counts"
    assert [b.stamp for b in list_backups(folder)] == [older.stamp, newest.stamp]
    verify_backup(find_backup(folder, older.stamp))


@pytest.mark.parametrize("file", ["hired_employees.avro", "audit.batches.avro"])
def test_a_sound_file_with_values_postgresql_refuses_is_one_backup_error(loaded, folder, file):
    """Well-formed Avro whose values do not fit the table (a NUL in a text, JSON that is not
    JSON): the COPY is refused, the restore rolls back."""
    made = create_backup(loaded, folder)
    path = made.path / file
    with path.open("rb") as handle:
        reader = fastavro.reader(handle)
        schema, records = reader.writer_schema, list(reader)
    if file == "audit.batches.avro":
        records[0]["reasons"] = "{not json"
    else:
        records[0]["name"] = "bad\x00name"
    with path.open("wb") as handle:
        fastavro.writer(handle, fastavro.parse_schema(schema), records, codec="deflate")
    manifest_path = made.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    group, name = ("ledger", "batches") if file.startswith("audit.") else ("tables", file[:-5])
    manifest[group][name]["sha256"] = file_sha256(path)
    manifest_path.write_text(json.dumps(manifest))
    with psycopg.connect(loaded, autocommit=True) as conn:
        conn.execute("delete from core.hired_employees where id <= 10")
    before = database_state(loaded)
    assert verify_backup(find_backup(folder, made.stamp)), "sound as Avro"
    with pytest.raises(
        BackupError, match=rf"backup {made.stamp}, {file}: PostgreSQL refuses its rows \(.+\); "
    ):
        restore_table(loaded, folder, "hired_employees", made.stamp)
    assert database_state(loaded) == before
    create_backup(loaded, folder)
