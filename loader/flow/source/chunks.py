"""Whole batches gathered into chunks: the unit the gate judges in one pass and landing takes.

A chunk closes at `chunk_rows` rows or CHUNK_BATCHES batches, whichever comes first. Each
batch costs some Python objects until it is settled (its info, verdict, key range): with
one-row batches a chunk of rows alone would hold 50,000 of them (100,000 one-row batches
peaked at 532 MB). GX's and dlt's fixed costs are then about 20 µs a batch, of 0.7 ms.

Rows are turned into Arrow every PIECE_ROWS rows as they are gathered: their Python copies are
about five times the Arrow size and would otherwise all be held until the chunk is full.
File runs and cluster workers chunk through `gather`, so both keep the same caps.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyarrow as pa

from loader.flow.model import BatchInfo, RawBatch
from loader.flow.source.csv_reader import to_arrow
from loader.tables import Table

CHUNK_BATCHES = 10_000
PIECE_ROWS = 5_000


class Gathering:
    """Batches read for the next chunk: their infos, their rows as Arrow pieces, and the
    batches themselves only for a table others reference (`keep_batches`: the ids they
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

    def is_full(self, chunk_rows: int) -> bool:
        return self.rows >= chunk_rows or len(self.infos) >= CHUNK_BATCHES

    def arrow(self) -> pa.Table:
        """The rows gathered, as one table (of several Arrow chunks, not copied together; their
        lineage dictionaries merged into one, which Arrow's grouping needs)."""
        self._convert()
        return pa.concat_tables(self.pieces).unify_dictionaries()

    def _convert(self) -> None:
        if self.unconverted:
            self.pieces.append(to_arrow(self.table, self.unconverted, self.run_id))
            self.unconverted, self.unconverted_rows = [], 0


def gather(
    table: Table,
    batches: Iterable[RawBatch],
    run_id: str,
    chunk_rows: int,
    keep_batches: bool,
) -> Iterator[Gathering]:
    """`batches` in chunks of whole batches, each closed when full (see the module's caps)."""
    pending = Gathering(table, run_id, keep_batches)
    for batch in batches:
        pending.add(batch)
        if pending.is_full(chunk_rows):
            yield pending
            pending = Gathering(table, run_id, keep_batches)
    if pending.infos:
        yield pending
