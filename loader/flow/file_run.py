"""`python -m loader run`: the exports of a folder or bucket through the pipeline under the run
lock, then the data docs and the marts; in this process (`LoadHere`) or on Dask
(`cluster.driver.LoadOnCluster`).

Files the file ledger says are loaded and unchanged are not read (`source.file_ledger`); a run
with nothing new opens and closes its row without starting a gate or a dlt pipeline. A file
that is not the table it claims to be (wrong field count, unclosed quote) stops the run with
nothing written: a file run lands nothing until `source.prescan.StructureCheck`, checking every
file's structure beside the run's reading, has found the input whole (or the run has read it
whole itself).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING

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
from loader.flow.errors import InputError, RunBusy, StorageUnavailable
from loader.flow.ledger import (
    batch_states,
    close_run,
    holder_of_run_lock,
    mark_abandoned,
    new_run_id,
    open_run,
)
from loader.flow.model import RunStatus
from loader.flow.runtime import heap
from loader.flow.runtime.retention import prune_state
from loader.flow.runtime.state_folder import check_writable, write_error_in
from loader.flow.source.exports import Export, Listing, list_exports
from loader.flow.source.file_ledger import (
    FileRead,
    FileState,
    latest_entries,
    record_files,
    unchanged,
)
from loader.flow.source.file_sources import table_sources
from loader.flow.summary import MartsStatus, RunSummary, Stage
from loader.marts.build import build_marts
from loader.observe.events import Finished, Job, Observers
from loader.settings import EXPECTATIONS_DIR, Settings

if TYPE_CHECKING:  # the pipeline imports dlt: a run with nothing new never needs it
    from loader.flow.judge.gate import Gate
    from loader.flow.pipeline import Progress, Run

# How long a waiting run gives the run it waits for to write its audit.runs row, to name it.
HOLDER_ROW_SECONDS = 30.0


class LoadHere:
    """How a file run reads, judges and lands its exports in this process: the strict reader
    beside a structure pre-scan, chunk by chunk, judged by a forked gate, settled while the next
    chunks are judged. Leaving it closes the gate it started (a gate handed to it, such as
    `watch`'s warm one, stays open)."""

    def __init__(
        self,
        settings: Settings,
        conn: psycopg.Connection,
        url: str,
        progress: Progress | None,
        gate: Gate | None = None,
        **observing,
    ):
        """`observing`: the run's observers and what they are told (`pipeline.Run`)."""
        from loader.flow.judge.gate_process import ForkedGate

        self.settings = settings
        self.structure = None
        self.own_gate = gate is None
        # Forked first: the gate imports GX on the other core while this process imports dlt.
        self.gate = ForkedGate(EXPECTATIONS_DIR, settings.gx_state_dir) if gate is None else gate
        try:
            from loader.flow.land import RawLoader
            from loader.flow.pipeline import Run

            self.run = Run(
                settings,
                conn,
                self.gate,
                RawLoader(url, settings.dlt_dir),
                settings.input_dir,
                settings.policy,
                settings.batch_size,
                progress,
                keep_settlements=False,  # a file may hold millions of batches: logged, not kept
                **observing,
            )
        except BaseException:
            self.close_gate()
            raise

    def load(self, reads: list[FileRead]) -> None:
        from loader.flow.source.prescan import StructureCheck

        settings = self.settings
        self.structure = StructureCheck(
            [read.export for read in reads], settings.batch_size, settings.encoding
        )
        sources = table_sources(reads, settings)
        self.run.load_and_settle(sources, batch_states(self.run.conn), self.structure)
        self.structure.cancel()  # the run read its input whole itself

    def cancel(self) -> None:
        if self.structure is not None:
            self.structure.cancel()

    def __enter__(self) -> LoadHere:
        return self

    def __exit__(self, *exception) -> None:
        self.close_gate()

    def close_gate(self) -> None:
        if self.own_gate:
            self.gate.close()


def plan_reads(
    conn: psycopg.Connection,
    listing: Listing,
    skip_malformed: bool = False,
    skip_partial: bool = False,
) -> tuple[list[FileRead], list[Export]]:
    """The files to read, and those skipped: loaded before and unchanged; for `watch`, also
    found malformed before and unchanged, and (`skip_partial`, when nothing else is new) those
    whose batches wait for a parent that has not arrived since."""
    entries = latest_entries(conn, [export.shown for export in listing.exports])
    skipped_states = [FileState.LOADED]
    skipped_states += [FileState.MALFORMED] if skip_malformed else []
    skipped_states += [FileState.PARTIALLY_LOADED] if skip_partial else []
    reads, skipped = [], []
    for export in listing.exports:
        entry = entries.get(export.shown)
        if any(unchanged(export, entry, state) for state in skipped_states):
            skipped.append(export)
        else:
            reads.append(FileRead(export))
    return reads, skipped


def run_files(
    settings: Settings,
    progress: Progress | None = None,
    wait: bool = True,
    notify: Callable[[str], None] = lambda message: None,
    listing: Listing | None = None,
    skip_malformed: bool = False,
    observers: Observers | None = None,
    job: Job = Job.FILE_RUN,
    gate: Gate | None = None,
) -> RunSummary:
    """The input's new or changed exports through the pipeline, then data docs and marts; on a
    Dask cluster when `settings` name workers or a scheduler.

    Args:
        wait: when another file run holds the database, wait for it (`notify` is told once
            whom we wait for) rather than raise RunBusy.
        listing: the input as listed already (`watch`); None: listed now.
        skip_malformed: do not read again a file found malformed before and unchanged since
            (`watch`; a `run` reads it again and stops on it).
        observers: told the run started (as `job`) and how it ended, and of its marts build.
        gate: a gate to judge with, kept open (`watch` keeps one warm for its life); None: the
            run forks one of its own. A run on Dask judges on its workers either way.
    """
    observers = observers or Observers()
    check_writable(settings.state_path)
    listing = listing or list_exports(settings.input_dir)
    heap.configure()
    url = database_url(settings)
    try:
        with connect(url, autocommit=True) as conn:
            _take_run_lock(conn, url, wait, notify)
            reads, skipped = plan_reads(conn, listing, skip_malformed)

            def listed(summary: RunSummary) -> None:
                summary.files_skipped = [export.shown for export in skipped]
                summary.files_ignored = listing.ignored

            observing = {"observers": observers, "job": job}
            if reads:
                summary = _load(settings, conn, url, reads, progress, listed, observing, gate)
            else:
                summary = _nothing_new(settings, conn, listed, observing)
        summary.write(settings.logs_dir / summary.run_id / "summary.json")
    except (InputError, DatabaseUnavailable, StorageUnavailable, RunBusy, KeyboardInterrupt):
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
    reads: list[FileRead],
    progress: Progress | None,
    listed: Callable[[RunSummary], None],
    observing: dict,
    gate: Gate | None,
) -> RunSummary:
    """Load, settle, record the files, build the docs and the marts; the run's row closed
    either way, a malformed file recorded as such."""
    loading, options = LoadHere, {"gate": gate}
    if settings.workers is not None or settings.scheduler is not None:
        from loader.flow.cluster.driver import LoadOnCluster  # Dask only where it is asked for

        loading, options = LoadOnCluster, {}
    observing["inputs"] = [read.export.shown for read in reads]
    observing["tables"] = list(dict.fromkeys(read.export.table.name for read in reads))
    with loading(settings, conn, url, progress, **options, **observing) as load:
        run = load.run
        listed(run.summary)
        try:
            load.load(reads)
            for read in reads:
                read.unsettled = read.export.shown in run.unsettled_sources
            record_files(conn, run.run_id, reads)
            run.summary.files = [_file_entry(read) for read in reads if not read.gone]
            run.summary.files_gone = [read.export.shown for read in reads if read.gone]
            _build_docs(run)
            _prune(settings)
            if settings.build_marts:
                _build_marts(run, url)
        except BaseException as error:
            load.cancel()
            if isinstance(error, InputError):
                _record_malformed(conn, run.run_id, reads, error)
            run.finish(error)
            raise
        return run.finish()


