"""A run: batches from any source through the one path, skip what the ledger has settled →
judge (the GX gate) → land in raw (dlt) → settle (the settlement engine) → record.

File runs and API requests differ only in where batches come from and which lock they hold
while they run: `run_files` reads the input folder under the run lock (one file run per
database), `requests.RequestSettler` gathers the request bodies waiting at a moment under their
batches' locks. Everything after that is `Run`.

Each table is read once, streaming: chunks of whole batches are judged by the gate, landed in
raw by dlt every `land_rows` rows, and settled by a `SettleLine` thread while the next chunks
are judged, so memory holds a few chunks whatever the input's size. A file that is not the
table it claims to be (wrong field count, unclosed quote) stops the run with nothing written:
a file run lands nothing until `prescan.StructureCheck`, reading every file in a process of its
own, has found the input whole.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from loader.db.connect import DatabaseUnavailable, connect, database_url, reason_of, redact
from loader.db.locks import run_lock, try_run_lock
from loader.db.schema import ensure_schemas
from loader.flow import heap
from loader.flow.gate import Gate, Judged, Verdict
from loader.flow.gate_process import GateProcess
from loader.flow.kill_points import AFTER_RAW_LOAD, AFTER_VERDICT, KillPoints
from loader.flow.lanes import Keys, key_ranges
from loader.flow.prescan import StructureCheck
from loader.flow.raw import RawLoader
from loader.flow.read import InputError, RawBatch, ReadCounts, read_batches, to_arrow
from loader.flow.runs import (
    COMPLETED,
    FAILED,
    close_run,
    holder_of_run_lock,
    mark_abandoned,
    new_run_id,
    open_run,
)
from loader.flow.settle import (
    PROMOTED,
    BatchInfo,
    Settlement,
    Settler,
    held_back,
    ledger_states,
    raw_copies,
)
from loader.flow.settling import SettleLine
from loader.flow.state_folder import check_writable, write_error_in
from loader.flow.summary import RunSummary, TableSummary
from loader.marts.build import build_marts
from loader.settings import EXPECTATIONS_DIR, Settings
from loader.tables import BATCH_ID, TABLES, Table

Progress = Callable[[str, int], None]
# Where a table's batches come from: a label for the summary, and a function that yields them
# while filling in the counts it met.
Source = tuple[str, Callable[[ReadCounts], Iterable[RawBatch]]]
# A batch landed in raw and judged, ready to settle.
Landed = tuple[Table, BatchInfo, Verdict, Keys]


# Each batch costs some Python objects until it is settled (its info, verdict, key ranges):
# with one-row batches a chunk or land of rows would hold 50,000 or 100,000 of them (100,000
# one-row batches peaked at 532 MB). So a chunk also closes at CHUNK_BATCHES batches and a land
# at LAND_BATCHES; GX's and dlt's fixed costs are then about 20 µs a batch, of 0.7 ms.
CHUNK_BATCHES = 10_000
LAND_BATCHES = 20_000
# Rows read into Python lists before they are turned into Arrow (see `Gathering`).
PIECE_ROWS = 5_000
# How long a waiting run gives the run it waits for to write its audit.runs row, to name it.
HOLDER_ROW_SECONDS = 30.0


class RunBusy(RuntimeError):
    """Another file run holds the database and the caller chose not to wait."""


@dataclass
class TableWork:
    """A table's share of the run between reading and settling."""

    table: Table
    summary: TableSummary


@dataclass
class Chunk:
    """Whole batches of one table between reading and landing: their rows (with lineage), the
    batches' infos and key ranges (each batch's lane), which of them have a raw copy already,
    the batches of a parent table (for the ids they accept), and the gate's verdicts: awaited,
    then per batch."""

    item: TableWork
    rows: pa.Table
    infos: list[BatchInfo]
    keys: dict[str, Keys]
    landed: dict[str, str]
    parents: list[RawBatch]
    judged: Future[Judged] | None = None
    verdicts: dict[str, Verdict] = field(default_factory=dict)


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


def known_ids(conn: psycopg.Connection, tables: Iterable[Table]) -> dict[str, list[int]]:
    """The ids in core of every table that `tables` reference: what the reference rule checks."""
    referenced = {column.references for table in tables for column in table.foreign_keys}
    return {
        name: [
            row[0]
            for row in conn.execute(
                sql.SQL("select id from {}").format(sql.Identifier("core", name))
            )
        ]
        for name in sorted(referenced)
    }


