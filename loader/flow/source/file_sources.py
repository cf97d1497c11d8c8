"""A table's export files as one source of batches: its files one after another, in name order,
each counted into its `FileRead` (batches, rows, the digest of its bytes) as it is read.
"""

from __future__ import annotations

from collections.abc import Iterator

from loader.flow.errors import ExportGone
from loader.flow.model import RawBatch, ReadCounts, Source
from loader.flow.source.csv_reader import read_batches
from loader.flow.source.file_ledger import FileRead
from loader.settings import Settings
from loader.tables import Table


def table_sources(reads: list[FileRead], settings: Settings) -> dict[Table, Source]:
    """A source per table of the files read, in load order: the table's files one after
    another, in name order, each counted into its `FileRead`."""
    tables: dict[Table, list[FileRead]] = {}
    for read in reads:
        tables.setdefault(read.export.table, []).append(read)
    return {
        table: (_label(table_reads), _batches_of(table, table_reads, settings))
        for table, table_reads in tables.items()
    }


def _batches_of(table: Table, reads: list[FileRead], settings: Settings):
    def batches(counts: ReadCounts) -> Iterator[RawBatch]:
        for read in reads:
            met = ReadCounts()
            try:
                for batch in read_batches(
                    read.export.url,
                    table,
                    settings.batch_size,
                    met,
                    settings.encoding,
                    read.digest,
                ):
                    read.batches += 1
                    read.rows += batch.rows
                    yield batch
            except ExportGone:
                read.gone = True  # nothing of it was read: not recorded, said in the summary
                continue
            counts.lines += met.lines
            counts.rows += met.rows
            counts.blank_lines += met.blank_lines

    return batches


def _label(reads: list[FileRead]) -> str:
    first = reads[0].export.shown
    return first if len(reads) == 1 else f"{first} (+{len(reads) - 1} more files)"
