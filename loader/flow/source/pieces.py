"""A file cut into line-aligned byte ranges, and each range read as the sequential reader would.

A worker of a cluster reads one share of a file, yet its batches must be the ones a
sequential run cuts (`csv_reader.read_stream`): the same first lines, rows and bytes, hence the same
batch ids. A batch is `batch_size` consecutive data rows counted from the start of the file,
so a worker must know where its share starts in lines and in data rows. A counting pass
(`count_piece`, one task per piece, in parallel) finds how many lines and data rows each piece
holds; their running sums place every piece (`place`). A `Share` is whole batches: data rows
`[first_row, end_row)`; `read_share` starts at the piece holding its first row, skips the rows
before it without parsing them, and reads the rest with the strict reader's own functions.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from loader.flow.errors import InputError
from loader.flow.model import RawBatch, ReadCounts
from loader.flow.source.csv_reader import BOM, read_stream
from loader.flow.source.exports import opened, shown_url, stored
from loader.flow.source.lines import DEFAULT_ENCODING
from loader.tables import Table

PIECE_BYTES = 16 * 1024 * 1024  # per counting task: a fraction of a second to count


@dataclass(frozen=True)
class Piece:
    """Bytes `[start, end)` of a file (of its uncompressed bytes: a compressed file is one
    piece), starting at a line; `first_line` and `first_row` (the line number and index of the
    data row it starts with) are known once counted and placed."""

    url: str
    start: int
    end: int
    first_line: int = 1
    first_row: int = 0


@dataclass(frozen=True)
class Count:
    """What counting one piece found."""

    lines: int
    rows: int
    blank_lines: int


@dataclass(frozen=True)
class Share:
    """Whole batches of one file for one task: data rows `[first_row, end_row)`, read from the
    placed piece that holds `first_row` up to the end of the file at most."""

    table: Table
    piece: Piece
    first_row: int
    end_row: int


def cut(url: str | Path, piece_bytes: int = PIECE_BYTES) -> list[Piece]:
    """The file in pieces of about `piece_bytes`, each starting right after a line break; a
    compressed file in one piece (it cannot be entered by seeking)."""
    url = str(url)
    if not url.endswith(".csv"):
        return [Piece(url, 0, sys.maxsize)]
    starts = [0]
    with stored(url) as handle:
        size = handle.seek(0, 2)
        for guess in range(piece_bytes, size, piece_bytes):
            if guess <= starts[-1]:
                continue
            handle.seek(guess - 1)
            handle.readline()  # to the end of the line holding byte `guess - 1`
            if handle.tell() < size:
                starts.append(handle.tell())
    return [Piece(url, start, end) for start, end in zip(starts, [*starts[1:], size])]


@contextmanager
def _from(piece: Piece) -> Iterator[BinaryIO]:
    """The file's (uncompressed) bytes, positioned at the piece's start."""
    with opened(piece.url) as handle:
        if piece.start:
            handle.seek(piece.start)
        yield handle


def is_blank(raw: bytes, line_number: int) -> bool:
    """The reader's rule: a line of nothing but white space (a BOM on line 1 aside)."""
    if line_number == 1 and raw.startswith(BOM):
        raw = raw[len(BOM) :]
    return not raw.rstrip(b"\r\n").strip()


def lines_of(piece: Piece) -> Iterator[tuple[int, bytes]]:
    """The piece's lines (with their line breaks) and their line numbers."""
    with _from(piece) as handle:
        position, line_number = piece.start, piece.first_line
        for raw in handle:
            if position >= piece.end:
                return
            yield line_number, raw
            position += len(raw)
            line_number += 1


def count_piece(piece: Piece) -> Count:
    """Lines, data rows and blank lines in an unplaced piece (first line 1 only for byte 0)."""
    lines = blank = 0
    for line_number, raw in lines_of(piece):
        lines += 1
        # Only line 1 of the file may carry a BOM; the piece at byte 0 starts there.
        blank += is_blank(raw, line_number if piece.start == 0 else 0)
    return Count(lines, lines - blank, blank)


def place(pieces: list[Piece], counts: list[Count]) -> list[Piece]:
    """The pieces with their first line and first data row, from the counts before them."""
    placed, line, row = [], 1, 0
    for piece, count in zip(pieces, counts):
        placed.append(Piece(piece.url, piece.start, piece.end, line, row))
        line, row = line + count.lines, row + count.rows
    return placed


def shares(table: Table, placed: list[Piece], rows: int, task_rows: int) -> list[Share]:
    """Tasks of whole batches: `task_rows` (a multiple of the batch size) data rows each."""
    result = []
    for first_row in range(0, rows, task_rows):
        piece = next(p for p in reversed(placed) if p.first_row <= first_row)
        result.append(Share(table, piece, first_row, min(first_row + task_rows, rows)))
    return result


def read_share(
    share: Share, batch_size: int, encoding: str = DEFAULT_ENCODING
) -> Iterator[RawBatch]:
    """The share's batches, exactly as `csv_reader.read_stream` cuts them from the whole file.

    Rows before the share's first are skipped unparsed (the task before reads them); from its
    first row on, the strict reader itself reads `end_row - first_row` data rows, so a
    malformed line raises its InputError naming file and line.
    """
    source = shown_url(share.piece.url)
    line, row = share.piece.first_line, share.piece.first_row
    with _from(share.piece) as handle:
        while row < share.first_row:
            raw = handle.readline()
            if not raw:
                break
            row += not is_blank(raw, line)
            line += 1
        counts = ReadCounts()
        wanted = share.end_row - share.first_row
        yield from read_stream(
            handle,
            source,
            share.table,
            batch_size,
            counts,
            first_line=line,
            max_rows=wanted,
            encoding=encoding,
        )
    if counts.rows < wanted:
        ended = share.first_row + counts.rows
        raise InputError(f"{source}: changed while it was read (ended at data row {ended})")
