"""`python -m backup` as an operator drives it: exit codes, one-line errors, a real round trip."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psycopg
import pytest

from loader.flow.run import run_files
from loader.sample import write_sample
from tests.conftest import REPO, settings_for

pytestmark = pytest.mark.database


def backup(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "backup", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env},
        cwd=REPO,
        timeout=300,
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
    assert made.returncode == 0, made.stderr
    stamp = made.stdout.strip()
    listed = json.loads(backup("list", "--json", env=env).stdout)
    assert listed[-1]["stamp"] == stamp
    assert listed[-1]["tables"] == {"departments": 12, "jobs": 120, "hired_employees": 1500}
    assert backup("verify", stamp, env=env).returncode == 0
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("delete from core.hired_employees where id > 1000")
    restored = backup("restore", "--table", "hired_employees", env=env)
    assert restored.returncode == 0, restored.stderr
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
        assert result.returncode == 3
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
        assert "sha256 does not match the manifest" in result.stderr


def test_unknown_backup_and_bad_cron_are_refused(env):
    assert backup("restore", "--table", "jobs", "--from", "nope", env=env).returncode == 3
    bad = backup("schedule", "--cron", "every night", env=env)
    assert bad.returncode == 2 and "error:" in bad.stderr


def test_a_restore_says_what_it_did_to_the_ledger(env):
    made = backup("create", env=env)
    stamp = made.stdout.strip()
    assert "their ledger: 4 batches, 0 rejected rows" in made.stderr
    listed = json.loads(backup("list", "--json", env=env).stdout)[-1]
    assert listed["ledger"]["audit.batches"] == 4
    verified = backup("verify", stamp, env=env)
    assert verified.returncode == 0 and "audit.batches 4 rows" in verified.stderr
    restored = backup("restore", "--table", "hired_employees", "--from", stamp, env=env)
    assert restored.returncode == 0, restored.stderr
    assert "its ledger is back as at the backup (2 batches, 0 rejected rows)" in restored.stderr

    folder = os.path.join(env["BACKUP_DIR"], stamp)
    manifest_path = os.path.join(folder, "manifest.json")
    with open(manifest_path) as handle:
        manifest = json.load(handle)
    for entry in manifest.pop("ledger").values():
        os.remove(os.path.join(folder, entry["file"]))
    with open(manifest_path, "w") as handle:
        json.dump(manifest, handle)
    older = backup("restore", "--table", "hired_employees", "--from", stamp, env=env)
    assert older.returncode == 0, older.stderr
    assert f"backup {stamp} has no ledger (made by an earlier release): 0 batches" in older.stderr
