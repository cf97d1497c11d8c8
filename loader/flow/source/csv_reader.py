"""CSV bytes → rows with lineage → batches, streamed so memory stays flat whatever the file size.

Parsing is strict and never silent. A line is one row: a quoted field may hold commas and
doubled quotes but not a line break, so an unclosed quote is an error at its own line instead
of a field that swallows the rest of the file. A wrong field count or an unclosed quote means
the file is not the table it claims to be, and stops the run before anything is written. Bytes
that are not UTF-8, or a NUL byte, only spoil their row: it is kept (escaped) and rejected by
the gate with that reason.

A line's rules are `lines`; `blocks` parses many lines at once to those rules; this module
streams an export's blocks, cuts their rows into batches and gives each its id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loader.flow.errors import InputError
from loader.flow.model import RawBatch, ReadCounts
from loader.flow.source.blocks import (
    NEWLINE,
    Block,
    ascii_compatible,
    blocks,
    check_block,
    parse_block,
)
from loader.flow.source.exports import ARCHIVE_ERRORS, opened, shown_url
from loader.flow.source.lines import DEFAULT_ENCODING
from loader.settings import MAX_BATCH_SIZE
from loader.tables import BATCH_ID, DECODE_ERROR, LINE_NUMBER, RUN_ID, SOURCE_FILE, Table

BOM = b"\xef\xbb\xbf"


def batch_id(table: str, first_line: int, content: bytes) -> str:
    """Deterministic id: the same bytes at the same position give the same id on every run."""
    digest = hashlib.sha256(f"{table}\x1f{first_line}\x1f".encode())
    digest.update(content)
    return digest.hexdigest()[:32]


def read_batches(
    url: str | Path,
    table: Table,
    batch_size: int,
    counts: ReadCounts | None = None,
    encoding: str = DEFAULT_ENCODING,
    digest=None,
) -> Iterator[RawBatch]:
    """Yield the export's data rows in batches of `batch_size` consecutive rows.

    Args:
        url: a header-less CSV file (CRLF or LF, optional UTF-8 BOM), a local path or any URL
            fsspec opens, `.gz` or `.zip` compressed by name (`exports.opened`).
        table: the table the file holds.
        batch_size: rows per batch (the last batch may be shorter).
        counts: filled in as the file is read, for the run summary.
        encoding: the export's text encoding; bytes it cannot decode spoil only their row.
        digest: a hashlib object fed the file's stored bytes as they are read.
    """
    source = shown_url(str(url))
    with opened(str(url), digest) as handle, _named_errors(str(url), source):
        yield from read_stream(handle, source, table, batch_size, counts, encoding=encoding)


@contextmanager
def _named_errors(url: str, source: str) -> Iterator[None]:
    """What goes wrong while reading an export, as one InputError naming it."""
    try:
        yield
    except ARCHIVE_ERRORS as error:
        reason = f"truncated or corrupt archive ({error})"
        raise InputError(f"{source}: {reason}", url) from None
    except OSError as error:
        reason = error.strerror or error
        raise InputError(f"{source}: cannot read ({reason})", url) from None
    except InputError as error:
        error.source = error.source or url
        raise


def check_structure(
    url: str | Path,
    table: Table,
    encoding: str = DEFAULT_ENCODING,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Raise the InputError `read_batches` would raise reading the export at `url` (a wrong
    field count, bad quoting, an unreadable file), or nothing: the same blocks, with numpy
    counting each line's commas and quotes; only the lines that are quoted, blank or of
    another count go through `split_fields`, as the reader sends them. Stops early (saying
    nothing) once `stop()` is true."""
    source = shown_url(str(url))
    with opened(str(url)) as handle, _named_errors(str(url), source):
        if not ascii_compatible(encoding):  # commas are not single bytes: read it all
            for _ in read_stream(handle, source, table, MAX_BATCH_SIZE, encoding=encoding):
                if stop():
                    return
            return
        line = 1
        for block in blocks(handle):
            if stop():
                return
            if line == 1 and block.startswith(BOM):
                block = block[len(BOM) :]
                if not block:
                    break
            line += check_block(block, table, source, line, encoding)


def read_stream(
    handle: BinaryIO,
    source: str,
    table: Table,
    batch_size: int,
    counts: ReadCounts | None = None,
    first_line: int = 1,
    max_rows: int | None = None,
    encoding: str = DEFAULT_ENCODING,
) -> Iterator[RawBatch]:
    """`read_batches` over any binary stream (a file, or the body of an API request).

    Args:
        first_line: the line number of the stream's first line (a cluster task reads a share
            of a file from a line in its middle, see `pieces.read_share`).
        max_rows: stop after this many data rows.
    """
    counts = counts if counts is not None else ReadCounts()
    cutter = _Cutter(table, source, batch_size, counts, max_rows)
    line = first_line
    for block in blocks(handle):
        if line == 1 and block.startswith(BOM):
            block = block[len(BOM) :]  # BOM is ASCII-free: no line break moves
            if not block:  # the stream held a BOM alone: one blank line
                counts.lines, line = 1, 2
                counts.blank_lines += 1
                continue
        parsed = parse_block(block, table, source, line, encoding)
        yield from cutter.take(parsed)
        if cutter.full:
            return
        line += parsed.lines
        counts.lines = line - 1
        counts.blank_lines += len(parsed.blank_lines)
        if parsed.error is not None:
            counts.lines = line
            raise parsed.error
    yield from cutter.rest()