def accepted_ids(table: Table, batch: RawBatch, verdict: Verdict, policy: str) -> list[int]:
    """Ids this batch will put in core, which later tables of the same run may reference."""
    _, promotes = held_back(verdict, policy)
    if not promotes:
        return []
    keys = batch.values[table.column_names.index(table.primary_key)]
    return [
        int(key) for line, key in zip(batch.line_numbers, keys) if line not in verdict.failing_rows
    ]


class Run:
    """One run over batches from any source, recorded in audit.runs on `conn`.

    `conn` (autocommit) carries the run's liveness lock and its settlements; the caller holds
    the lock that keeps this run apart from others (run lock or request lock).
    """

    def __init__(
        self,
        settings: Settings,
        conn: psycopg.Connection,
        gate: Gate | GateProcess,
        raw: RawLoader,
        label: str,
        policy: str,
        batch_size: int,
        progress: Progress | None = None,
        keep_settlements: bool = True,
    ):
        """`keep_settlements=False` drops each settlement once it is counted and its batch
        logged: a file run may settle millions of batches and hold back millions of rows, an API
        caller wants its few answered with their failing rows."""
        self.settings = settings
        self.keep_settlements = keep_settlements
        self.conn = conn
        self.gate = gate
        self.raw = raw
        self.policy = policy
        self.batch_size = batch_size
        self.progress = progress or (lambda table, rows: None)
        self.run_id = new_run_id()
        self.kill = KillPoints(settings.kill_at)
        self.settlements: list[Settlement] = []
        self.docs: Future[Path] | None = None  # the data docs, asked for once all is judged
        self._tally = threading.Lock()  # the summary's counts, shared with the settle line
        # Busy time per stage; promotion overlaps the others, so they add up to more than
        # `elapsed`, the run's wall-clock time.
        self.seconds = dict.fromkeys(
            ("read", "validate", "raw load", "promote", "data docs", "dbt build"), 0.0
        )
        self.started = time.perf_counter()
        self.summary = RunSummary(self.run_id, label, batch_size, policy, log_dir=str(self.log_dir))
        open_run(conn, self.run_id, label, batch_size, policy)

    @classmethod
    def of_files(
        cls, settings: Settings, conn: psycopg.Connection, url: str, progress: Progress | None
    ) -> Run:
        """A run of the input folder: the committed checkpoints run by a gate process, the run's
        own dlt pipeline, settlements logged rather than kept (a file may hold millions of
        batches). Close its gate when done."""
        return cls(
            settings,
            conn,
            cls.file_gate(settings),
            RawLoader(url, settings.dlt_dir),
            str(settings.input_dir),
            settings.policy,
            settings.batch_size,
            progress,
            keep_settlements=False,
        )

    @staticmethod
    def file_gate(settings: Settings) -> Gate | GateProcess:
        """The gate of a file run: a process of its own, judging beside reading and landing."""
        return GateProcess(EXPECTATIONS_DIR, settings.gx_state_dir)

    @property
    def log_dir(self) -> Path:
        return self.settings.logs_dir / self.run_id

    def load_and_settle(
        self,
        sources: dict[Table, Source],
        ledger: dict[str, str],
        structure_checked: Callable[[], None] | None = None,
    ) -> None:
        """Judge and land every batch not settled in `ledger` (batch id → state), and settle it.

        Args:
            structure_checked: blocks until every source is known to read whole, or raises its
                InputError (`prescan.StructureCheck`). Given, chunks land about every
                `land_rows` rows and are settled by a `SettleLine` while the next ones are
                judged. Absent (the API's bodies, read whole already), each table's chunks land
                while the gate judges them, and are settled on the run's connection.
        """
        known = known_ids(self.conn, sources)
        work = [
            TableWork(table, TableSummary(table.name, label))
            for table, (label, _) in sources.items()
        ]
        self.summary.tables = [item.summary for item in work]
        if structure_checked is None:
            self._settle_here(self._land_while_judged(work, sources, ledger, known))
            return
        with self.settle_line() as line:
            self._judge_land_settle(work, sources, ledger, known, structure_checked, line.put)

    @contextmanager
    def settle_line(self) -> Iterator[SettleLine]:
        """A settle line for this run's batches, closed (everything put settled) on leaving;
        its time counts as the run's "promote"."""
        line = SettleLine(
            self.raw.url,
            self.settings.settle_connections,
            self.run_id,
            self.policy,
            self.kill,
            self._settled,
        )
        with line:
            yield line
            line.close()
        self.seconds["promote"] += line.seconds

    def finish(self, error: BaseException | None = None) -> RunSummary:
        """Close the run's row (`completed`, or `failed` with the error) and return its summary.

        With the database gone the row cannot be closed: the next run marks it abandoned.
        """
        summary = self.summary
        self.seconds["elapsed"] = time.perf_counter() - self.started
        summary.seconds = {stage: round(seconds, 3) for stage, seconds in self.seconds.items()}
        data = summary.as_dict()
        if error is not None:
            summary.status = FAILED
            data["status"], data["error"] = FAILED, reason_of(error)
        with suppress(psycopg.Error):
            close_run(self.conn, self.run_id, COMPLETED if error is None else FAILED, data)
        return summary

    def _judge_land_settle(
        self,
        work: list[TableWork],
        sources: dict[Table, Source],
        ledger: dict[str, str],
        known: dict[str, list[int]],
        structure_checked: Callable[[], None],
        settle: Callable[[list[Landed]], None],
    ) -> None:
        """Read and judge chunk by chunk; land what was judged when `land_rows` rows wait
        (only once the structure is checked), then hand the landed batches to `settle`."""
        waiting: list[Chunk] = []
        waiting_rows = waiting_batches = 0
        for chunk in self._judged_chunks(work, sources, ledger, known):
            waiting.append(chunk)
            waiting_rows += chunk.rows.num_rows
            waiting_batches += len(chunk.infos)
            if waiting_rows >= self.settings.land_rows or waiting_batches >= LAND_BATCHES:
                structure_checked()
                self._land(waiting)
                settle(_ready_to_settle(waiting))
                waiting, waiting_rows, waiting_batches = [], 0, 0
        structure_checked()
        # The input is whole and judged: the gate builds the data docs while the rest lands.
        self.docs = self.gate.submit_docs()
        self._land(waiting)
        settle(_ready_to_settle(waiting))

    def _land_while_judged(
        self,
        work: list[TableWork],
        sources: dict[Table, Source],
        ledger: dict[str, str],
        known: dict[str, list[int]],
    ) -> list[Landed]:
        """Every source's batches judged and landed, ready to settle: a table's chunks go to
        the gate, land in raw while it judges them (with a `GateProcess`, on the other core),
        and have their verdicts before the next table's go, which may reference them."""
        landed: list[Landed] = []
        for item in work:
            chunks = list(self._chunks(item, sources[item.table][1], ledger, known))
            for chunk in chunks:
                self._submit(chunk, known)
            self._land(chunks)
            for chunk in chunks:
                self._with_verdicts(chunk, known)
            landed += _ready_to_settle(chunks)
        return landed

    def _judged_chunks(
        self,
        work: list[TableWork],
        sources: dict[Table, Source],
        ledger: dict[str, str],
        known: dict[str, list[int]],
    ) -> Iterator[Chunk]:
        """Every table's chunks with their verdicts, judged one ahead: the gate judges a chunk
        while the next one is read (and, with a `GateProcess`, while the last one lands). A
        table's chunks are all judged before the next table's go to the gate, so a hire is
        judged against every department the run accepted."""
        ahead: Chunk | None = None
        for item in work:
            for chunk in self._chunks(item, sources[item.table][1], ledger, known):
                if ahead is not None and ahead.item is not item:
                    yield self._with_verdicts(ahead, known)
                    ahead = None
                self._submit(chunk, known)
                if ahead is not None:
                    yield self._with_verdicts(ahead, known)
                ahead = chunk
        if ahead is not None:
            yield self._with_verdicts(ahead, known)

    def _land(self, submitted: list[Chunk]) -> None:
        """The chunks' rows into raw in one dlt run, but for batches with a raw copy already;
        the rows are dropped from the chunks once landed."""
        started = time.perf_counter()
        chunks: dict[Table, list[pa.Table]] = {}
        for chunk in submitted:
            rows = _unlanded(chunk)
            chunk.rows = rows.slice(0, 0)
            if rows.num_rows:
                chunks.setdefault(chunk.item.table, []).append(rows)
        if chunks:
            try:
                self.raw.load(chunks)
            except BaseException:
                with suppress(Exception):
                    self.raw.discard()
                raise
        self.seconds["raw load"] += time.perf_counter() - started
        chunks.clear()
        heap.trim()
        self.kill.reach(AFTER_RAW_LOAD)

    def _settle_here(self, landed: list[Landed]) -> None:
        started = time.perf_counter()
        # Only API requests settle here: their answers must outlive a crash.
        settler = Settler(self.conn, self.run_id, self.policy, self.kill, durable=True)
        for table, batch, verdict, _ in landed:
            self._settled(table, settler.settle(table, batch, verdict))
        self.seconds["promote"] += time.perf_counter() - started

    def _settled(self, table: Table, settlement: Settlement) -> None:
        """Count a settlement (on the settle line's thread, or the run's) and log a batch
        that was not promoted whole."""
        if settlement.status != PROMOTED and not settlement.replayed:
            self._log_batch(settlement)
        with self._tally:
            self._summaries[table.name].add(settlement)
            if self.keep_settlements:
                self.settlements.append(settlement)

    @property
    def _summaries(self) -> dict[str, TableSummary]:
        return {summary.table: summary for summary in self.summary.tables}

    def _chunks(
        self,
        item: TableWork,
        batches: Callable[[ReadCounts], Iterable[RawBatch]],
        ledger: dict[str, str],
        known: dict[str, list[int]],
    ) -> Iterator[Chunk]:
        """The table's unsettled batches, read a chunk of `chunk_rows` rows at a time."""
        counts = ReadCounts()
        pending = Gathering(item.table, self.run_id, keep_batches=item.table.name in known)
        resumed = time.perf_counter()
        for batch in batches(counts):
            state = ledger.get(batch.batch_id)
            with self._tally:
                if item.summary.count_earlier(state, batch.rows):
                    continue
            pending.add(batch)
            if pending.rows >= self.settings.chunk_rows or len(pending.infos) >= CHUNK_BATCHES:
                chunk = self._chunk(item, pending)
                self.seconds["read"] += time.perf_counter() - resumed
                yield chunk
                self.progress(item.table.name, counts.rows)
                resumed = time.perf_counter()
                pending = Gathering(item.table, self.run_id, pending.keep_batches)
        item.summary.lines, item.summary.blank_lines = counts.lines, counts.blank_lines
        item.summary.rows_read = counts.rows
        chunk = self._chunk(item, pending) if pending.infos else None
        self.seconds["read"] += time.perf_counter() - resumed
        self.progress(item.table.name, counts.rows)
        if chunk is not None:
            yield chunk

    def _chunk(self, item: TableWork, pending: Gathering) -> Chunk:
        """The batches gathered as a chunk for the gate, with the raw copies they have."""
        rows = pending.arrow()
        landed = raw_copies(self.conn, item.table, {i.batch_id: i.rows for i in pending.infos})
        return Chunk(
            item,
            rows,
            [replace(info, raw_run_id=landed.get(info.batch_id)) for info in pending.infos],
            key_ranges(item.table, rows),
            landed,
            pending.batches,
        )

    def _submit(self, chunk: Chunk, known: dict[str, list[int]]) -> None:
        """Send the chunk to the gate with the ids its references may point at."""
        referenced = {
            column.references: list(known[column.references])
            for column in chunk.item.table.foreign_keys
        }
        batch_ids = [info.batch_id for info in chunk.infos]
        chunk.judged = self.gate.submit(chunk.item.table, chunk.rows, batch_ids, referenced)

    def _with_verdicts(self, chunk: Chunk, known: dict[str, list[int]]) -> Chunk:
        """Wait for the chunk's verdicts and take them in: the ids a parent table's batches
        accept, the counts, and the rows still to land."""
        judged = chunk.judged.result()
        chunk.judged, chunk.verdicts = None, judged.verdicts
        self.seconds["validate"] += judged.seconds
        self.kill.reach(AFTER_VERDICT)
        item = chunk.item
        for batch in chunk.parents:
            known[item.table.name] += accepted_ids(
                item.table, batch, chunk.verdicts[batch.batch_id], self.policy
            )
        chunk.parents = []
        with self._tally:
            item.summary.batches_read += len(chunk.infos)
            item.summary.batches_reused += len(chunk.landed)
        return chunk

    def _log_batch(self, settlement: Settlement) -> None:
        batch = settlement.batch
        name = f"{batch.table}-line{batch.first_line}-{batch.batch_id}.json"
        path = self.log_dir / "batches" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {**settlement.record(self.run_id), "failing_rows": settlement.rejected_rows}
        path.write_text(json.dumps(entry, indent=2))


