"""A run: batches from any source through the one path, skip what the ledger has settled →
judge (the gate) → land in raw (dlt) → settle (the settlement engine) → record.

The drivers differ only in where batches come from and which lock they hold while they run:
`file_run` reads the input folder under the run lock (one file run per database), `api_run`
gathers the request bodies waiting at a moment under their batches' locks, `cluster` spreads
reading, judging and landing over Dask workers. Everything after that is `Run`.

Each table is read once, streaming: chunks of whole batches (`source.chunks`) go to the gate as
they are read (at most JUDGE_AHEAD_ROWS rows waiting for their verdicts), land in raw by dlt every
`land_rows` rows whether judged yet or not, and are settled by a settle line once landed and
judged, while the next chunks are read and judged; memory holds a few chunks whatever the
input's size. A table's chunks are all judged before the next table's go to the gate, so a hire
is judged against every department the run accepted.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path

import psycopg
import pyarrow as pa
from psycopg import sql

from loader.db.connect import reason_of
from loader.flow.chunk import Chunk, Landed, leaving, ready_to_settle, sendable
from loader.flow.judge.gate import Gate, judged_part
from loader.flow.land import RawLoader, raw_copies, without_copies
from loader.flow.ledger import close_run, new_run_id, open_run
from loader.flow.model import (
    BatchState,
    RawBatch,
    ReadCounts,
    RunStatus,
    Settlement,
    Source,
    accepted_ids,
)
from loader.flow.runtime import heap
from loader.flow.runtime.kill_points import AFTER_RAW_LOAD, AFTER_VERDICT, KillPoints
from loader.flow.settle.engine import Settler
from loader.flow.settle.lanes import key_ranges
from loader.flow.settle.line import SettleLine
from loader.flow.source.chunks import Gathering, gather
from loader.flow.summary import RUN_STAGES, RunSummary, Stage, TableSummary
from loader.observe.events import Finished, Job, Observers, describe, ending_of
from loader.settings import Policy, Settings
from loader.tables import Table

Progress = Callable[[str, int], None]
# Rows read and not yet judged, at most (in whole chunks, at least one; twice as many until the
# gate's first verdict): the chunk the gate judges and one more, read and sent while it does.
# Each waiting chunk is held twice in the run while it waits (as Arrow, about 90 bytes a row,
# and pickled for the gate's queue), and on 10M rows the gate is always the slower side: the
# Pss peak of the run and its gate, read every 250 ms, was 514-516 MB with 150,000 rows and
# 506 MB with 75,000, both runs 130 s (measured 2026-12-07).
JUDGE_AHEAD_ROWS = 75_000
# A land also closes at this many batches: with one-row batches a land of rows alone would hold
# 100,000 batches' objects until settled (see `source.chunks`).
LAND_BATCHES = 20_000


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


class Run:
    """One run over batches from any source, recorded in audit.runs on `conn`.

    `conn` (autocommit) carries the run's liveness lock and its settlements; the caller holds
    the lock that keeps this run apart from others (run lock or request locks) and closes the
    gate it hands over.
    """

    def __init__(
        self,
        settings: Settings,
        conn: psycopg.Connection,
        gate: Gate,
        raw: RawLoader,
        label: str,
        policy: Policy,
        batch_size: int,
        progress: Progress | None = None,
        keep_settlements: bool = True,
        observers: Observers | None = None,
        job: Job = Job.FILE_RUN,
        inputs: Iterable[str] = (),
        tables: Iterable[str] = (),
    ):
        """`keep_settlements=False` drops each settlement once it is counted and its batch
        logged: a file run may settle millions of batches and hold back millions of rows, an API
        caller wants its few answered with their failing rows.

        `observers` hear the run start (as `job`, reading `inputs` into `tables`) once its row
        is open, and end when it is finished."""
        self.settings = settings
        self.keep_settlements = keep_settlements
        self.conn = conn
        self.gate = gate
        self.raw = raw
        self.policy = Policy(policy)
        self.batch_size = batch_size
        self.progress = progress or (lambda table, rows: None)
        self.run_id = new_run_id()
        # Rows, not chunks: a parent table's small chunks take no room from the hires that
        # the run reads and lands while the gate imports GX. At least one whole chunk.
        self.judge_ahead = max(JUDGE_AHEAD_ROWS, settings.chunk_rows)
        self.gate_answered = False
        self.kill = KillPoints(settings.kill_at)
        self.settlements: list[Settlement] = []
        self.docs: Future[Path] | None = None  # the data docs, asked for once all is judged
        self.unsettled_sources: set[str] = set()  # sources with a batch left waiting or failed
        self._tally = threading.Lock()  # the summary's counts, shared with the settle line
        # Busy time per stage; promotion overlaps the others, so they add up to more than
        # `elapsed`, the run's wall-clock time.
        self.seconds = dict.fromkeys(RUN_STAGES, 0.0)
        self.started = time.perf_counter()
        self.summary = self.new_summary(label)
        # Per-chunk statements over raw (finding copies) would be JIT-compiled once raw is large
        # (see `settle.engine`): tens of milliseconds for a millisecond's work.
        conn.execute("set jit = off")
        open_run(conn, self.run_id, label, batch_size, self.policy)
        self.observers = observers or Observers()
        self.observed = self.observers.start(
            job, self.run_id, inputs=list(inputs), tables=list(tables)
        )

    def new_summary(self, label: str) -> RunSummary:
        return RunSummary(
            self.run_id, label, self.batch_size, self.policy, log_dir=str(self.log_dir)
        )

    @property
    def log_dir(self) -> Path:
        return self.settings.logs_dir / self.run_id

    def load_and_settle(
        self,
        sources: dict[Table, Source],
        ledger: dict[str, BatchState],
        structure_checked: Callable[[], None] | None = None,
    ) -> None:
        """Judge and land every batch not settled in `ledger` (batch id → state), and settle it.

        Args:
            structure_checked: blocks until every source is known to read whole, or raises its
                InputError (`source.prescan.StructureCheck`). Given, chunks land about every
                `land_rows` rows and are settled by a `SettleLine` while the next ones are
                judged. Absent (the API's bodies, read whole already), each table's chunks land
                while the gate judges them, and are settled on the run's connection.
        """
        known = known_ids(self.conn, sources)
        self.summary.tables = [
            TableSummary(table.name, label) for table, (label, _) in sources.items()
        ]
        if structure_checked is None:
            self._settle_here(self._land_while_judged(sources, ledger, known))
            return
        with self.settle_line() as line:
            self._judge_land_settle(sources, ledger, known, structure_checked, line.put)

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
            self.settled,
        )
        with line:
            yield line
            line.close()
        self.seconds[Stage.PROMOTE] += line.seconds

    def finish(self, error: BaseException | None = None) -> RunSummary:
        """Close the run's row (`completed`, or `failed` with the error) and return its summary.

        With the database gone the row cannot be closed: the next run marks it abandoned.
        """
        summary = self.summary
        self.seconds[Stage.ELAPSED] = time.perf_counter() - self.started
        summary.seconds = {stage: round(seconds, 3) for stage, seconds in self.seconds.items()}
        status = RunStatus.COMPLETED if error is None else RunStatus.FAILED
        summary.status = status
        data = summary.as_dict()
        if error is not None:
            data["error"] = reason_of(error)
        with suppress(psycopg.Error):
            close_run(self.conn, self.run_id, status, data)
        self.observers.finished(
            self.observed,
            Finished(
                ending_of(error),
                describe(error) if error is not None else None,
                self.seconds[Stage.ELAPSED],
                summary=summary,
            ),
        )
        return summary

    def settled(self, table: Table, settlement: Settlement) -> None:
        """Count a settlement (on the settle line's thread, or the run's) and log a batch
        that was not promoted whole."""
        if settlement.status != BatchState.PROMOTED and not settlement.replayed:
            self._log_batch(settlement)
        with self._tally:
            if settlement.status in (BatchState.WAITING, BatchState.FAILED):
                self.unsettled_sources.add(settlement.batch.source)
            self.summary_of(table).add(settlement)
            if self.keep_settlements:
                self.settlements.append(settlement)

    def summary_of(self, table: Table) -> TableSummary:
        return next(summary for summary in self.summary.tables if summary.table == table.name)

    def _judge_land_settle(
        self,
        sources: dict[Table, Source],
        ledger: dict[str, BatchState],
        known: dict[str, list[int]],
        structure_checked: Callable[[], None],
        settle: Callable[[list[Landed]], None],
    ) -> None:
        """Read chunk by chunk, each sent to the gate as it is read; land what was read when
        `land_rows` rows or LAND_BATCHES batches wait (only once the structure is checked: the
        input is not read whole yet), whether judged or not; hand each chunk to `settle` once
        it is both landed and judged, in reading order.

        Landing does not wait for verdicts (raw keeps every row, judged or not): the run lands
        while the gate imports GX and while it judges a chunk full of failing rows, instead of
        waiting idle. At most JUDGE_AHEAD_ROWS rows wait for the gate, so memory holds a few
        chunks whatever the input's size; a table's chunks are all judged before the next
        table's go to the gate (they may reference its ids).
        """
        flowing: deque[Chunk] = deque()  # read, not yet settled
        unlanded_rows = unlanded_batches = 0
        for chunk in self._read_chunks(sources, ledger, known):
            flowing.append(chunk)
            unlanded_rows += chunk.rows.num_rows
            unlanded_batches += len(chunk.infos)
            if unlanded_rows >= self.settings.land_rows or unlanded_batches >= LAND_BATCHES:
                # Verdicts in and chunks out first, without waiting: a table's first chunks,
                # held back until its parents' verdicts came, would otherwise wait out the
                # structure check and the dlt run with the gate idle.
                self._advance(flowing, known, ahead=sum(chunk.row_count for chunk in flowing))
                structure_checked()
                self._land([waiting for waiting in flowing if not waiting.is_landed])
                unlanded_rows = unlanded_batches = 0
            # Until the gate's first verdict (it imports GX meanwhile: 2.5-3 s, holding no
            # chunk) the run reads and lands twice as far ahead, with a core otherwise idle.
            ahead = self.judge_ahead * (1 if self.gate_answered else 2)
            self._advance(flowing, known, ahead=ahead)
            settle(ready_to_settle(leaving(flowing)))
        # Every file has been read whole by this run's own reader (a malformed one would have
        # raised): the structure check has nothing left to say. The rest lands while the gate
        # judges the last chunks, then builds the data docs while they settle.
        self._land([waiting for waiting in flowing if not waiting.is_landed])
        self._advance(flowing, known, ahead=0, docs=True)
        settle(ready_to_settle(leaving(flowing)))

    def _land_while_judged(
        self,
        sources: dict[Table, Source],
        ledger: dict[str, BatchState],
        known: dict[str, list[int]],
    ) -> list[Landed]:
        """Every source's batches judged and landed, ready to settle: a table's chunks go to
        the gate, land in raw while it judges them (with a `ForkedGate`, on the other core),
        and have their verdicts before the next table's go, which may reference them."""
        landed: list[Landed] = []
        for table, (_, batches) in sources.items():
            chunks = list(self._chunks(table, batches, ledger, known))
            for chunk in chunks:
                self._submit(chunk, known)
            self._land(chunks)
            for chunk in chunks:
                self._with_verdicts(chunk, known)
            landed += ready_to_settle(chunks)
        return landed

    def _read_chunks(
        self,
        sources: dict[Table, Source],
        ledger: dict[str, BatchState],
        known: dict[str, list[int]],
    ) -> Iterator[Chunk]:
        """Every table's chunks, in order, as they are read."""
        for table, (_, batches) in sources.items():
            yield from self._chunks(table, batches, ledger, known)

    def _advance(
        self, flowing: deque[Chunk], known: dict[str, list[int]], ahead: int, docs: bool = False
    ) -> None:
        """Send the gate every chunk it may judge now, take the verdicts that are in, and wait
        for the oldest until at most `ahead` rows wait for one. With `docs`, the data docs
        are asked for once every chunk is sent: the gate builds them while the last settle."""
        while True:
            for chunk in sendable(flowing):
                self._submit(chunk, known)
            if docs and self.docs is None and all(chunk.is_sent for chunk in flowing):
                self.docs = self.gate.submit_docs()
            unjudged = [chunk for chunk in flowing if not chunk.is_judged]
            waiting = sum(chunk.row_count for chunk in unjudged)
            if not unjudged or (waiting <= ahead and not unjudged[0].judged.done()):
                return
            self._with_verdicts(unjudged[0], known)

    def _land(self, chunks_read: list[Chunk]) -> None:
        """The chunks' rows into raw in one dlt run, but for batches with a raw copy already;
        the rows are dropped from the chunks once landed and sent to the gate."""
        started = time.perf_counter()
        chunks: dict[Table, list[pa.Table]] = {}
        for chunk in chunks_read:
            rows = without_copies(chunk.rows, chunk.landed)
            chunk.is_landed = True
            if chunk.is_sent:  # the gate has them: not needed
                chunk.rows = rows.slice(0, 0)
            if rows.num_rows:
                chunks.setdefault(chunk.table, []).append(rows)
        if chunks:
            self.raw.load(chunks)
        self.seconds[Stage.RAW_LOAD] += time.perf_counter() - started
        chunks.clear()
        heap.trim()
        self.kill.reach(AFTER_RAW_LOAD)

    def _settle_here(self, landed: list[Landed]) -> None:
        started = time.perf_counter()
        # Only API requests settle here: their answers must outlive a crash.
        settler = Settler(self.conn, self.run_id, self.policy, self.kill, durable=True)
        for table, batch, verdict, _ in landed:
            self.settled(table, settler.settle(table, batch, verdict))
        self.seconds[Stage.PROMOTE] += time.perf_counter() - started

    def _chunks(
        self,
        table: Table,
        batches: Callable[[ReadCounts], Iterable[RawBatch]],
        ledger: dict[str, BatchState],
        known: dict[str, list[int]],
    ) -> Iterator[Chunk]:
        """The table's unsettled batches, read a chunk at a time (`source.chunks.gather`)."""
        summary = self.summary_of(table)
        counts = ReadCounts()

        def unsettled() -> Iterator[RawBatch]:
            for batch in batches(counts):
                with self._tally:
                    if summary.count_earlier(ledger.get(batch.batch_id), batch.rows):
                        continue
                yield batch

        gathered = gather(
            table, unsettled(), self.run_id, self.settings.chunk_rows, table.name in known
        )
        while True:
            started = time.perf_counter()
            pending = next(gathered, None)
            chunk = self._chunk(table, summary, pending) if pending is not None else None
            self.seconds[Stage.READ] += time.perf_counter() - started
            self.progress(table.name, counts.rows)
            if chunk is None:
                break
            yield chunk
        summary.lines, summary.blank_lines = counts.lines, counts.blank_lines
        summary.rows_read = counts.rows

    def _chunk(self, table: Table, summary: TableSummary, pending: Gathering) -> Chunk:
        """The batches gathered as a chunk for the gate, with the raw copies they have."""
        rows = pending.arrow()
        landed = raw_copies(self.conn, table, {i.batch_id: i.rows for i in pending.infos})
        return Chunk(
            table,
            summary,
            rows,
            [replace(info, raw_run_id=landed.get(info.batch_id)) for info in pending.infos],
            key_ranges(table, rows),
            landed,
            pending.batches,
        )

    def _submit(self, chunk: Chunk, known: dict[str, list[int]]) -> None:
        """Send the chunk to the gate with the ids its references may point at."""
        referenced = {
            column.references: list(known[column.references]) for column in chunk.table.foreign_keys
        }
        batch_ids = [info.batch_id for info in chunk.infos]
        rows = judged_part(chunk.table, chunk.rows)
        chunk.judged = self.gate.submit(chunk.table, rows, batch_ids, referenced)
        if chunk.is_landed:
            chunk.rows = chunk.rows.slice(0, 0)

    def _with_verdicts(self, chunk: Chunk, known: dict[str, list[int]]) -> Chunk:
        """Wait for the chunk's verdicts and take them in: the ids a parent table's batches
        accept, and the counts."""
        judged = chunk.judged.result()
        self.gate_answered = True
        chunk.judged, chunk.verdicts, chunk.is_judged = None, judged.verdicts, True
        self.seconds[Stage.VALIDATE] += judged.seconds
        self.kill.reach(AFTER_VERDICT)
        for batch in chunk.parents:
            known[chunk.table.name] += accepted_ids(
                chunk.table, batch, chunk.verdicts[batch.batch_id], self.policy
            )
        chunk.parents = []
        with self._tally:
            chunk.summary.batches_read += len(chunk.infos)
            chunk.summary.batches_reused += len(chunk.landed)
        return chunk

    def _log_batch(self, settlement: Settlement) -> None:
        batch = settlement.batch
        name = f"{batch.table}-line{batch.first_line}-{batch.batch_id}.json"
        path = self.log_dir / "batches" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {**settlement.record(self.run_id), "failing_rows": settlement.rejected_rows}
        path.write_text(json.dumps(entry, indent=2))
