"""An export's bytes in blocks of whole lines, each block's lines parsed at once: numpy finds
the lines, Arrow compute splits and trims the plain ones, and every unusual line (quoted,
undecodable, blank, of another field count) goes through `lines.split_fields` one by one, so
a block reads exactly as its lines would one at a time. The structure check counts each
line's commas and quotes the same way without building any rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loader.flow.errors import InputError
from loader.flow.source.lines import decode_line, split_fields
from loader.tables import DECODE_ERROR, LINE_NUMBER, Table

BLOCK_BYTES = 2 << 20
NEWLINE, CARRIAGE_RETURN, COMMA, QUOTE = ord("\n"), ord("\r"), ord(","), ord('"')
# A line needing the slow way even with the right number of commas: a quote, or a control
# character other than the tab (a NUL, a lone carriage return, the whitespace str.strip knows).
SPECIAL = '["\\x00-\\x08\\x0a-\\x1f\\x7f]'
# A trimmed field whose end is not printable ASCII: `str.strip` may trim more there.
UNUSUAL_EDGE = "^[^\\x20-\\x7e]|[^\\x20-\\x7e]$"
SAMPLE_ASCII = '0123456789,"\r\n abcxyzABCXYZ-:.'


def blocks(handle: BinaryIO) -> Iterator[bytes]:
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
    buffer, starts, ends, bounds = lines_of(block)
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
    if not ascii_compatible(encoding):
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


def ascii_compatible(encoding: str) -> bool:
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


def check_block(block: bytes, table: Table, source: str, first_line: int, encoding: str) -> int:
    """Raise the block's first structure error; return its number of lines."""
    buffer, starts, ends, _ = lines_of(block)
    commas = np.add.reduceat(buffer == COMMA, starts, dtype=np.int64)
    quoted = np.logical_or.reduceat(buffer == QUOTE, starts)
    for index in np.flatnonzero(quoted | (commas != len(table.columns) - 1)).tolist():
        stripped = block[starts[index] : ends[index]]
        if stripped.strip():
            decoded, _ = decode_line(stripped, encoding)
            split_fields(decoded, table, f"{source}, line {first_line + index}")
    return len(starts)


def lines_of(block: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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
