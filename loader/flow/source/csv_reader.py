"""CSV bytes → rows with lineage → batches, streamed so memory stays flat whatever the file size.

Parsing is strict and never silent. A line is one row: a quoted field may hold commas and
doubled quotes but not a line break, so an unclosed quote is an error at its own line instead
of a field that swallows the rest of the file. A wrong field count or an unclosed quote means
the file is not the table it claims to be, and stops the run before anything is written. Bytes
that are not UTF-8, or a NUL byte, only spoil their row: it is kept (escaped) and rejected by
the gate with that reason.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loader.flow.errors import InputError
from loader.flow.model import RawBatch, ReadCounts
from loader.flow.source.exports import ARCHIVE_ERRORS, opened, shown_url
from loader.tables import BATCH_ID, DECODE_ERROR, LINE_NUMBER, RUN_ID, SOURCE_FILE, Table

BOM = b"\xef\xbb\xbf"
BLOCK_BYTES = 2 << 20
NEWLINE, CARRIAGE_RETURN, COMMA, QUOTE = ord("\n"), ord("\r"), ord(","), ord('"')
MAX_ROWS_PER_BATCH = 1000
# A line needing the slow way even with the right number of commas: a quote, or a control
# character other than the tab (a NUL, a lone carriage return, the whitespace str.strip knows).
SPECIAL = '["\\x00-\\x08\\x0a-\\x1f\\x7f]'
# A trimmed field whose end is not printable ASCII: `str.strip` may trim more there.
UNUSUAL_EDGE = "^[^\\x20-\\x7e]|[^\\x20-\\x7e]$"
SAMPLE_ASCII = '0123456789,"\r\n abcxyzABCXYZ-:.'
DEFAULT_ENCODING = "utf-8"
NOT_UTF8 = "bytes that are not UTF-8"
NUL_BYTE = "NUL byte"


def batch_id(table: str, first_line: int, content: bytes) -> str:
    """Deterministic id: the same bytes at the same position give the same id on every run."""
    digest = hashlib.sha256(f"{table}\x1f{first_line}\x1f".encode())
    digest.update(content)
    return digest.hexdigest()[:32]


def split_fields(text: str, table: Table, where: str) -> list[str | None]:
    """Split one line into the table's fields, trimmed, an empty field as None."""
    if '"' in text:
        try:
            fields = next(csv.reader([text], strict=True))
        except csv.Error as error:
            reason = "unclosed quote" if "end of data" in str(error) else f"bad quoting ({error})"
            raise InputError(f"{where}: {reason}") from None
    else:
        fields = text.split(",")
    if len(fields) != len(table.columns):
        raise InputError(
            f"{where}: expected {len(table.columns)} fields "
            f"({', '.join(table.column_names)}), found {len(fields)}"
        )
    return [value.strip() or None for value in fields]


def decode_line(raw: bytes, encoding: str = "utf-8") -> tuple[str, str | None]:
    """Decode one line; undecodable bytes and NULs are escaped and named, never fatal."""
    try:
        text, problem = raw.decode(encoding), None
    except UnicodeDecodeError:
        text = raw.decode(encoding, "backslashreplace")
        problem = NOT_UTF8 if encoding == DEFAULT_ENCODING else f"bytes that are not {encoding}"
    text, escaped = escape_text(text)
    return text, problem or escaped


def escape_text(text: str) -> tuple[str, str | None]:
    """Text PostgreSQL can store, and what was wrong with it: a lone surrogate (from JSON's
    `\\ud800`, not UTF-8) or a NUL is escaped and named, so the row is kept and rejected."""
    problem = None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text, problem = text.encode("utf-8", "backslashreplace").decode("utf-8"), NOT_UTF8
    if "\x00" in text:
        text, problem = text.replace("\x00", "\\x00"), problem or NUL_BYTE
    return text, problem


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
        if not _ascii_compatible(encoding):  # commas are not single bytes: read it all
            for _ in read_stream(handle, source, table, MAX_ROWS_PER_BATCH, encoding=encoding):
                if stop():
                    return
            return
        line = 1
        for block in _blocks(handle):
            if stop():
                return
            if line == 1 and block.startswith(BOM):
                block = block[len(BOM) :]
                if not block:
                    break
            line += _check_block(block, table, source, line, encoding)


