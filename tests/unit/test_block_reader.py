"""The reader parses blocks of lines with Arrow, and must read exactly what the strict reader's
definition says line by line: for any file (fields with spaces, tabs and other whitespace
Python strips, non-ASCII text, bytes that are not UTF-8, NULs, quotes, carriage returns, blank
lines, a BOM, wrong field counts) and any batch size, the same batches (ids, lines, values,
decode problems), the same counts, and the same first error, or none; and the structure check
a run makes before it lands finds that same first error, or none."""

from __future__ import annotations

import hashlib
import io
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loader.flow.errors import InputError
from loader.flow.model import ReadCounts
from loader.flow.source import blocks
from loader.flow.source.csv_reader import BOM, check_structure, read_stream
from loader.flow.source.lines import decode_line, split_fields
from loader.tables import DEPARTMENTS, HIRED_EMPLOYEES


def line_by_line(content: bytes, table, batch_size: int, encoding: str = "utf-8"):
    """The reader's definition, one line at a time: (batches, counts) or the InputError."""
    counts, batches, batch, digest = ReadCounts(), [], None, None
    for number, raw in enumerate(io.BytesIO(content), start=1):
        counts.lines = number
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        stripped = raw.rstrip(b"\r\n")
        if not stripped.strip():
            counts.blank_lines += 1
            continue
        text, problem = decode_line(stripped, encoding)
        try:
            fields = split_fields(text, table, f"test.csv, line {number}")
        except InputError as error:
            return batches, counts, str(error)
        if batch is None:
            batch = {"first": number, "lines": [], "values": [], "problems": []}
            digest = hashlib.sha256(f"{table.name}\x1f{number}\x1f".encode())
        digest.update(stripped + b"\n")
        batch["lines"].append(number)
        batch["values"].append(fields)
        batch["problems"].append(problem)
        counts.rows += 1
        if len(batch["lines"]) == batch_size:
            batches.append((digest.hexdigest()[:32], batch))
            batch = None
    if batch is not None:
        batches.append((digest.hexdigest()[:32], batch))
    return batches, counts, None


def block_reader(content: bytes, table, batch_size: int, encoding: str = "utf-8"):
    counts, batches = ReadCounts(), []
    try:
        for batch in read_stream(io.BytesIO(content), "test.csv", table, batch_size, counts,
                                 encoding=encoding):  # fmt: skip
            batches.append(
                (
                    batch.batch_id,
                    {
                        "first": batch.first_line,
                        "lines": batch.line_numbers,
                        "values": [list(row) for row in zip(*batch.values)],
                        "problems": batch.decode_errors,
                    },
                )
            )
    except InputError as error:
        return batches, counts, str(error)
    return batches, counts, None


def structure_error(content: bytes, table) -> str | None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "test.csv"
        path.write_bytes(content)
        try:
            check_structure(path, table)
        except InputError as error:
            return str(error).replace(str(path), "test.csv")
    return None


WHITESPACE = ["", " ", "  ", "\t", "\u00a0", "\u3000", "\x85", "\u2003 "]
TEXT = st.text(
    alphabet=st.sampled_from(list("abcXYZ09 -:.'é漢") + ["\u00a0", "\t", "\x00", "\u200b"]),
    max_size=6,
)
FIELD = st.one_of(
    st.tuples(st.sampled_from(WHITESPACE), TEXT, st.sampled_from(WHITESPACE)).map(
        lambda parts: "".join(parts).encode()
    ),
    st.sampled_from([b"\xff", b"a\xc3", b"\x80x", b'"q,uoted"', b'"un', b"x\ry", b"\x0b1\x1c"]),
)
LINE = st.one_of(
    st.lists(FIELD, min_size=2, max_size=2).map(b",".join),
    st.lists(FIELD, min_size=2, max_size=2).map(b",".join),
    st.lists(FIELD, min_size=1, max_size=3).map(b",".join),  # maybe the wrong field count
    st.sampled_from([b"", b"   ", b"\t", b"\r"]),
)


@st.composite
def files(draw) -> bytes:
    lines = draw(st.lists(LINE, max_size=25))
    endings = draw(st.lists(st.sampled_from([b"\n", b"\r\n", b"\r\r\n"]), min_size=len(lines),
                            max_size=len(lines)))  # fmt: skip
    content = b"".join(line + ending for line, ending in zip(lines, endings))
    if lines and draw(st.booleans()):
        content = content.rstrip(b"\r\n")
    return (BOM if draw(st.booleans()) else b"") + content


@settings(max_examples=400, deadline=None)
@given(content=files(), batch_size=st.integers(1, 4), block_bytes=st.integers(1, 64))
def test_blocks_read_what_the_line_by_line_definition_reads(content, batch_size, block_bytes):
    expected = line_by_line(content, DEPARTMENTS, batch_size)
    with pytest.MonkeyPatch.context() as patch:  # small blocks: batches and lines span them
        patch.setattr(blocks, "BLOCK_BYTES", block_bytes)
        batches, counts, error = block_reader(content, DEPARTMENTS, batch_size)
        assert structure_error(content, DEPARTMENTS) == expected[2]
    assert (batches, error) == (expected[0], expected[2])
    if error is None:
        assert counts == expected[1]


@pytest.mark.parametrize("encoding", ["utf-8", "cp1252", "latin-1", "utf-16"])
def test_other_encodings_read_as_the_definition_reads(encoding):
    content = "1,Café\r\n2,  Ünïcode\t\n\n3,\u00a0x\u00a0\n".encode(encoding, "replace")
    assert block_reader(content, DEPARTMENTS, 2, encoding) == line_by_line(
        content, DEPARTMENTS, 2, encoding
    )


def test_a_large_plain_file_takes_the_fast_way_and_agrees():
    rows = [f"{i}, Name {i} ,2021-0{i % 9 + 1}-01T00:00:00Z,{i % 7},{i % 5}" for i in range(5000)]
    rows[1234] = '1234,"Quoted, Name",2021-01-01T00:00:00Z,1,1'
    rows[2345] = "2345,Jos\u00e9\u00a0,2021-01-01T00:00:00Z,1,1"
    content = ("\n".join(rows) + "\n").encode()
    assert block_reader(content, HIRED_EMPLOYEES, 1000) == line_by_line(
        content, HIRED_EMPLOYEES, 1000
    )
