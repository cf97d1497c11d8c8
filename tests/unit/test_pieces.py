"""A cluster's shares read what the sequential reader reads: for any small file (data rows,
blank lines, CRLF or LF, a BOM, bytes that are not UTF-8, quoted commas) cut into pieces of any
size and shares of any number of whole batches, the shares' batches are the file's batches, one
for one: ids, lines, values and decode problems; and the pieces' counts are the file's."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from loader.flow.model import RawBatch, ReadCounts
from loader.flow.source.csv_reader import BOM, read_batches
from loader.flow.source.pieces import count_piece, cut, place, read_share, shares
from loader.tables import DEPARTMENTS

# Field bytes: anything but what ends a line or a field, UTF-8 or not, NUL included.
FIELD = st.binary(max_size=6).filter(lambda value: not set(value) & set(b'\n\r,"'))
QUOTED = st.lists(FIELD, min_size=2, max_size=3).map(lambda parts: b'"' + b",".join(parts) + b'"')
ROW = st.tuples(st.integers(0, 99), st.one_of(FIELD, QUOTED)).map(
    lambda row: str(row[0]).encode() + b"," + row[1]
)
BLANK = st.sampled_from([b"", b" ", b"\t", b"  \x0b", b"\x0c"])
LINE = st.tuples(st.one_of(ROW, ROW, BLANK), st.sampled_from([b"\n", b"\r\n"]))


@st.composite
def files(draw) -> bytes:
    """A header-less departments file: a BOM or not, lines with either ending, the last one
    maybe without any."""
    lines = draw(st.lists(LINE, max_size=30))
    content = b"".join(text + ending for text, ending in lines)
    if lines and draw(st.booleans()):
        content = content[: -len(lines[-1][1])]
    return (BOM if draw(st.booleans()) else b"") + content


def described(batches: list[RawBatch]) -> list[tuple]:
    return [(b.batch_id, b.first_line, b.line_numbers, b.values, b.decode_errors) for b in batches]


@settings(max_examples=150, deadline=None, database=None)
@given(
    content=files(),
    piece_bytes=st.integers(1, 64),
    batch_size=st.integers(1, 4),
    batches_per_task=st.integers(1, 3),
)
def test_shares_read_the_batches_the_sequential_reader_reads(
    content, piece_bytes, batch_size, batches_per_task
):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / DEPARTMENTS.file_name
        path.write_bytes(content)
        read = ReadCounts()
        sequential = list(read_batches(path, DEPARTMENTS, batch_size, read))

        pieces = cut(path, piece_bytes)
        counts = [count_piece(piece) for piece in pieces]
        rows = sum(count.rows for count in counts)
        spread = [
            batch
            for share in shares(
                DEPARTMENTS, place(pieces, counts), rows, batch_size * batches_per_task
            )
            for batch in read_share(share, batch_size)
        ]

    assert described(spread) == described(sequential)
    assert (rows, sum(count.lines for count in counts)) == (read.rows, read.lines)
    assert sum(count.blank_lines for count in counts) == read.blank_lines
    assert [piece.start for piece in pieces] == sorted({piece.start for piece in pieces})
