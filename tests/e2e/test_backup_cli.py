"""`python -m backup` as an operator drives it: exit codes, one-line errors, a real round trip."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from backup.cli import EXIT_FOLDER, EXIT_OK, EXIT_REFUSED, EXIT_USAGE
from loader.flow.file_run import run_files
from loader.sample import write_sample
from tests.conftest import REPO, settings_for, with_database

pytestmark = pytest.mark.database


def backup(*args, env, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "backup", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env},
        cwd=REPO,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def env(database_url, tmp_path_factory):
    folder = tmp_path_factory.mktemp("in")
    write_sample(folder, rows=1500, broken_share=0)
    state = tmp_path_factory.mktemp("state")
    run_files(settings_for(database_url, state, folder, build_marts=False))
    return {"DATABASE_URL": database_url, "BACKUP_DIR": str(tmp_path_factory.mktemp("bk"))}


def test_create_list_verify_and_restore_from_the_command_line(env):
    made = backup("create", env=env)
    assert made.returncode == EXIT_OK, made.stderr
    stamp = made.stdout.strip()
    listed = json.loads(backup("list", "--json", env=env).stdout)
    assert listed[-1]["stamp"] == stamp
    assert listed[-1]["tables"] == {"departments": 12, "jobs": 120, "hired_employees": 1500}
    assert backup("verify", stamp, env=env).returncode == EXIT_OK
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("delete from core.hired_employees where id > 1000")
    restored = backup("restore", "--table", "hired_employees", env=env)
    assert restored.returncode == EXIT_OK, restored.stderr
    assert "restored hired_employees: 1500 rows written, 0 deleted" in restored.stderr
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        assert conn.execute("select count(*) from core.hired_employees").fetchone()[0] == 1500


def test_a_damaged_backup_is_one_line_and_exit_3(env):
    stamp = backup("create", "--table", "jobs", env=env).stdout.strip()
    path = os.path.join(env["BACKUP_DIR"], stamp, "jobs.avro")
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) - 40)
    for args in (["verify", stamp], ["restore", "--table", "jobs", "--from", stamp]):
        result = backup(*args, env=env)
        assert result.returncode == EXIT_REFUSED
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
        assert "sha256 does not match the manifest" in result.stderr


def test_unknown_backup_and_bad_cron_are_refused(env):
    unknown = backup("restore", "--table", "jobs", "--from", "nope", env=env)
    assert unknown.returncode == EXIT_REFUSED
    bad = backup("schedule", "--cron", "every night", env=env)
    assert bad.returncode == EXIT_USAGE and "error:" in bad.stderr


def test_a_backup_folder_that_cannot_be_written_is_one_line_and_exit_5(env, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = backup("create", env={**env, "BACKUP_DIR": str(blocker / "backups")})
    assert result.returncode == EXIT_FOLDER, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "unexpected" not in result.stderr
    assert str(blocker) in result.stderr


def test_a_restore_says_what_it_did_to_the_ledger(env):
    made = backup("create", env=env)
    stamp = made.stdout.strip()
    assert "their ledger: 4 batches, 0 rejected rows" in made.stderr
    listed = json.loads(backup("list", "--json", env=env).stdout)[-1]
    assert listed["ledger"]["audit.batches"] == 4
    verified = backup("verify", stamp, env=env)
    assert verified.returncode == EXIT_OK and "audit.batches 4 rows" in verified.stderr
    restored = backup("restore", "--table", "hired_employees", "--from", stamp, env=env)
    assert restored.returncode == EXIT_OK, restored.stderr
    assert "its ledger is back as at the backup (2 batches, 0 rejected rows)" in restored.stderr

    folder = os.path.join(env["BACKUP_DIR"], stamp)
    manifest_path = os.path.join(folder, "manifest.json")
    with open(manifest_path) as handle:
        manifest = json.load(handle)
    for entry in manifest.pop("ledger").values():
        os.remove(os.path.join(folder, entry["file"]))
    manifest["format"] = 1  # as the earlier release wrote it
    with open(manifest_path, "w") as handle:
        json.dump(manifest, handle)
    older = backup("restore", "--table", "hired_employees", "--from", stamp, env=env)
    assert older.returncode == EXIT_OK, older.stderr
    assert f"backup {stamp} has no ledger (made by an earlier release): 0 batches" in older.stderr


# Backups that refuse what they should: each refusal is its exit status, one stderr line, no
# traceback, and nothing changed (core, the ledger, the backup folder).


def refused(result, code=EXIT_REFUSED) -> str:
    """The one stderr line of a refusal, once the promises every refusal keeps are checked."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and "unexpected" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def database_state(url) -> dict:
    """Count and md5 of every core table and every ledger table."""
    tables = [f"core.{t}" for t in ("departments", "jobs", "hired_employees")] + [
        f"audit.{t}" for t in ("runs", "batches", "rejected_rows")
    ]
    with psycopg.connect(url) as conn:
        return {
            table: conn.execute(
                f"select count(*), md5(coalesce(string_agg(t::text, '|' order by t::text), '')) "
                f"from {table} t"
            ).fetchone()
            for table in tables
        }


