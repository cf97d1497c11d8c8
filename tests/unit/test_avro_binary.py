"""The bulk encoders against fastavro itself: the Avro bytes backup/avro_binary.py makes are
those fastavro's record writer makes, its decoder reads back what fastavro writes, and both
refuse what fastavro's validator or a damaged block would; PostgreSQL's binary COPY rows of
backup/postgres_binary.py read back as written. No database."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import fastavro
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backup import avro_binary, postgres_binary
from backup.avro import Field, record_schema
from backup.columns import Values

FIELDS = (
    Field("id", "integer", "An int."),
    Field("name", "text", "A text."),
    Field("at", "timestamp", "A time."),
    Field("notes", "json", "JSON text.", nullable=True),
    Field("count", "integer", "A nullable int.", nullable=True),
    Field("when", "timestamp", "A nullable time.", nullable=True),
    Field("label", "text", "A nullable text.", nullable=True),
)
SCHEMA = record_schema("sample", "csv_migrate.test", "Every kind.", FIELDS)
SHAPES = [(field.name, field.kind, field.nullable) for field in FIELDS]
KINDS = [field.kind for field in FIELDS]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ODD_TEXTS = [
    "",
    "Ana",
    "Zoë Ångström",
    "José\u0301 (combining accent)",
    "שלום עליכם",  # right to left
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🧑🏽‍💻👩‍👩‍👧",  # astral planes, zero-width joiners
    "tab\tnew\nline\r\\ back",
    "\u2028\u2029\ufeff",  # line and paragraph separators, a BOM
    "x" * 300,  # a length that takes two varint bytes
]

ints = st.integers(-(2**31), 2**31 - 1)
longs = st.integers(-(2**63), 2**63 - 1)
texts = st.one_of(st.sampled_from(ODD_TEXTS), st.text(max_size=40))
records = st.fixed_dictionaries(
    {
        "id": ints,
        "name": texts,
        "at": longs,
        "notes": st.one_of(st.none(), texts),
        "count": st.one_of(st.none(), ints),
        "when": st.one_of(st.none(), longs),
        "label": st.one_of(st.none(), texts),
    }
)


def columns_of(rows: list[dict]) -> tuple[list[Values], int]:
    """Records as columns: numbers in arrays, texts as runs of one buffer laid out row by row
    as in a real row (two bytes before each text, as its length stands before it)."""
    data = bytearray()
    starts = {field.name: [] for field in FIELDS}
    lengths = {field.name: [] for field in FIELDS}
    for row in rows:
        for field in FIELDS:
            if field.kind in ("text", "json"):
                data += b"\xff\xff"
                encoded = b"" if row[field.name] is None else row[field.name].encode()
                starts[field.name].append(len(data))
                lengths[field.name].append(len(encoded))
                data += encoded
    buffer = np.frombuffer(bytes(data) + bytes(16), dtype=np.uint8)
    columns = []
    for field in FIELDS:
        values = [row[field.name] for row in rows]
        null = np.array([value is None for value in values], dtype=bool)
        null = null if null.any() else None
        if field.kind in ("integer", "timestamp"):
            numbers = np.array([0 if v is None else v for v in values], dtype=np.int64)
            columns.append(Values(numbers=numbers, null=null))
        else:
            start = np.array(starts[field.name], dtype=np.int64)
            length = np.array(lengths[field.name], dtype=np.int64)
            columns.append(Values(data=buffer, start=start, length=length, null=null))
    return columns, len(rows)


def rows_of(columns: list[Values], count: int) -> list[dict]:
    """Columns back as records."""
    rows = [{} for _ in range(count)]
    for field, values in zip(FIELDS, columns):
        for index, row in enumerate(rows):
            if values.null is not None and values.null[index]:
                row[field.name] = None
            elif values.numbers is not None:
                row[field.name] = int(values.numbers[index])
            else:
                start, length = int(values.start[index]), int(values.length[index])
                row[field.name] = values.data[start : start + length].tobytes().decode()
    return rows


def fastavro_bytes(rows: list[dict]) -> bytes:
    """What fastavro's own (validating) record writer makes of the records."""
    schema = fastavro.parse_schema(SCHEMA)
    out = io.BytesIO()
    for row in rows:
        fastavro.validation.validate(row, schema, raise_errors=True)
        fastavro.schemaless_writer(out, schema, row, strict=True)
    return out.getvalue()