class Gathering:
    """Batches read for the next chunk: their rows turned into Arrow every PIECE_ROWS rows, as
    their Python copies (about five times the Arrow size) would otherwise all be held until the
    chunk is full; the batches themselves only for a table others reference (the ids they
    accept)."""

    def __init__(self, table: Table, run_id: str, keep_batches: bool):
        self.table, self.run_id, self.keep_batches = table, run_id, keep_batches
        self.infos: list[BatchInfo] = []
        self.batches: list[RawBatch] = []
        self.pieces: list[pa.Table] = []
        self.unconverted: list[RawBatch] = []
        self.rows = self.unconverted_rows = 0

    def add(self, batch: RawBatch) -> None:
        self.infos.append(BatchInfo.of(batch))
        if self.keep_batches:
            self.batches.append(batch)
        self.unconverted.append(batch)
        self.rows += batch.rows
        self.unconverted_rows += batch.rows
        if self.unconverted_rows >= PIECE_ROWS:
            self._convert()

    def arrow(self) -> pa.Table:
        """The rows gathered, as one table (of several Arrow chunks, not copied together)."""
        self._convert()
        return pa.concat_tables(self.pieces)

    def _convert(self) -> None:
        if self.unconverted:
            self.pieces.append(to_arrow(self.table, self.unconverted, self.run_id))
            self.unconverted, self.unconverted_rows = [], 0


