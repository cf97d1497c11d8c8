"""`python -m backup` against a bucket of a real S3-compatible server: a backup made there is
listed, verified and restored from by a machine that never made it (a fresh state folder), a
stamp without its manifest is no backup, and a missing bucket is exit 4 in one line."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import psycopg
import pytest

from backup.cli import EXIT_DATABASE, EXIT_OK
from backup.store import MANIFEST
from loader.sample import write_sample
from tests.arrivals.conftest import assert_one_line, command, environment, run_here

pytestmark = pytest.mark.database

PARTIAL_STAMP = "20990101T000000Z"  # newer than any real backup: it would be taken as newest


def backup(*args: str, database_url: str, state: Path, **more: str):
    """`python -m backup` with a state folder (and so an empty download cache) of its own."""
    return command("backup", *args, env=environment(database_url, state, **more), cwd=state.parent)


@pytest.fixture()
def loaded(clean, tmp_path) -> str:
    folder = tmp_path / "in"
    write_sample(folder, rows=500, broken_share=0)
    run_here(clean, tmp_path / "load-state", folder)
    return clean


def stamps(result) -> list[str]:
    assert result.returncode == EXIT_OK, result.stderr
    return [entry["stamp"] for entry in json.loads(result.stdout)]


def test_a_backup_in_a_bucket_is_listed_verified_and_restored_elsewhere(
    loaded, object_store, tmp_path
):
    where = f"s3://backups/{secrets.token_hex(3)}/nightly"
    env = {**object_store.env, "BACKUP_DIR": where}

    made = backup("create", database_url=loaded, state=tmp_path / "maker", **env)
    assert made.returncode == EXIT_OK, made.stderr
    stamp = made.stdout.strip()

    listed = backup("list", "--json", database_url=loaded, state=tmp_path / "lister", **env)
    assert stamps(listed) == [stamp]
    assert json.loads(listed.stdout)[0]["tables"] == {
        "departments": 12,
        "jobs": 120,
        "hired_employees": 500,
    }

    verified = backup("verify", database_url=loaded, state=tmp_path / "verifier", **env)
    assert verified.returncode == EXIT_OK, verified.stderr
    assert f"backup {stamp} is sound" in verified.stderr

    with psycopg.connect(loaded, autocommit=True) as conn:
        (job,) = conn.execute("select job from core.jobs where id = 1").fetchone()
        conn.execute("update core.jobs set job = 'Renamed By Mistake' where id = 1")
    restored = backup(
        "restore", "--table", "jobs", database_url=loaded, state=tmp_path / "restorer", **env
    )
    assert restored.returncode == EXIT_OK, restored.stderr
    with psycopg.connect(loaded) as conn:
        assert conn.execute("select job from core.jobs where id = 1").fetchone() == (job,)


def test_files_under_a_stamp_without_its_manifest_are_no_backup(loaded, object_store, tmp_path):
    where = f"s3://backups/{secrets.token_hex(3)}/nightly"
    env = {**object_store.env, "BACKUP_DIR": where}
    made = backup("create", database_url=loaded, state=tmp_path / "maker", **env)
    assert made.returncode == EXIT_OK, made.stderr
    stamp = made.stdout.strip()
    client = object_store.filesystem()
    root = where.removeprefix("s3://")
    # An upload cut off before its last file: every data file of a real backup, no manifest.
    for path in client.ls(f"{root}/{stamp}", detail=False):
        if not path.endswith(MANIFEST):
            client.copy(path, f"{root}/{PARTIAL_STAMP}/{path.rsplit('/', 1)[-1]}")
    assert client.ls(f"{root}/{PARTIAL_STAMP}"), "the partial upload is in the bucket"

    through_dir = backup(
        "--dir",
        where,
        "list",
        "--json",
        database_url=loaded,
        state=tmp_path / "lister",
        **object_store.env,
    )
    verified = backup("verify", database_url=loaded, state=tmp_path / "verifier", **env)

    assert stamps(through_dir) == [stamp]
    assert verified.returncode == EXIT_OK, verified.stderr
    assert f"backup {stamp} is sound" in verified.stderr, "the newest backup is the real one"


@pytest.mark.parametrize("verb", ["create", "list"])
def test_a_missing_bucket_is_exit_4_and_one_line_naming_it(verb, loaded, object_store, tmp_path):
    where = "s3://no-such-backups-bucket/nightly"

    result = backup(
        verb, database_url=loaded, state=tmp_path / "state", BACKUP_DIR=where, **object_store.env
    )

    assert result.returncode == EXIT_DATABASE
    assert_one_line(result, where)
