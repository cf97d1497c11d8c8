"""`python -m loader run`: the input folder through the pipeline under the run lock, then the data
docs and the marts; in this process (`LoadHere`) or on Dask (`cluster.driver.LoadOnCluster`).

A file that is not the table it claims to be (wrong field count, unclosed quote) stops the run
with nothing written: a file run lands nothing until `source.prescan.StructureCheck`, reading
every file in a process of its own, has found the input whole.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from loader.db.connect import (
    DatabaseUnavailable,
    connect,
    database_gone,
    database_url,
    lost_database,
    redact,
)
from loader.db.locks import run_lock, try_run_lock
from loader.db.schema import ensure_schemas
from loader.flow.errors import InputError, RunBusy
from loader.flow.judge.gate_process import ForkedGate
from loader.flow.land import RawLoader
from loader.flow.ledger import batch_states, holder_of_run_lock, mark_abandoned
from loader.flow.pipeline import Progress, Run
from loader.flow.runtime import heap
from loader.flow.runtime.state_folder import check_writable, write_error_in
from loader.flow.source.csv_reader import read_batches
from loader.flow.source.prescan import StructureCheck
from loader.flow.summary import MartsStatus, RunSummary, Stage
from loader.marts.build import build_marts
from loader.settings import EXPECTATIONS_DIR, Settings
from loader.tables import TABLES, Table

# How long a waiting run gives the run it waits for to write its audit.runs row, to name it.
HOLDER_ROW_SECONDS = 30.0


def input_files(input_dir: Path) -> dict[str, Path]:
    """The three files, or an InputError naming the first one missing."""
    if not input_dir.is_dir():
        raise InputError(f"{input_dir}: input folder not found")
    files = {table.name: input_dir / table.file_name for table in TABLES}
    for path in files.values():
        if not path.is_file():
            raise InputError(
                f"{path}: file not found (expected {', '.join(t.file_name for t in TABLES)})"
            )
    return files


class LoadHere:
    """How a file run reads, judges and lands its input in this process: the strict reader
    beside a structure pre-scan, chunk by chunk, judged by a forked gate, settled while the next
    chunks are judged. Leaving it closes the gate."""

    def __init__(
        self, settings: Settings, conn: psycopg.Connection, url: str, progress: Progress | None
    ):
        self.settings = settings
        self.structure: StructureCheck | None = None
        self.gate = ForkedGate(EXPECTATIONS_DIR, settings.gx_state_dir)
        try:
            self.run = Run(
                settings,
                conn,
                self.gate,
                RawLoader(url, settings.dlt_dir),
                str(settings.input_dir),
                settings.policy,
                settings.batch_size,
                progress,
                keep_settlements=False,  # a file may hold millions of batches: logged, not kept
            )
        except BaseException:
            self.gate.close()
            raise

    def load(self, files: dict[str, Path]) -> None:
        batch_size = self.settings.batch_size
        self.structure = StructureCheck({t: files[t.name] for t in TABLES}, batch_size)
        sources = {
            table: (str(files[table.name]), _file_batches(files[table.name], table, batch_size))
            for table in TABLES
        }
        self.run.load_and_settle(sources, batch_states(self.run.conn), self.structure)

    def cancel(self) -> None:
        if self.structure is not None:
            self.structure.cancel()

    def __enter__(self) -> LoadHere:
        return self

    def __exit__(self, *exception) -> None:
        self.gate.close()


def run_files(
    settings: Settings,
    progress: Progress | None = None,
    wait: bool = True,
    notify: Callable[[str], None] = lambda message: None,
) -> RunSummary:
    """The input folder through the pipeline, then data docs and marts; on a Dask cluster when
    `settings` name workers or a scheduler.

    Args:
        wait: when another file run holds the database, wait for it (`notify` is told once
            whom we wait for) rather than raise RunBusy.
    """
    files = input_files(settings.input_dir)
    check_writable(settings.state_path)
    heap.configure()
    url = database_url(settings)
    try:
        with connect(url, autocommit=True) as conn:
            _take_run_lock(conn, url, wait, notify)
            summary = _load(settings, conn, url, files, progress)
        summary.write(Path(summary.log_dir) / "summary.json")
    except (InputError, DatabaseUnavailable, RunBusy, KeyboardInterrupt):
        raise
    except Exception as error:
        unwritable = write_error_in(error, settings.state_path)
        if unwritable is not None:
            raise unwritable from None
        if database_gone(url):
            raise lost_database(
                error,
                url,
                "settled batches are kept, and the rest are settled when the same input is "
                "sent again",
            ) from None
        raise
    return summary


def _load(
    settings: Settings,
    conn: psycopg.Connection,
    url: str,
    files: dict[str, Path],
    progress: Progress | None,
) -> RunSummary:
    """Load, settle, build the docs and the marts; the run's row closed either way."""
    loading = LoadHere
    if settings.workers is not None or settings.scheduler is not None:
        from loader.flow.cluster.driver import LoadOnCluster  # Dask only where it is asked for

        loading = LoadOnCluster
    with loading(settings, conn, url, progress) as load:
        run = load.run
        try:
            load.load(files)
            _build_docs(run)
            if settings.build_marts:
                _build_marts(run, url)
        except BaseException as error:
            load.cancel()
            run.finish(error)
            raise
        return run.finish()


def _take_run_lock(
    conn: psycopg.Connection, url: str, wait: bool, notify: Callable[[str], None]
) -> None:
    """Set up the schemas, mark dead runs abandoned, and take the one-file-run lock."""
    ensure_schemas(conn)
    mark_abandoned(conn)
    holder = _run_lock_holder(conn, HOLDER_ROW_SECONDS if wait else 0)
    if holder is None:
        return
    if not wait:
        raise RunBusy(f"{holder} holds {redact(url)}; not waiting (--no-wait)")
    notify(f"waiting for {holder} to finish on {redact(url)}")
    run_lock(conn)
    mark_abandoned(conn)  # the run we waited for may have been killed: its row says `running`


def _run_lock_holder(conn: psycopg.Connection, patience: float) -> str | None:
    """None once this session holds the run lock; else words naming the holder. A holder writes
    its audit.runs row a moment after taking the lock: wait up to `patience` seconds for it."""
    deadline = time.monotonic() + patience
    while not try_run_lock(conn):
        holder = holder_of_run_lock(conn)
        if holder is not None or time.monotonic() >= deadline:
            return holder or "another run (still starting)"
        time.sleep(0.1)
    return None


def _file_batches(path: Path, table: Table, batch_size: int):
    return lambda counts: read_batches(path, table, batch_size, counts)


def _build_docs(run: Run) -> None:
    """The run's data docs (their time: what the run waited for them once settled)."""
    started = time.perf_counter()
    docs = run.docs.result() if run.docs is not None else run.gate.build_docs()
    run.summary.data_docs = str(docs)
    run.seconds[Stage.DATA_DOCS] = time.perf_counter() - started


def _build_marts(run: Run, url: str) -> None:
    started = time.perf_counter()
    build = build_marts(url, run.settings.state_path)
    run.seconds[Stage.DBT_BUILD] = time.perf_counter() - started
    run.summary.marts_status = MartsStatus.REBUILT if build.success else MartsStatus.FAILED
    run.summary.marts, run.summary.marts_failures = build.rows, build.failures
