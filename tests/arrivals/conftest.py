"""Fixtures for exports that arrive in folders and buckets: moto's S3-compatible server as a real
process on a free port, the AWS settings that point clients at it, and helpers to drive
`python -m loader` and `python -m backup` and to read what a run left in core."""

from __future__ import annotations

import gzip
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from loader.flow.file_run import run_files
from loader.sample import write_sample
from loader.tables import TABLES
from tests.conftest import free_port, settings_for

SERVER_START_SECONDS = 60
COMMAND_SECONDS = 600
HIRES_ROWS = 3000
# Id 5 again, at the very end: of two rows with one id the later wins, so this one must be in
# core whether the hires arrive as one file or as several read in name order.
LATER_ROW = b"5,Written Later,2021-03-01T10:00:00Z,1,1"
# Names no table claims, each holding rows that would change core if they were read.
IGNORED = {
    "notes.txt": b"6,Never Read,2021-03-01T10:00:00Z,1,1\r\n",
    "employees.csv": b"6,Never Read,2021-03-01T10:00:00Z,1,1\r\n",
    "hired_employees.csv.part": b"6,Never Read,2021-03-01T10:00:00Z,1,1\r\n",
}


@dataclass(frozen=True)
class ObjectStore:
    """A running S3-compatible server: where it listens and the settings a client needs."""

    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        """What a subprocess (or boto, in this one) needs to reach the server and nothing else."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def filesystem(self):
        """The tests' own s3fs client, configured by endpoint, not by the environment: uploads
        and checks do not depend on what a test has set for the product's code."""
        import s3fs

        return s3fs.S3FileSystem(
            key="testing",
            secret="testing",
            endpoint_url=self.endpoint,
            skip_instance_cache=True,
        )


@pytest.fixture(scope="session")
def object_store(tmp_path_factory) -> ObjectStore:
    """moto's standalone server (`python -m moto.server`) on a free loopback port, with the
    buckets `exports` and `backups`; stopped when the session ends."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(server, endpoint, log)
        store = ObjectStore(endpoint)
        client = store.filesystem()
        for bucket in ("exports", "backups"):
            client.mkdir(bucket)
        yield store
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _wait_until_answering(server: subprocess.Popen, endpoint: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"moto server exited {server.returncode}: {log.read_text()}")
        try:
            httpx.get(endpoint, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)  # the port is not bound yet: nothing to wait on but time
    pytest.fail(f"moto server did not answer within {SERVER_START_SECONDS} s: {log.read_text()}")


@pytest.fixture()
def aws(object_store, monkeypatch) -> ObjectStore:
    """The object store, with this process's environment pointed at it for the product's
    in-process code (run_files, list_exports); s3fs's cached clients are dropped both ways so
    that none made under other settings is reused."""
    import s3fs

    for name, value in object_store.env.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield object_store
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture()
def bucket_prefix(request) -> str:
    """A prefix of this test's own in the shared `exports` bucket (the server lives for the
    session, the ledger keys files by URL)."""
    return f"exports/{request.node.name[:40]}-{secrets.token_hex(3)}/hr"


def upload(store: ObjectStore, folder: Path, prefix: str) -> list[str]:
    """Every file of `folder` to `prefix` in the bucket; their s3:// URLs in name order."""
    client = store.filesystem()
    urls = []
    for path in sorted(folder.iterdir()):
        client.put_file(str(path), f"{prefix}/{path.name}")
        urls.append(f"s3://{prefix}/{path.name}")
    return urls


def environment(database_url: str, state: Path, **more: str) -> dict[str, str]:
    """The caller's environment without any LOADER_ or BACKUP_ setting (a developer's own must
    not steer the test), pointed at this test's database and state folder."""
    kept = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LOADER_", "BACKUP_", "AWS_"))
    }
    return {**kept, "DATABASE_URL": database_url, "LOADER_STATE_DIR": str(state), **more}