def folder_state(folder: Path) -> dict:
    """Every file under the backup folder with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture()
def made(env, tmp_path):
    """A backup folder of this test's own holding one sound backup: (env, folder, stamp)."""
    folder = tmp_path / "backups"
    own = {**env, "BACKUP_DIR": str(folder)}
    created = backup("create", env=own)
    assert created.returncode == EXIT_OK, created.stderr
    return own, folder, created.stdout.strip()


@pytest.fixture()
def rows_taken_away(made):
    """Ten hires deleted after the backup was made, so a restore that went ahead would show;
    put back after the test."""
    url = made[0]["DATABASE_URL"]
    with psycopg.connect(url, autocommit=True) as conn:
        gone = conn.execute("delete from core.hired_employees where id > 1490 returning *")
        rows = gone.fetchall()
    yield
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("delete from core.hired_employees where id > 1490")
        marks = ", ".join(["%s"] * len(rows[0]))
        conn.cursor().executemany(f"insert into core.hired_employees values ({marks})", rows)


def rewrite_manifest(folder: Path, change) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest, indent=2))


@pytest.mark.parametrize("keep", ["0", "-1", "-7", "seven"])
def test_schedule_refuses_to_keep_fewer_than_one_backup(made, keep):
    env, folder, _ = made
    before = folder_state(folder)
    line = refused(backup("schedule", "--keep", keep, env=env, timeout=60), code=EXIT_USAGE)
    assert "--keep" in line
    assert folder_state(folder) == before


@pytest.mark.parametrize("format", [3, "2", None], ids=["3", "text 2", "missing"])
def test_restore_refuses_a_manifest_format_it_does_not_know(
    made, rows_taken_away, server_url, format
):
    env, folder, stamp = made

    def set_format(manifest):
        if format is None:
            del manifest["format"]
        else:
            manifest["format"] = format

    rewrite_manifest(folder / stamp, set_format)
    before = database_state(env["DATABASE_URL"])
    for args in (
        ["restore", "--table", "hired_employees", "--from", stamp],
        ["restore", "--table", "hired_employees"],
        ["verify", stamp],
    ):
        line = refused(backup(*args, env=env))
        assert stamp in line and "format" in line
    assert database_state(env["DATABASE_URL"]) == before

    empty = f"test_backup_cli_empty_{secrets.token_hex(3)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'create database "{empty}"')
    try:
        url = with_database(server_url, empty)
        refused(backup("restore", "--table", "jobs", env={**env, "DATABASE_URL": url}))
        with psycopg.connect(url) as conn:
            schemas = conn.execute(
                "select count(*) from pg_namespace where nspname in ('core', 'audit')"
            ).fetchone()[0]
        assert schemas == 0, "refused before the restore set up any schema"
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'drop database "{empty}" with (force)')


@pytest.mark.parametrize(
    "name",
    ["../..", "..", ".", "/etc", "ABSOLUTE", "UP/AND/BACK", "STAMP/", ".PARTIAL", ""],
)
def test_a_backup_is_named_by_its_stamp_never_by_a_path(made, rows_taken_away, name):
    env, folder, stamp = made
    shutil.copytree(folder / stamp, folder / f".{stamp}.partial")
    name = {
        "ABSOLUTE": str(folder / stamp),  # a real backup, reached by a path
        "UP/AND/BACK": f"../{folder.name}/{stamp}",
        "STAMP/": f"{stamp}/",
        ".PARTIAL": f".{stamp}.partial",
    }.get(name, name)
    before = database_state(env["DATABASE_URL"]), folder_state(folder)
    for args in (["verify", name], ["restore", "--table", "hired_employees", "--from", name]):
        line = refused(backup(*args, env=env))
        assert "is not a backup's name" in line
    assert (database_state(env["DATABASE_URL"]), folder_state(folder)) == before