def _unlanded(chunk: Chunk) -> pa.Table:
    """The chunk's rows but those of batches with a raw copy already (an earlier run's)."""
    if not chunk.landed:
        return chunk.rows
    landed = pc.is_in(chunk.rows[BATCH_ID], pa.array(list(chunk.landed)))
    return chunk.rows.filter(pc.invert(landed))


def _ready_to_settle(chunks: list[Chunk]) -> list[Landed]:
    """The batches of landed, judged chunks, each with its verdict and key ranges."""
    return [
        (chunk.item.table, batch, chunk.verdicts[batch.batch_id], chunk.keys[batch.batch_id])
        for chunk in chunks
        for batch in chunk.infos
    ]


class LoadHere:
    """How a file run reads, judges and lands its input in this process: the strict reader
    beside a structure pre-scan, chunk by chunk, settled while the next chunks are judged.
    (`cluster.LoadOnCluster` does the same on a Dask cluster.)"""

    def __init__(
        self, settings: Settings, conn: psycopg.Connection, url: str, progress: Progress | None
    ):
        self.settings = settings
        self.run = Run.of_files(settings, conn, url, progress)
        self.structure: StructureCheck | None = None

    def load(self, files: dict[str, Path]) -> None:
        batch_size = self.settings.batch_size
        self.structure = StructureCheck({t: files[t.name] for t in TABLES}, batch_size)
        sources = {
            table: (str(files[table.name]), _file_batches(files[table.name], table, batch_size))
            for table in TABLES
        }
        self.run.load_and_settle(sources, ledger_states(self.run.conn), self.structure)

    def cancel(self) -> None:
        if self.structure is not None:
            self.structure.cancel()


