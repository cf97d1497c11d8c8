"""What a Dask worker does with one share of a file: read, judge, land in raw; answer small.

A task reads its whole batches itself (`source.pieces.read_share`: rows never travel through
the scheduler), skips those the ledger has settled, judges the rest with the GX gate chunk by
chunk (`source.chunks.gather`, the file run's caps) and lands them in raw with dlt, then returns
only what the driver needs to settle and summarise: batch infos, verdicts, the ledger's earlier
states, accepted ids and timings. Settling is the driver's, once every task has been judged.

A task may run twice (its worker died and Dask ran it again): batches whole in raw from an
earlier attempt or run are reused (`land.raw_copies`), and rows this run left half-landed are
deleted before landing again, so raw never holds a batch twice under one run id.

Each worker thread keeps one GX context and one dlt pipeline (in the worker's own folder):
neither is safe to share between concurrent users.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pyarrow as pa
from psycopg import sql

from loader.db.connect import connect
from loader.flow.judge.gx_import import in_process_gate
from loader.flow.land import RawLoader, ensure_raw_index, raw_copies, without_copies
from loader.flow.ledger import batch_states
from loader.flow.model import SETTLED, BatchInfo, BatchState, RawBatch, Verdict, accepted_ids
from loader.flow.runtime import heap
from loader.flow.settle.lanes import Keys, key_ranges
from loader.flow.source.chunks import gather
from loader.flow.source.pieces import Share, read_share
from loader.flow.summary import Stage
from loader.settings import EXPECTATIONS_DIR, Policy
from loader.tables import BATCH_ID, Table, dependents_of

if TYPE_CHECKING:
    from loader.flow.judge.checkpoints import InProcessGate


@dataclass(frozen=True)
class Job:
    """What every task of one run shares."""

    url: str
    gx_state_dir: str
    run_id: str
    policy: Policy
    batch_size: int
    chunk_rows: int
    encoding: str


@dataclass
class JudgedBatch:
    """One batch of a share: its lineage, its ledger state before the run, and its verdict
    (None when the ledger had it settled)."""

    batch: BatchInfo
    earlier: BatchState | None
    verdict: Verdict | None
    keys: Keys = None  # smallest and largest id it may promote: its settle lane


@dataclass
class TaskResult:
    """A task's answer to the driver: small, whatever the share's size."""

    table: str
    source: str  # the file's URL
    first_row: int
    worker: str
    batches: list[JudgedBatch]
    accepted: list[int]  # ids it promotes, for tables others reference (their reference rule)
    rows_landed: int
    seconds: dict[Stage, float]
    validated: list = field(default_factory=list)  # GX result identifiers, for the data docs


class _ThreadTools(threading.local):
    """A worker thread's own gate and dlt pipeline, made on its first task."""

    gate: InProcessGate | None = None
    gate_dir: str | None = None
    raw: RawLoader | None = None


_tools = _ThreadTools()


def judge_share(job: Job, share: Share, known: dict[str, list[int]] | None = None) -> TaskResult:
    """Read, judge and land one share; `known` holds the ids the reference rule accepts."""
    heap.configure()
    table = share.table
    seconds = dict.fromkeys((Stage.READ, Stage.VALIDATE, Stage.RAW_LOAD), 0.0)
    started = time.perf_counter()
    batches = list(read_share(share, job.batch_size, job.encoding))
    seconds[Stage.READ] += time.perf_counter() - started
    gate = _gate(job)
    validated_before = len(gate.validated)
    with connect(job.url, autocommit=True) as conn:
        earlier = batch_states(conn, [batch.batch_id for batch in batches])
        pending = [batch for batch in batches if earlier.get(batch.batch_id) not in SETTLED]
        referenced = {c.references: (known or {})[c.references] for c in table.foreign_keys}
        verdicts, accepted, chunks, keys = {}, [], [], {}
        # Only ids other tables point at travel back: a hires task's would be every row's.
        referenced_by_others = bool(dependents_of(table))
        gathered = gather(table, pending, job.run_id, job.chunk_rows, referenced_by_others)
        for part in gathered:
            started = time.perf_counter()
            chunk = part.arrow()
            seconds[Stage.READ] += time.perf_counter() - started
            started = time.perf_counter()
            found = gate.check(table, chunk, [info.batch_id for info in part.infos], referenced)
            seconds[Stage.VALIDATE] += time.perf_counter() - started
            verdicts.update(found)
            chunks.append(chunk)
            keys.update(key_ranges(table, chunk))
            for batch in part.batches:
                accepted += accepted_ids(table, batch, found[batch.batch_id], job.policy)
        started = time.perf_counter()
        copies = raw_copies(conn, table, {batch.batch_id: batch.rows for batch in pending})
        rows_landed = _land(conn, job, table, chunks, copies)
        seconds[Stage.RAW_LOAD] += time.perf_counter() - started
    judged = [
        JudgedBatch(
            _info(batch, copies.get(batch.batch_id), job.run_id),
            earlier.get(batch.batch_id),
            verdicts.get(batch.batch_id),
            keys.get(batch.batch_id),
        )
        for batch in batches
    ]
    return TaskResult(
        table.name,
        share.piece.url,
        share.first_row,
        _worker_name(),
        judged,
        accepted,
        rows_landed,
        seconds,
        gate.validated[validated_before:],
    )


def _land(
    conn: psycopg.Connection, job: Job, table: Table, chunks: list[pa.Table], copies: dict
) -> int:
    """Land the chunks' rows whose batches have no whole copy in raw; the rows landed.

    An earlier attempt of this task (its worker killed) may have left some of them in raw
    under this run's id: those are removed first, so that each batch lands once."""
    chunks = [without_copies(chunk, copies) for chunk in chunks]
    chunks = [chunk for chunk in chunks if chunk.num_rows]
    if not chunks:
        return 0
    batch_ids = list({value for chunk in chunks for value in chunk[BATCH_ID].unique().to_pylist()})
    if ensure_raw_index(conn, table):
        conn.execute(
            sql.SQL("delete from {} where _run_id = %s and _batch_id = any(%s)").format(
                sql.Identifier("raw", table.name)
            ),
            (job.run_id, batch_ids),
        )
    _raw_loader(job.url).load({table: chunks})
    return sum(chunk.num_rows for chunk in chunks)


def _info(batch: RawBatch, copy_run: str | None, run_id: str) -> BatchInfo:
    # A copy this very run landed (an earlier attempt of the task) is the run's own rows.
    return BatchInfo.of(batch, None if copy_run == run_id else copy_run)


def _gate(job: Job) -> InProcessGate:
    if _tools.gate is None or _tools.gate_dir != job.gx_state_dir:
        _tools.gate = in_process_gate(EXPECTATIONS_DIR, Path(job.gx_state_dir))
        _tools.gate_dir = job.gx_state_dir
    return _tools.gate


def _raw_loader(url: str) -> RawLoader:
    if _tools.raw is None or _tools.raw.url != url:
        # dlt's local state remembers which tables it created: one folder per database and
        # thread.
        database = hashlib.sha256(url.encode()).hexdigest()[:12]
        folder = _worker_folder() / f"dlt-{database}-{threading.get_ident()}"
        _tools.raw = RawLoader(url, folder)
    return _tools.raw


def _worker_folder() -> Path:
    from distributed import get_worker

    return Path(get_worker().local_directory)


def _worker_name() -> str:
    from distributed import get_worker

    return get_worker().address