def _nothing_new(
    settings: Settings,
    conn: psycopg.Connection,
    listed: Callable[[RunSummary], None],
    observing: dict,
) -> RunSummary:
    """A run whose every file was loaded before: its row opened and closed, nothing started;
    its observers hear it start and complete with nothing read."""
    run_id = new_run_id()
    open_run(conn, run_id, settings.input_dir, settings.batch_size, settings.policy)
    observers: Observers = observing["observers"]
    started = observers.start(observing["job"], run_id)
    summary = RunSummary(
        run_id,
        settings.input_dir,
        settings.batch_size,
        settings.policy,
        log_dir=str(settings.logs_dir / run_id),
        marts_status=MartsStatus.NOT_BUILT,
    )
    docs = settings.data_docs_dir / "index.html"
    summary.data_docs = str(docs) if docs.exists() else ""
    listed(summary)
    close_run(conn, run_id, RunStatus.COMPLETED, summary.as_dict())
    observers.finished(started, Finished(summary=summary))
    return summary


def _record_malformed(
    conn: psycopg.Connection, run_id: str, reads: list[FileRead], error: InputError
) -> None:
    """The file the InputError names, recorded malformed with its one line."""
    for read in reads:
        if error.source in (read.export.url, read.export.shown):
            read.reason = str(error)
            with suppress(psycopg.Error):
                record_files(conn, run_id, [read])


def _file_entry(read: FileRead) -> dict:
    return {
        "url": read.export.shown,
        "table": read.export.table.name,
        "state": str(read.state),
        "batches": read.batches,
        "rows": read.rows,
    }


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


def _build_docs(run: Run) -> None:
    """The run's data docs (their time: what the run waited for them once settled)."""
    started = time.perf_counter()
    docs = run.docs.result() if run.docs is not None else run.gate.build_docs()
    run.summary.data_docs = str(docs)
    run.seconds[Stage.DATA_DOCS] = time.perf_counter() - started


def _prune(settings: Settings) -> None:
    """Only the latest LOADER_DOCS_KEEP runs' validations, docs pages, logs and dlt packages."""
    from loader.flow.land import PIPELINE_NAME

    loaded = settings.dlt_dir / PIPELINE_NAME / "load" / "loaded"
    prune_state(settings.gx_state_dir, settings.logs_dir, loaded, settings.docs_keep)


def _build_marts(run: Run, url: str) -> None:
    started = time.perf_counter()
    build = build_marts(url, run.settings.state_path, run.observers, parent=run.observed)
    run.seconds[Stage.DBT_BUILD] = time.perf_counter() - started
    run.summary.marts_status = MartsStatus.REBUILT if build.success else MartsStatus.FAILED
    run.summary.marts, run.summary.marts_failures = build.rows, build.failures