def run_files(
    settings: Settings,
    progress: Progress | None = None,
    wait: bool = True,
    notify: Callable[[str], None] = lambda message: None,
) -> RunSummary:
    """`python -m loader run`: the input folder through the path, then data docs and marts;
    on a Dask cluster when `settings` name workers or a scheduler.

    Args:
        wait: when another file run holds the database, wait for it (`notify` is told once
            whom we wait for) rather than raise RunBusy.
    """
    files = input_files(settings.input_dir)
    check_writable(settings.state_path)
    url = database_url(settings)
    loading = LoadHere
    if settings.workers is not None or settings.scheduler is not None:
        from loader.flow.cluster import LoadOnCluster  # dask only where it is asked for

        loading = LoadOnCluster
    try:
        with connect(url, autocommit=True) as conn:
            _take_run_lock(conn, url, wait, notify)
            load = loading(settings, conn, url, progress)
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
            finally:
                run.gate.close()
            summary = run.finish()
        summary.write(run.log_dir / "summary.json")
    except (InputError, DatabaseUnavailable, RunBusy, KeyboardInterrupt):
        raise
    except Exception as error:
        unwritable = write_error_in(error, settings.state_path)
        if unwritable is not None:
            raise unwritable from None
        if _database_gone(url):
            raise _as_database_error(error, url) from None
        raise
    return summary


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
    run.seconds["data docs"] = time.perf_counter() - started


def _build_marts(run: Run, url: str) -> None:
    started = time.perf_counter()
    build = build_marts(url, run.settings.state_path)
    run.seconds["dbt build"] = time.perf_counter() - started
    run.summary.marts_status = "rebuilt" if build.success else "dbt build failed"
    run.summary.marts, run.summary.marts_failures = build.rows, build.failures


def _database_gone(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as probe:
            probe.execute("select 1")
    except psycopg.Error:
        return True
    return False


def _as_database_error(error: BaseException, url: str) -> DatabaseUnavailable:
    reason = reason_of(error)
    return DatabaseUnavailable(
        f"lost the database {redact(url)} ({reason}); settled batches are kept, and the rest "
        "are settled when the same input is sent again"
    )