def command(module: str, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m <module> args...` to its end, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=cwd,
        timeout=COMMAND_SECONDS,
    )


def loader(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return command("loader", *args, env=env, cwd=cwd)


def summary_of(result: subprocess.CompletedProcess) -> dict:
    """The `--json` summary of a run that exited 0."""
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_one_line(result: subprocess.CompletedProcess, *words: str) -> str:
    """The run's stderr is one line, no traceback, holding every one of `words`."""
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def drop_loader_schemas(url: str) -> None:
    """The database as before any run (what the `clean` fixture gives), for a second start."""
    with psycopg.connect(url, autocommit=True) as conn:
        for schema in ("core", "audit", "raw"):
            conn.execute(f"drop schema if exists {schema} cascade")


def core_rows(url: str) -> dict[str, list[tuple]]:
    """Each core table's rows by id, its fields only: what a user sees, whichever batches and
    files the rows came through."""
    with psycopg.connect(url) as conn:
        return {
            table.name: conn.execute(
                f'select {", ".join(table.column_names)} from core."{table.name}" order by id'
            ).fetchall()
            for table in TABLES
        }


def ledger_counts(url: str) -> dict[str, int]:
    """Rows in raw and in the batch and file ledgers: what a run that read nothing must not
    change."""
    with psycopg.connect(url) as conn:
        counts = {
            name: conn.execute(f"select count(*) from {name}").fetchone()[0]
            for name in ("audit.batches", "audit.rejected_rows", "audit.files")
        }
        for table in TABLES:
            found = conn.execute("select to_regclass(%s)", (f"raw.{table.name}",)).fetchone()[0]
            if found is not None:
                counts[f"raw.{table.name}"] = conn.execute(
                    f'select count(*) from raw."{table.name}"'
                ).fetchone()[0]
    return counts


def file_entries(url: str) -> list[tuple]:
    """(url, table, state, reason, batches, rows) of every audit.files entry, oldest first."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "select url, table_name, state, reason, batches, rows_read from audit.files "
            "order by file_id"
        ).fetchall()


def lines_of(path: Path) -> list[bytes]:
    """The export's lines, without their CRLF endings (the sample ends its last line too)."""
    return path.read_bytes().split(b"\r\n")[:-1]


def write_lines(path: Path, lines: list[bytes]) -> Path:
    """`lines` as an export, gzip-compressed when the name ends `.gz`."""
    data = b"".join(line + b"\r\n" for line in lines)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


@pytest.fixture(scope="module")
def one_file(tmp_path_factory) -> Path:
    """The sample as one file per table, shared by a module's tests (they only read it)."""
    return one_file_exports(tmp_path_factory.mktemp("one-file"))


@pytest.fixture()
def split(one_file, tmp_path) -> Path:
    """The same rows as split exports, in a folder of this test's own, free to change."""
    return split_exports(one_file, tmp_path / "split")


def run_here(url: str, state: Path, input_dir: Path | str, **overrides):
    """A run in this process (no marts): for a starting point, or to look closer than the CLI."""
    return run_files(settings_for(url, state, input_dir, build_marts=False, **overrides))


def one_file_exports(folder: Path) -> Path:
    """The sample (with its broken hires) as one file per table, `LATER_ROW` last."""
    write_sample(folder, rows=HIRES_ROWS, seed=5)
    hires = folder / "hired_employees.csv"
    write_lines(hires, [*lines_of(hires), LATER_ROW])
    return folder


def split_exports(one: Path, folder: Path) -> Path:
    """The rows of `one` as a user's exports: departments zipped, jobs plain, the hires over
    three files (the first gzipped) whose name order is their row order, and files of no
    table beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    hires = lines_of(one / "hired_employees.csv")
    # Written last file first: the order a folder lists them in must not be what orders them.
    write_lines(folder / "hired_employees_3.csv", hires[2000:])
    write_lines(folder / "hired_employees_2.csv", hires[1000:2000])
    write_lines(folder / "hired_employees_1.csv.gz", hires[:1000])
    with zipfile.ZipFile(folder / "departments.csv.zip", "w") as archive:
        archive.write(one / "departments.csv", "departments.csv")
    shutil.copyfile(one / "jobs.csv", folder / "jobs.csv")
    for name, data in IGNORED.items():
        (folder / name).write_bytes(data)
    return folder


SPLIT_FILES = [  # (name, rows) in the order a run reads them
    ("departments.csv.zip", 12),
    ("jobs.csv", 120),
    ("hired_employees_1.csv.gz", 1000),
    ("hired_employees_2.csv", 1000),
    ("hired_employees_3.csv", 1001),
]