class _Cutter:
    """Cuts parsed blocks into batches of `batch_size` consecutive data rows (a batch may span
    blocks), with their ids from the rows' bytes; stops after `max_rows` rows."""

    def __init__(
        self, table: Table, source: str, batch_size: int, counts: ReadCounts, max_rows: int | None
    ):
        self.table, self.source, self.batch_size = table, source, batch_size
        self.counts, self.max_rows = counts, max_rows
        self.parts: list[pa.Table] = []
        self.digest = None
        self.first_line = 0
        self.filled = 0
        self.full = False

    def take(self, parsed: Block) -> Iterator[RawBatch]:
        rows = parsed.rows.num_rows
        position = 0
        if self.max_rows is not None and self.counts.rows >= self.max_rows:
            self.full = True
            return
        while position < rows:
            room = self.batch_size - self.filled
            if self.max_rows is not None:
                room = min(room, self.max_rows - self.counts.rows)
            end = min(rows, position + room)
            self._add(parsed, position, end)
            position = end
            if self.max_rows is not None and self.counts.rows == self.max_rows:
                self.full = True
                last = parsed.rows[LINE_NUMBER][end - 1].as_py()
                self.counts.lines = last
                self.counts.blank_lines += int((parsed.blank_lines < last).sum())
                yield from self.rest()
                return
            if self.filled == self.batch_size:
                yield self._batch()

    def rest(self) -> Iterator[RawBatch]:
        if self.filled:
            yield self._batch()

    def _add(self, parsed: Block, start: int, end: int) -> None:
        if self.filled == 0:
            self.first_line = parsed.rows[LINE_NUMBER][start].as_py()
            self.digest = hashlib.sha256(f"{self.table.name}\x1f{self.first_line}\x1f".encode())
        self.parts.append(parsed.rows.slice(start, end - start))
        starts, ends = parsed.starts[start:end], parsed.ends[start:end]
        contiguous = bool((starts[1:] == ends[:-1] + 1).all()) and (
            ends[-1] < len(parsed.block) and parsed.block[ends[-1]] == NEWLINE
        )
        view = memoryview(parsed.block)
        if contiguous:  # the rows' bytes as they are in the file, each ending in "\n"
            self.digest.update(view[starts[0] : ends[-1] + 1])
        else:
            for first, last in zip(starts.tolist(), ends.tolist()):
                self.digest.update(view[first:last])
                self.digest.update(b"\n")
        self.filled += end - start
        self.counts.rows += end - start

    def _batch(self) -> RawBatch:
        data = pa.concat_tables(self.parts) if len(self.parts) > 1 else self.parts[0]
        batch = RawBatch(
            self.table.name,
            self.source,
            self.first_line,
            self.digest.hexdigest()[:32],
            data.combine_chunks() if len(self.parts) > 1 else data,
        )
        self.parts, self.filled = [], 0
        return batch


def to_arrow(table: Table, batches: list[RawBatch], run_id: str) -> pa.Table:
    """Whole batches as one Arrow table: the fields as text, then the lineage columns.

    The file, batch id and run id are the same for many rows: dictionary-encoded, each row
    holds a 4-byte index instead of its own copy (about 90 of a hire row's 175 bytes), so the
    chunks a run holds while they wait to land or to be judged take half the memory. The CSV
    landed and the data GX judges carry the values (`csv.CSVWriter`, `rules.validation_frame`).
    """
    if not batches:
        empty = {name: pa.array([], pa.string()) for name in table.column_names}
        return pa.table(
            {**empty, SOURCE_FILE: _repeated([], [], pa.string()),
             LINE_NUMBER: pa.array([], pa.int64()), BATCH_ID: _repeated([], [], pa.string()),
             RUN_ID: _repeated([], [], pa.string()), DECODE_ERROR: pa.array([], pa.string())}
        )  # fmt: skip
    # Compacted: a batch's rows are a slice of its block's arrays, and a slice would carry (and
    # pickle to the gate process) the whole block's buffers.
    rows = pa.concat_tables([batch.data for batch in batches]).combine_chunks()
    sizes = [batch.rows for batch in batches]
    columns = {name: rows[name] for name in table.column_names}
    columns[SOURCE_FILE] = _repeated([batch.source for batch in batches], sizes, pa.string())
    columns[LINE_NUMBER] = rows[LINE_NUMBER]
    columns[BATCH_ID] = _repeated([batch.batch_id for batch in batches], sizes, pa.string())
    columns[RUN_ID] = _repeated([run_id] * len(batches), sizes, pa.string())
    columns[DECODE_ERROR] = rows[DECODE_ERROR]
    return pa.table(columns)


def _repeated(values: list, times: list[int], kind: pa.DataType) -> pa.DictionaryArray:
    """Each of `values` repeated its number of `times`, as a dictionary array."""
    encoded = pc.dictionary_encode(pa.array(values, kind))
    indices = np.repeat(encoded.indices.to_numpy(zero_copy_only=False), times).astype(np.int32)
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), encoded.dictionary)