@settings(max_examples=60, deadline=None)
@given(st.lists(records, min_size=1, max_size=40))
def test_the_encoder_writes_the_bytes_fastavro_writes(rows):
    columns, count = columns_of(rows)
    encoded, ends = avro_binary.encode(SHAPES, columns, count)
    assert encoded.tobytes() == fastavro_bytes(rows)
    assert len(ends) == count and ends[-1] == len(encoded)


def decode(bodies: list[bytes], counts: list[int]) -> tuple[list[Values], int]:
    data = bytearray(b"".join(bodies))
    return avro_binary.decode(SHAPES, data, [len(body) for body in bodies], counts)


@settings(max_examples=60, deadline=None)
@given(st.lists(records, min_size=1, max_size=60), st.integers(1, 9))
def test_what_fastavro_writes_decodes_to_the_same_records(rows, per_block):
    """Blocks of unequal sizes, walked side by side."""
    body = io.BytesIO()
    schema = fastavro.parse_schema(SCHEMA)
    bodies, counts = [], []
    for first in range(0, len(rows), per_block):
        for row in rows[first : first + per_block]:
            fastavro.schemaless_writer(body, schema, row)
        bodies.append(body.getvalue())
        counts.append(len(rows[first : first + per_block]))
        body = io.BytesIO()
    columns, count = decode(bodies, counts)
    assert count == len(rows)
    assert rows_of(columns, count) == rows


def test_a_file_of_encoded_blocks_reads_back_with_fastavro_alone():
    rows = [
        {
            "id": index - 500,
            "name": ODD_TEXTS[index % len(ODD_TEXTS)],
            "at": 1_700_000_000_123_456 + index,  # microseconds count
            "notes": None if index % 3 else '{"a": [1, 2.5, "é"]}',
            "count": None if index % 4 else -index,
            "when": None if index % 5 else -62_135_596_800_000_000,  # 0001-01-01
            "label": None if index % 2 else ODD_TEXTS[-index % len(ODD_TEXTS)],
        }
        for index in range(1000)
    ]
    columns, count = columns_of(rows)
    encoded, ends = avro_binary.encode(SHAPES, columns, count)
    out = io.BytesIO()
    writer = fastavro.write.Writer(out, fastavro.parse_schema(SCHEMA), codec="deflate")
    from backup.avro import EncodedBlock

    for records, body in avro_binary.blocks(encoded, ends, 64):
        writer.write_block(EncodedBlock(records, io.BytesIO(body)))
    writer.flush()
    out.seek(0)
    back = list(fastavro.reader(out))
    assert back == [
        {
            **row,
            **{
                key: None if row[key] is None else EPOCH + timedelta(microseconds=row[key])
                for key in ("at", "when")
            },
        }
        for row in rows
    ]
    assert back[0]["at"].microsecond == 123456


GOOD = {"id": 1, "name": "a", "at": 0, "notes": None, "count": None, "when": None, "label": None}


def test_blocks_hold_the_records_asked_for_and_the_last_the_rest():
    columns, count = columns_of([GOOD] * 10)
    encoded, ends = avro_binary.encode(SHAPES, columns, count)
    cut = avro_binary.blocks(encoded, ends, 4)
    assert [records for records, _ in cut] == [4, 4, 2]
    assert b"".join(body for _, body in cut) == encoded.tobytes()


@pytest.mark.parametrize(
    "bad, why",
    [
        ({"id": None}, "id is NULL"),
        ({"name": None}, "name is NULL"),
        ({"id": 2**31}, "32 bits"),
        ({"count": -(2**31) - 1}, "32 bits"),
    ],
)
def test_the_encoder_refuses_what_the_schema_does_not_allow(bad, why):
    columns, count = columns_of([GOOD, {**GOOD, **bad}])
    with pytest.raises(avro_binary.Invalid, match=why):
        avro_binary.encode(SHAPES, columns, count)


def with_names(names: list[bytes]) -> tuple[list[Values], int]:
    """GOOD records whose names are these bytes, UTF-8 or not."""
    columns, count = columns_of([{**GOOD, "name": "?" * len(name)} for name in names])
    data = bytearray(columns[1].data.tobytes())
    for start, name in zip(columns[1].start.tolist(), names):
        data[start : start + len(name)] = name
    buffer = np.frombuffer(bytes(data), dtype=np.uint8)
    for values in columns:
        if values.data is not None:
            values.data = buffer
    return columns, count