def _check_block(block: bytes, table: Table, source: str, first_line: int, encoding: str) -> int:
    """Raise the block's first structure error; return its number of lines."""
    buffer, starts, ends, _ = _lines_of(block)
    commas = np.add.reduceat(buffer == COMMA, starts, dtype=np.int64)
    quoted = np.logical_or.reduceat(buffer == QUOTE, starts)
    for index in np.flatnonzero(quoted | (commas != len(table.columns) - 1)).tolist():
        stripped = block[starts[index] : ends[index]]
        if stripped.strip():
            decoded, _ = decode_line(stripped, encoding)
            split_fields(decoded, table, f"{source}, line {first_line + index}")
    return len(starts)


def _lines_of(block: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The block as bytes, where each of its lines starts, where its text ends (before its
    line break and the carriage returns before it: `rstrip(b"\r\n")`), and the lines'
    bounds (starts, then the block's end)."""
    buffer = np.frombuffer(block, dtype=np.uint8)
    breaks = np.flatnonzero(buffer == NEWLINE)
    starts = np.concatenate(([0], breaks + 1)).astype(np.int64)
    if starts[-1] == len(block):  # the block ends with a line break: no line after it
        starts = starts[:-1]
    bounds = np.append(starts, len(block))
    ends = np.append(breaks, len(block))[: len(starts)]
    while True:
        returns = (ends > starts) & (buffer[np.maximum(ends - 1, 0)] == CARRIAGE_RETURN)
        if not returns.any():
            return buffer, starts, ends, bounds
        ends = ends - returns


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
    for block in _blocks(handle):
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


def _blocks(handle: BinaryIO) -> Iterator[bytes]:
    """The stream in blocks of whole lines (about BLOCK_BYTES each; the last may lack its
    line break)."""
    rest = b""
    while True:
        data = handle.read(BLOCK_BYTES)
        if not data:
            if rest:
                yield rest
            return
        data = rest + data if rest else data
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            rest = data
            continue
        yield data[:cut] if cut < len(data) else data
        rest = data[cut:]


@dataclass
class Block:
    """One block's lines parsed: its data rows (the table's fields, LINE_NUMBER, DECODE_ERROR),
    where each data row's text is in the block (start, end without its line break), the numbers
    of its blank lines, its lines (up to a malformed one), and that line's error."""

    block: bytes
    rows: pa.Table
    starts: np.ndarray
    ends: np.ndarray
    blank_lines: np.ndarray
    lines: int
    error: InputError | None = None  # the first malformed line, which ends the block's rows


def parse_block(block: bytes, table: Table, source: str, first_line: int, encoding: str) -> Block:
    """Every line of `block` (numbered from `first_line`) as the strict reader reads it.

    Plain lines (valid text, the table's number of commas, no quote and no control character)
    are split and trimmed by Arrow compute, all at once; every other line (quoted fields,
    undecodable bytes, NULs, blank lines, a wrong field count) goes through `split_fields`
    one by one, which also raises the first structure error in line order. A field whose
    trimmed text begins or ends with a character that is not printable ASCII is trimmed by
    Python (`str.strip` knows more whitespace than Arrow's ASCII trim), so both ways give the
    same values.
    """
    buffer, starts, ends, bounds = _lines_of(block)
    lines = len(starts)
    offsets = pa.py_buffer(bounds.astype(np.int32))
    raw = pa.Array.from_buffers(pa.binary(), lines, [None, offsets, pa.py_buffer(block)])

    plain = _decodable(block, buffer, bounds, encoding)
    text = raw.filter(pa.array(plain)).cast(pa.string())
    text = pc.utf8_rtrim(text, "\r\n")
    fields = len(table.columns)
    simple = pc.and_(
        pc.equal(pc.count_substring(text, ","), fields - 1),
        pc.invert(pc.match_substring_regex(text, SPECIAL)),
    )
    fast = np.flatnonzero(plain)[simple.to_numpy(zero_copy_only=False)]
    slow_candidates = np.setdiff1d(np.arange(lines), fast, assume_unique=True)

    slow, slow_values, problems, blank = [], [[] for _ in table.columns], [], []
    error = None
    for index in slow_candidates.tolist():
        stripped = block[starts[index] : ends[index]]
        if not stripped.strip():
            blank.append(index)
            continue
        decoded, problem = decode_line(stripped, encoding)
        try:
            found = split_fields(decoded, table, f"{source}, line {first_line + index}")
        except InputError as malformed:
            # The rows before it are still the block's: their batches are read before the
            # error is raised, as a line-by-line reader would.
            error, lines = malformed, index
            simple = pc.and_(simple, pa.array(np.flatnonzero(plain) < index))
            fast = fast[fast < index]
            break
        for column_values, value in zip(slow_values, found):
            column_values.append(value)
        slow.append(index)
        problems.append(problem)

    columns = _split_plain(text.filter(simple), table)
    order = None
    if slow:
        indices = np.concatenate((fast, np.array(slow, dtype=np.int64)))
        order = pa.array(np.argsort(indices, kind="stable"))
        data_lines = np.sort(indices)
    else:
        data_lines = fast
    table_columns = {}
    for column, fast_values, more in zip(table.columns, columns, slow_values):
        if slow:
            fast_values = pa.concat_arrays([fast_values, pa.array(more, pa.string())])
            fast_values = fast_values.take(order)
        table_columns[column.name] = fast_values
    table_columns[LINE_NUMBER] = pa.array(data_lines + first_line, pa.int64())
    if slow:
        errors = pa.array([None] * len(fast) + problems, pa.string()).take(order)
    else:
        errors = pa.nulls(len(fast), pa.string())
    table_columns[DECODE_ERROR] = errors
    return Block(
        block,
        pa.table(table_columns),
        starts[data_lines],
        ends[data_lines],
        np.array(blank, dtype=np.int64) + first_line,
        lines,
        error,
    )


def _decodable(block: bytes, buffer: np.ndarray, bounds: np.ndarray, encoding: str) -> np.ndarray:
    """Per line: its bytes are text Arrow can take as they are (ASCII; or valid UTF-8 when the
    encoding is UTF-8). Other lines go the slow way, which escapes what does not decode."""
    if len(bounds) == 1:
        return np.zeros(0, dtype=bool)
    if not _ascii_compatible(encoding):
        return np.zeros(len(bounds) - 1, dtype=bool)
    high = np.logical_or.reduceat(buffer >= 0x80, bounds[:-1]) & (np.diff(bounds) > 0)
    plain = ~high
    if encoding.replace("_", "-").lower() in ("utf-8", "utf8"):
        for index in np.flatnonzero(high).tolist():
            try:
                block[bounds[index] : bounds[index + 1]].decode("utf-8")
            except UnicodeDecodeError:
                continue
            plain[index] = True
    return plain


def _ascii_compatible(encoding: str) -> bool:
    try:
        return SAMPLE_ASCII.encode(encoding) == SAMPLE_ASCII.encode("ascii")
    except (LookupError, UnicodeError):
        return False


def _split_plain(text: pa.Array, table: Table) -> list[pa.Array]:
    """Plain lines' fields: split at every comma, trimmed of spaces and tabs, empty as null; a
    field with anything but printable ASCII at an end is trimmed by `str.strip` instead."""
    parts = pc.split_pattern(text, ",")
    columns = []
    for index in range(len(table.columns)):
        untrimmed = pc.list_element(parts, index)
        trimmed = pc.utf8_trim(untrimmed, " \t")
        edges = pc.match_substring_regex(trimmed, UNUSUAL_EDGE)
        if pc.any(edges).as_py():
            positions = np.flatnonzero(edges.to_numpy(zero_copy_only=False))
            fixed = trimmed.to_pylist()
            for position in positions.tolist():
                fixed[position] = untrimmed[position].as_py().strip()
            trimmed = pa.array(fixed, pa.string())
        empty = pc.equal(trimmed, "")
        columns.append(pc.if_else(empty, pa.scalar(None, pa.string()), trimmed))
    return columns


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
