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
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

from loader.flow.errors import InputError
from loader.flow.model import RawBatch, ReadCounts
from loader.flow.source.exports import ARCHIVE_ERRORS, opened, shown_url
from loader.tables import BATCH_ID, DECODE_ERROR, LINE_NUMBER, RUN_ID, SOURCE_FILE, Table

BOM = b"\xef\xbb\xbf"
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
    with opened(str(url), digest) as handle:
        try:
            yield from read_stream(handle, source, table, batch_size, counts, encoding=encoding)
        except ARCHIVE_ERRORS as error:
            reason = f"truncated or corrupt archive ({error})"
            raise InputError(f"{source}: {reason}", str(url)) from None
        except OSError as error:
            reason = error.strerror or error
            raise InputError(f"{source}: cannot read ({reason})", str(url)) from None
        except InputError as error:
            error.source = error.source or str(url)
            raise


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
    batch, content = None, bytearray()
    for line_number, raw in enumerate(handle, start=first_line):
        if max_rows is not None and counts.rows == max_rows:
            break
        counts.lines = line_number
        if line_number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        stripped = raw.rstrip(b"\r\n")
        if not stripped.strip():
            counts.blank_lines += 1
            continue
        text, problem = decode_line(stripped, encoding)
        fields = split_fields(text, table, f"{source}, line {line_number}")
        if batch is None:
            batch, content = RawBatch(table.name, source, line_number), bytearray()
            batch.values = [[] for _ in table.columns]
        content += stripped + b"\n"
        batch.line_numbers.append(line_number)
        batch.decode_errors.append(problem)
        for column_values, value in zip(batch.values, fields):
            column_values.append(value)
        counts.rows += 1
        if batch.rows == batch_size:
            batch.batch_id = batch_id(table.name, batch.first_line, bytes(content))
            yield batch
            batch = None
    if batch is not None:
        batch.batch_id = batch_id(table.name, batch.first_line, bytes(content))
        yield batch


def to_arrow(table: Table, batches: list[RawBatch], run_id: str) -> pa.Table:
    """Whole batches as one Arrow table: the fields as text, then the lineage columns."""

    def concat(arrays: list[list], kind: pa.DataType) -> pa.Array:
        return pa.concat_arrays([pa.array(values, kind) for values in arrays])

    def repeat(value, kind: pa.DataType) -> pa.Array:
        return pa.concat_arrays([pa.repeat(pa.scalar(value(b), kind), b.rows) for b in batches])

    columns = {
        column.name: concat([batch.values[index] for batch in batches], pa.string())
        for index, column in enumerate(table.columns)
    }
    columns[SOURCE_FILE] = repeat(lambda batch: batch.source, pa.string())
    columns[LINE_NUMBER] = concat([batch.line_numbers for batch in batches], pa.int64())
    columns[BATCH_ID] = repeat(lambda batch: batch.batch_id, pa.string())
    columns[RUN_ID] = repeat(lambda batch: run_id, pa.string())
    columns[DECODE_ERROR] = concat([batch.decode_errors for batch in batches], pa.string())
    return pa.table(columns)