@pytest.mark.parametrize(
    "names",
    [
        [b"ok", b"\xff"],  # never UTF-8
        [b"\xed\xa0\x80"],  # a surrogate
        [b"caf\xc3", b"\xa9"],  # one character cut in two: UTF-8 only end to end
        [b"\xa9", b"x"],  # a text starting inside a character
    ],
    ids=["ff", "surrogate", "split", "continuation"],
)
def test_the_encoder_refuses_a_text_that_is_not_utf8(names):
    columns, count = with_names([b"fine", *names])
    with pytest.raises(avro_binary.Invalid, match="not UTF-8"):
        avro_binary.encode(SHAPES, columns, count)
    columns, count = with_names([b"fine", "Zoë 🧑🏽‍💻".encode()])
    avro_binary.encode(SHAPES, columns, count)


def encoded_block(rows: list[dict]) -> bytes:
    out = io.BytesIO()
    schema = fastavro.parse_schema(SCHEMA)
    for row in rows:
        fastavro.schemaless_writer(out, schema, row)
    return out.getvalue()


@pytest.mark.parametrize(
    "damage",
    [
        lambda body: body[:-1],  # ends inside a record
        lambda body: body + b"\x00",  # bytes after the last record
        lambda body: b"\xff" * 11 + body[11:],  # a varint of 11 bytes
        lambda body: body[:1] + b"\x7f" + body[2:],  # a string longer than the block
        lambda body: body[:-3] + b"\x04" + body[-2:],  # union branch 2 of a 2-branch union
    ],
    ids=["short", "long", "varint", "string", "branch"],
)
def test_the_decoder_refuses_a_damaged_block(damage):
    rows = [{**GOOD, "label": "x", "id": 0}, {**GOOD, "label": "y", "id": 0}]
    body = encoded_block(rows)
    assert decode([body], [2])[1] == 2
    with pytest.raises(avro_binary.Undecodable):
        decode([damage(body)], [2])


def test_the_decoder_refuses_an_int_wider_than_32_bits():
    body = encoded_block([GOOD])
    wide = io.BytesIO()
    fastavro.schemaless_writer(wide, "long", 2**31)
    with pytest.raises(avro_binary.Undecodable, match="32 bits"):
        decode([wide.getvalue() + body[1:]], [1])


def test_copy_rows_read_back_as_written_nulls_json_and_times_included():
    rows = [
        {**GOOD, "id": -5, "name": "Zoë", "at": -1, "notes": '{"k": "v"}', "count": 7},
        {**GOOD, "id": 2**31 - 1, "name": "", "at": 1_700_000_000_000_001, "when": 0},
        {**GOOD, "id": -(2**31), "name": "🧑🏽‍💻", "at": 0, "label": "l"},
    ]
    columns, count = columns_of(rows)
    data = postgres_binary.rows(KINDS, columns, count)
    ends = []
    position = 0
    for _ in range(count):  # find each row's end by walking its fields
        position += 2
        for _ in KINDS:
            length = int.from_bytes(data[position : position + 4].tobytes(), "big", signed=True)
            position += 4 + max(length, 0)
        ends.append(position)
    assert position == len(data)
    lengths = np.diff([0, *ends]).tolist()
    back = postgres_binary.parse(bytearray(data.tobytes()), lengths, KINDS)
    assert rows_of(back, count) == rows


def test_a_copy_row_of_another_shape_is_refused():
    columns, count = columns_of([GOOD])
    data = bytearray(postgres_binary.rows(KINDS, columns, count).tobytes())
    with pytest.raises(postgres_binary.Refused, match="field count"):
        postgres_binary.parse(data, [len(data)], KINDS[:-1])
    with pytest.raises(postgres_binary.Refused, match="not 4 bytes"):
        postgres_binary.parse(data, [len(data)], ["integer", "text", "integer", *KINDS[3:]])


@pytest.mark.parametrize("unix", [-(2**63), -(2**63) + postgres_binary.UNIX_EPOCH])
def test_a_time_postgresql_cannot_hold_is_refused_not_wrapped(unix):
    """Microseconds since 2000 are those since 1970 less 30 years: past int64's end they
    would wrap, or land on -infinity."""
    columns, count = columns_of([{**GOOD, "at": unix}])
    with pytest.raises(postgres_binary.Refused, match="time"):
        postgres_binary.rows(KINDS, columns, count)
