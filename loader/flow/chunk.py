"""A chunk on its way from reading to settling (`pipeline.Run`): read, sent to the gate, landed
and judged in whatever order the run gets to them, settled in reading order once landed and
judged."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import pyarrow as pa

from loader.flow.model import BatchInfo, Judged, RawBatch, Verdict
from loader.flow.settle.lanes import Keys
from loader.flow.summary import TableSummary
from loader.tables import Table

# A batch landed in raw and judged, ready to settle.
Landed = tuple[Table, BatchInfo, Verdict, Keys]


@dataclass
class Chunk:
    """Whole batches of one table between reading and settling: their rows (with lineage; let
    go once landed and sent to the gate), the batches' infos and key ranges (each batch's
    lane), which of them have a raw copy already, the batches of a parent table (for the ids
    they accept), and the gate's verdicts: `judged` is the future while the gate has the
    chunk, then `verdicts` per batch. It settles once `is_landed` and `is_judged`."""

    table: Table
    summary: TableSummary
    rows: pa.Table
    infos: list[BatchInfo]
    keys: dict[str, Keys]
    landed: dict[str, str]
    parents: list[RawBatch]
    judged: Future[Judged] | None = None
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    is_landed: bool = False
    is_judged: bool = False

    @property
    def row_count(self) -> int:
        """Its rows, also once they are let go."""
        return sum(info.rows for info in self.infos)

    @property
    def is_sent(self) -> bool:
        """The gate has it, or has judged it."""
        return self.judged is not None or self.is_judged


def sendable(flowing: deque[Chunk]) -> list[Chunk]:
    """The chunks not yet sent that the gate may judge now, in reading order: those whose
    earlier tables are all judged (their references are checked against the ids those
    accept)."""
    waiting: set[str] = set()  # tables with a chunk not yet judged
    found = []
    for chunk in flowing:
        if chunk.is_judged:
            continue
        if not chunk.is_sent:
            if waiting - {chunk.table.name}:
                break
            found.append(chunk)
        waiting.add(chunk.table.name)
    return found


def leaving(flowing: deque[Chunk]) -> list[Chunk]:
    """The chunks at the head of `flowing` that are landed and judged, taken out of it: each
    settles after every chunk read before it."""
    done = []
    while flowing and flowing[0].is_landed and flowing[0].is_judged:
        done.append(flowing.popleft())
    return done


def ready_to_settle(chunks: list[Chunk]) -> list[Landed]:
    """The batches of landed, judged chunks, each with its verdict and key ranges."""
    return [
        (chunk.table, batch, chunk.verdicts[batch.batch_id], chunk.keys[batch.batch_id])
        for chunk in chunks
        for batch in chunk.infos
    ]
