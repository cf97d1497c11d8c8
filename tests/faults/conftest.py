"""Fixtures for the fault tests: a fresh database per test, sample input, and `python -m
loader run` started as real background processes whose output goes to files."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from loader.db.locks import table_lock
from loader.sample import write_sample
from tests.conftest import REPO, with_database

LARGE_ROWS = 250_000  # a run long enough (several seconds) to be hit while it works
SMALL_ROWS = 30_000
PROCESS_SECONDS = 300


def loader_environment(url: str, state: Path) -> dict[str, str]:
    """The caller's environment without any LOADER_ setting, pointed at `url` and `state`."""
    kept = {key: value for key, value in os.environ.items() if not key.startswith("LOADER_")}
    return {**kept, "DATABASE_URL": url, "LOADER_STATE_DIR": str(state)}


class LoaderRun:
    """`python -m loader run --input DIR --skip-marts --json` running in the background."""

    def __init__(self, name: str, input_dir: Path, env: dict[str, str], logs: Path, *options):
        self.name = name
        self.stdout_path, self.stderr_path = logs / f"{name}.out", logs / f"{name}.err"
        command = ["run", "--input", str(input_dir), "--skip-marts", "--json", *options]
        with self.stdout_path.open("w") as out, self.stderr_path.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "loader", *command],
                stdout=out,
                stderr=err,
                env=env,
                cwd=REPO,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def finish(self) -> int:
        """Wait for the process; its exit status."""
        return self.process.wait(timeout=PROCESS_SECONDS)

    def summary(self) -> dict:
        return json.loads(self.stdout_path.read_text())

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)


@pytest.fixture()
def start_run(tmp_path) -> Callable[..., LoaderRun]:
    """Start loader runs; any still running when the test ends is killed (by its handle)."""
    started: list[LoaderRun] = []
    logs = tmp_path / "processes"
    logs.mkdir()

    def start(name: str, input_dir: Path, env: dict[str, str], *options) -> LoaderRun:
        run = LoaderRun(name, input_dir, env, logs, *options)
        started.append(run)
        return run

    yield start
    for run in started:
        if run.process.poll() is None:
            run.kill()


def create_database(server: str) -> str:
    name = f"test_faults_{secrets.token_hex(4)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    return with_database(server, name)


def drop_database(url: str) -> None:
    server = with_database(url, "postgres")
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture()
def fresh_database(server_url) -> str:
    """A database of this test's own, with no schemas yet; dropped afterwards."""
    url = create_database(server_url)
    yield url
    drop_database(url)


@pytest.fixture(scope="session")
def large_sample(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("large-sample")
    write_sample(folder, rows=LARGE_ROWS)
    return folder


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("small-sample")
    write_sample(folder, rows=SMALL_ROWS)
    return folder


def wait_for(condition: Callable[[], object], seconds: float, what: str):
    """Poll `condition` until it returns something truthy; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    pytest.fail(f"timed out after {seconds}s waiting for {what}")


def query(url: str, statement: str, parameters: tuple = ()) -> list[tuple]:
    """Rows of `statement`; none while the run is still setting up the audit schema (its tables
    or the columns a migration adds do not exist yet)."""
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            return conn.execute(statement, parameters).fetchall()
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
        return []


def run_id_of(url: str, run: LoaderRun) -> str | None:
    """The audit.runs id of the process `run`, once its row exists."""
    found = query(url, "select run_id from audit.runs where pid = %s", (run.pid,))
    return found[0][0] if found else None


def ledger_rows_of(url: str, run_id: str) -> int:
    """How many batches the ledger says `run_id` settled (of every table)."""
    found = query(url, "select count(*) from audit.batches where run_id = %s", (run_id,))
    return found[0][0] if found else 0


def batches_settled_by(url: str, run_id: str, table: str = "hired_employees") -> int:
    found = query(
        url,
        "select count(*) from audit.batches where run_id = %s and table_name = %s",
        (run_id, table),
    )
    return found[0][0] if found else 0


@contextmanager
def paused_settlement(url: str, table: str):
    """Hold `table`'s lock exclusively (as a restore does): a run that reaches settling that
    table stops there, holding the run lock, until the block ends."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        table_lock(conn, table, exclusive=True)
        yield


def copying_into_raw(url: str) -> bool:
    """True while some session (dlt's load) runs a COPY into this database's raw schema."""
    found = query(
        url,
        "select count(*) from pg_stat_activity where datname = current_database() "
        "and state = 'active' and query ilike 'copy%%raw%%' and pid <> pg_backend_pid()",
    )
    return bool(found and found[0][0])


MOMENTS = ("while judging", "while landing raw", "while settling")


def wait_until(moment: str, url: str, run: LoaderRun) -> str:
    """Wait until `run` works at `moment` (one of MOMENTS); return its run id.

    "while judging": the run has its row and its gate, and nothing is in raw yet; "while
    landing raw": dlt is copying the judged rows into raw; "while settling": a quarter of the
    large sample's hired_employees batches are settled, the rest not yet.
    """
    run_id = wait_for(lambda: run_id_of(url, run), 120, "the run's audit.runs row")

    def reached() -> bool:
        assert run.process.poll() is None, f"the run ended before {moment}: {run.stderr}"
        if moment == "while judging":
            return True
        if moment == "while landing raw":
            return copying_into_raw(url)
        return batches_settled_by(url, run_id) >= 60

    wait_for(reached, 120, moment)
    return run_id


def run_row(url: str, run_id: str) -> dict:
    with psycopg.connect(url) as conn:
        cursor = conn.execute("select * from audit.runs where run_id = %s", (run_id,))
        names = [column.name for column in cursor.description]
        return dict(zip(names, cursor.fetchone()))


def assert_abandoned(url: str, run_id: str) -> None:
    """The run's row says `abandoned`, with when that was noticed, and was never closed."""
    row = run_row(url, run_id)
    assert row["status"] == "abandoned", row["status"]
    assert row["abandoned_noticed_at"] is not None and row["finished_at"] is None


def assert_clean_stderr(run: LoaderRun, lines: int) -> None:
    """No traceback, nothing that reads "unexpected", and exactly `lines` lines on stderr, but
    for at most one hint line under them saying where the libraries' details are."""
    text = run.stderr
    assert "Traceback" not in text and "unexpected" not in text.lower(), text
    said = text.strip().splitlines()
    if said and said[-1].startswith("details: "):
        said = said[:-1]
    assert len(said) == lines, text


def processes_left(*words: str, patience: float = 5.0) -> list[str]:
    """Command lines of processes whose arguments include all of `words` still there after
    `patience` seconds (a forked gate process carries its parent's command line)."""
    deadline = time.monotonic() + patience
    while True:
        left = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                arguments = cmdline.read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if all(word in arguments for word in words):
                left.append(" ".join(arguments))
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)