def test_a_missing_stamp_is_named_as_typed(made):
    env, folder, _ = made
    line = refused(backup("verify", "[red]20990101T000000.000Z", env=env))
    assert line == f"error: no backup [red]20990101T000000.000Z in {folder}"


def truncated(data: bytes) -> bytes:
    return data[:-20]  # the header stays whole: the damage is found by decoding the records


def scribbled(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]


DAMAGES = {
    "truncated": truncated,
    "flipped": scribbled,
    "emptied": lambda data: b"",
    "not avro": lambda data: b"id,department\r\n1,Product Management\r\n",
}


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("file", ["hired_employees.avro", "audit.batches.avro"])
def test_a_damaged_file_whose_checksum_was_rewritten_is_refused_in_one_line(
    made, rows_taken_away, damage, file
):
    env, folder, stamp = made
    path = folder / stamp / file
    path.write_bytes(DAMAGES[damage](path.read_bytes()))

    def fix_up(manifest):
        entries = {**manifest["tables"], **{f"audit.{n}": e for n, e in manifest["ledger"].items()}}
        entry = entries[file.removesuffix(".avro")]
        entry["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        entry["bytes"] = path.stat().st_size

    rewrite_manifest(folder / stamp, fix_up)
    before = database_state(env["DATABASE_URL"])
    for args in (["verify", stamp], ["restore", "--table", "hired_employees", "--from", stamp]):
        line = refused(backup(*args, env=env))
        assert f"backup {stamp}, {file}: " in line
    assert database_state(env["DATABASE_URL"]) == before


BROKEN_MANIFESTS = {
    "not json": lambda path: path.write_text('{"format": 2, "tables": '),
    "no tables": lambda path: path.write_text(
        json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "tables"})
    ),
    "missing": lambda path: path.unlink(),
}


@pytest.mark.parametrize("broken", BROKEN_MANIFESTS)
def test_an_unreadable_newest_backup_is_reported_not_passed_over(made, rows_taken_away, broken):
    env, folder, older = made
    newest = backup("create", env=env).stdout.strip()
    BROKEN_MANIFESTS[broken](folder / newest / "manifest.json")
    before = database_state(env["DATABASE_URL"]), folder_state(folder)
    for args in (["restore", "--table", "hired_employees"], ["verify"]):
        line = refused(backup(*args, env=env))
        assert f"the newest backup, {newest}, cannot be used: manifest.json" in line

    listed = backup("list", "--json", env=env)
    assert listed.returncode == EXIT_OK and listed.stderr == ""
    stamps = {entry["stamp"]: entry for entry in json.loads(listed.stdout)}
    assert list(stamps) == [older, newest]
    assert stamps[older]["unreadable"] is None and stamps[older]["tables"]
    assert stamps[newest]["unreadable"].startswith("manifest.json")
    table = backup("list", env={**env, "COLUMNS": "250"})
    assert table.returncode == EXIT_OK
    (row,) = [line for line in table.stdout.splitlines() if newest in line]
    assert "UNREADABLE: manifest.json" in row
    named = backup("verify", older, env=env)
    assert named.returncode == EXIT_OK, "the older one, named, still serves"
    assert (database_state(env["DATABASE_URL"]), folder_state(folder)) == before


def test_a_command_line_mistake_is_usage_in_one_line(env):
    for args in (
        ["schedule", "--cron", "every night"],
        ["restore", "--table", "nope"],
        ["restore"],
        ["verify", "--json"],
        [],
    ):
        refused(backup(*args, env=env), code=EXIT_USAGE)


def test_an_invalid_setting_is_usage_in_one_line(env):
    line = refused(backup("list", env={**env, "LOADER_BATCH_SIZE": "lots"}), code=EXIT_USAGE)
    assert line.startswith("error: invalid setting: LOADER_BATCH_SIZE")


def test_a_value_error_from_the_work_is_unexpected_not_usage(env, monkeypatch, capsys):
    """Exit 2 is for command-line mistakes only: a ValueError raised while working is a bug."""
    from backup.cli import EXIT_ERROR, main

    def broken(folder):
        raise ValueError("something inside went wrong\nover two lines")

    monkeypatch.setattr("backup.location.list_backups", broken)
    assert main(["--dir", env["BACKUP_DIR"], "list"]) == EXIT_ERROR
    (line,) = capsys.readouterr().err.splitlines()
    assert line == "error: unexpected ValueError: something inside went wrong over two lines"
