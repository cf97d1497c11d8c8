"""`python -m loader watch` as a real process: a new export in a bucket or folder becomes a run
and one stdout line, a malformed one is recorded and does not hold the others back, and
SIGTERM ends it with exit 0 and no run left `running`."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from loader.sample import write_sample
from tests.arrivals.conftest import environment, file_entries, lines_of, run_here, write_lines

pytestmark = pytest.mark.database

RUN_SECONDS = 60  # from an export's arrival to its run's line
STOP_SECONDS = 60  # from SIGTERM to exit: the current run finishes first
COMPLETED = re.compile(r"^run \S+ completed: ")


class Watching:
    """`python -m loader watch` in the background, its stdout lines gathered as they come (the
    process prints one per run) and its stderr kept in a file for failure messages."""

    def __init__(self, input_url: str, env: dict[str, str], logs: Path):
        self.stderr_path = logs / "watch.err"
        with self.stderr_path.open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "loader", "watch", "--input", input_url]
                + ["--every", "1", "--skip-marts"],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=env,
                cwd=logs,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)  # stdout closed: the process ended

    def next_run(self, seconds: float = RUN_SECONDS) -> str:
        """The next "run <id> completed: ..." line, waited for up to `seconds`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"watch exited {self.process.wait()}: {self.stderr()}")
            if COMPLETED.match(line):
                return line
        pytest.fail(f"no completed run within {seconds} s; stderr: {self.stderr()}")

    def stop(self) -> int:
        """SIGTERM, then its exit status once it has finished its current run."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=STOP_SECONDS)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def __enter__(self) -> Watching:
        return self

    def __exit__(self, *exception) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.reader.join(timeout=10)
        self.process.stdout.close()


@pytest.fixture()
def known(clean, one_file, tmp_path) -> str:
    """A database where departments and jobs are loaded, as they are before hires arrive."""
    folder = tmp_path / "first"
    folder.mkdir()
    for name in ("departments.csv", "jobs.csv"):
        shutil.copyfile(one_file / name, folder / name)
    run_here(clean, tmp_path / "first-state", folder)
    return clean


def clean_hires(folder: Path, rows: int) -> Path:
    """A hires export with no broken row, so that every row reaches core."""
    write_sample(folder, rows=rows, seed=11, broken_share=0)
    return folder / "hired_employees.csv"


def arrive(source: Path, folder: Path, name: str) -> Path:
    """`source` into the watched `folder` as `name` in one rename, as a careful sender does."""
    target = folder / name
    staged = folder.parent / f".{name}.staged"
    shutil.copyfile(source, staged)
    os.replace(staged, target)
    return target


def hire_ids(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [id_ for (id_,) in conn.execute("select id from core.hired_employees order by id")]


def running_runs(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("select run_id from audit.runs where status = 'running'").fetchall()


def test_watch_loads_an_export_arriving_in_the_bucket_and_stops_on_sigterm(
    known, object_store, bucket_prefix, tmp_path
):
    env = environment(known, tmp_path / "state", **object_store.env)
    export = clean_hires(tmp_path / "hires", rows=1000)
    url = f"s3://{bucket_prefix}/hired_employees_2024-06.csv"

    with Watching(f"s3://{bucket_prefix}/", env, tmp_path) as watch:
        object_store.filesystem().put_file(str(export), url.removeprefix("s3://"))
        line = watch.next_run()
        assert f"{url} (loaded)" in line
        assert hire_ids(known) == list(range(1, 1001))
        assert watch.stop() == 0, watch.stderr()

    assert running_runs(known) == []


def test_watch_records_a_malformed_export_and_still_loads_the_other(known, tmp_path):
    env = environment(known, tmp_path / "state")
    watched = tmp_path / "inbox"
    watched.mkdir()
    malformed = tmp_path / "malformed.csv"
    write_lines(malformed, [b"1,Ann,2021-01-01T00:00:00Z,1"])
    good = clean_hires(tmp_path / "hires", rows=100)

    with Watching(str(watched), env, tmp_path) as watch:
        # Named so that the malformed one is read first: the run stops on it, and only its
        # record in the ledger lets the next run load the other.
        bad = arrive(malformed, watched, "hired_employees_a.csv")
        fine = arrive(good, watched, "hired_employees_b.csv")
        line = watch.next_run()
        assert f"1 files read ({fine} (loaded))" in line
        assert watch.stop() == 0, watch.stderr()

    assert "malformed, not read again until it changes" in watch.stderr()
    entries = {Path(url).name: (state, reason) for url, _, state, reason, *_ in file_entries(known)}
    assert entries[bad.name][0] == "malformed"
    assert "line 1: expected 5 fields" in entries[bad.name][1]
    assert entries[fine.name] == ("loaded", None)
    assert hire_ids(known) == list(range(1, 101))
    assert running_runs(known) == []


def test_watch_starts_on_a_database_no_run_has_used(clean, one_file, tmp_path):
    watched = tmp_path / "inbox"
    watched.mkdir()
    write_lines(watched / "departments.csv", lines_of(one_file / "departments.csv"))

    with Watching(str(watched), environment(clean, tmp_path / "state"), tmp_path) as watch:
        watch.next_run()
        assert watch.stop() == 0, watch.stderr()
