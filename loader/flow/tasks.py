"""What a Dask worker does with one share of a file: read, judge, land in raw; answer small.

A task reads its whole batches itself (`ranges.read_share`: rows never travel through the
scheduler), skips those the ledger has settled, judges the rest with the GX gate and lands them
in raw with dlt, then returns only what the driver needs to settle and summarise: batch infos,
verdicts, the ledger's earlier states, accepted ids and timings. Settling is the driver's, once
every task has been judged.

A task may run twice (its worker died and Dask ran it again): batches whole in raw from an
earlier attempt or run are reused (`settle.raw_copies`), and rows this run left half-landed are
deleted before landing again, so raw never holds a batch twice under one run id.

Each worker thread keeps one GX context and one dlt pipeline (in the worker's own folder):
neither is safe to share between concurrent users.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from loader.db.connect import connect
from loader.flow.gate import Gate, Verdict
from loader.flow.lanes import Keys, key_ranges
from loader.flow.ranges import Share, read_share
from loader.flow.raw import RawLoader
from loader.flow.read import RawBatch, to_arrow
from loader.flow.run import accepted_ids
from loader.flow.settle import SETTLED, BatchInfo, ensure_raw_index, raw_copies
from loader.settings import EXPECTATIONS_DIR
from loader.tables import BATCH_ID, Table, dependents_of


@dataclass(frozen=True)
class Job:
    """What every task of one run shares."""

    url: str
    gx_state_dir: str
    run_id: str
    policy: str
    batch_size: int
    chunk_rows: int


@dataclass
class Judged:
    """One batch of a share: its lineage, its ledger state before the run, and its verdict
    (None when the ledger had it settled)."""

    batch: BatchInfo
    earlier: str | None
    verdict: Verdict | None
    keys: Keys = None  # smallest and largest id it may promote: its settle lane


@dataclass
class TaskResult:
    """A task's answer to the driver: small, whatever the share's size."""

    table: str
    first_row: int
    worker: str
    batches: list[Judged]
    accepted: list[int]  # ids it promotes, for tables others reference (their reference rule)
    rows_landed: int
    seconds: dict[str, float]
    validated: list = field(default_factory=list)  # GX result identifiers, for the data docs


def judge_share(
    job: Job, share: Share, source: str, known: dict[str, list[int]] | None = None
) -> TaskResult:
    """Read, judge and land one share; `known` holds the ids the reference rule accepts."""
    table = share.table
    seconds = dict.fromkeys(("read", "validate", "raw load"), 0.0)
    started = time.perf_counter()
    batches = list(read_share(share, source, job.batch_size))
    seconds["read"] += time.perf_counter() - started
    gate = _gate(job.gx_state_dir, threading.get_ident())
    validated_before = len(gate.validated)
    with connect(job.url, autocommit=True) as conn:
        earlier = _ledger_states(conn, [batch.batch_id for batch in batches])
        pending = [batch for batch in batches if earlier.get(batch.batch_id) not in SETTLED]
        referenced = {c.references: (known or {})[c.references] for c in table.foreign_keys}
        verdicts, accepted, chunks, keys = {}, [], [], {}
        # Only ids other tables point at travel back: a hires task's would be every row's.
        referenced_by_others = bool(dependents_of(table))
        for part in _chunked(pending, job.chunk_rows):
            started = time.perf_counter()
            chunk = to_arrow(table, part, job.run_id)
            seconds["read"] += time.perf_counter() - started
            started = time.perf_counter()
            found = gate.check(table, chunk, [batch.batch_id for batch in part], referenced)
            seconds["validate"] += time.perf_counter() - started
            verdicts.update(found)
            chunks.append(chunk)
            keys.update(key_ranges(table, chunk))
            for batch in part if referenced_by_others else ():
                accepted += accepted_ids(table, batch, found[batch.batch_id], job.policy)
        started = time.perf_counter()
        copies = raw_copies(conn, table, {batch.batch_id: batch.rows for batch in pending})
        rows_landed = _land(conn, job, table, chunks, copies)
        seconds["raw load"] += time.perf_counter() - started
    judged = [
        Judged(
            _info(batch, copies.get(batch.batch_id), job.run_id),
            earlier.get(batch.batch_id),
            verdicts.get(batch.batch_id),
            keys.get(batch.batch_id),
        )
        for batch in batches
    ]
    return TaskResult(
        table.name,
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
    if copies:
        landed = pa.array(list(copies))
        chunks = [chunk.filter(pc.invert(pc.is_in(chunk[BATCH_ID], landed))) for chunk in chunks]
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
    raw = _raw_loader(job.url, threading.get_ident())
    try:
        raw.load({table: chunks})
    except BaseException:
        raw.discard()
        raise
    return sum(chunk.num_rows for chunk in chunks)


def _info(batch: RawBatch, copy_run: str | None, run_id: str) -> BatchInfo:
    # A copy this very run landed (an earlier attempt of the task) is the run's own rows.
    return BatchInfo.of(batch, None if copy_run == run_id else copy_run)


def _ledger_states(conn: psycopg.Connection, batch_ids: list[str]) -> dict[str, str]:
    return dict(
        conn.execute(
            "select batch_id, status from audit.batches where batch_id = any(%s)", (batch_ids,)
        ).fetchall()
    )


def _chunked(batches: list[RawBatch], chunk_rows: int) -> list[list[RawBatch]]:
    """Whole batches in chunks of about `chunk_rows` rows: one GX pass each."""
    chunks: list[list[RawBatch]] = [[]]
    rows = 0
    for batch in batches:
        if rows >= chunk_rows:
            chunks.append([])
            rows = 0
        chunks[-1].append(batch)
        rows += batch.rows
    return [chunk for chunk in chunks if chunk]


@cache
def _gate(gx_state_dir: str, thread: int) -> Gate:
    return Gate(EXPECTATIONS_DIR, Path(gx_state_dir))


@cache
def _raw_loader(url: str, thread: int) -> RawLoader:
    # dlt's local state remembers which tables it created: one folder per database.
    database = hashlib.sha256(url.encode()).hexdigest()[:12]
    return RawLoader(url, _worker_folder() / f"dlt-{database}-{thread}")


def _worker_folder() -> Path:
    from distributed import get_worker

    return Path(get_worker().local_directory)


def _worker_name() -> str:
    from distributed import get_worker

    return get_worker().address
