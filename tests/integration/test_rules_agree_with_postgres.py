"""The rules agree with PostgreSQL: a value the gate accepts is one promotion's cast accepts, with
the same value; a value PostgreSQL accepts in the shape the rules allow passes the gate, except
where README documents the rules as stricter on purpose.

Values are generated (hypothesis), written as CSV lines, read by the real reader, judged by the
committed GX checkpoint (one pass per example, each value a batch of its own) and cast by the
server with the promotion's own SQL (`settle.cast_field`), one round trip per example. Run on
PostgreSQL 15 (DATABASE_URL) and 16 (the embedded server) alike.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import date

import pandas as pd
import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import sql

from loader.flow.file_run import run_files
from loader.flow.judge.checkpoints import InProcessGate
from loader.flow.judge.rules import instant_helper, integer_helper, validation_frame
from loader.flow.settle.statements import cast_field
from loader.flow.source.csv_reader import read_stream, to_arrow
from loader.settings import EXPECTATIONS_DIR
from loader.tables import (
    DEPARTMENTS,
    HIRED_EMPLOYEES,
    LINE_NUMBER,
    Column,
    Table,
)
from tests.conftest import settings_for

pytestmark = pytest.mark.database

KNOWN = {"departments": [1], "jobs": [1]}
# About 0.2 s an example (one checkpoint run, two round trips): the file stays near half a minute
# on each server CI runs it on.
PROPERTY = settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Casts each value with the promotion's SQL in a subtransaction of its own, so that one refusal
# does not end the others; one round trip for a whole example.
CAST_EACH = """
create function pg_temp.cast_each(query text, inputs text[])
returns table (accepted boolean, result text) language plpgsql as $$
declare
    input text;
begin
    foreach input in array inputs loop
        begin
            execute query into result using input;
            accepted := true;
        exception when data_exception then
            accepted := false;
            result := sqlerrm;
        end;
        return next;
    end loop;
end $$
"""


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    return InProcessGate(EXPECTATIONS_DIR, tmp_path_factory.mktemp("gx"))


@pytest.fixture(scope="module")
def conn(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(CAST_EACH)
        yield conn


def server_version(conn) -> int:
    return conn.info.server_version // 10000


def judged(gate, table: Table, column: Column, values: list[str], filler):
    """Each value in `column` of a CSV line of its own (the rest from `filler(i)`), read by the
    reader in batches of one row and judged by the checkpoint.

    Returns, per value: the field as the reader hands it on, whether the line had bad bytes, the
    field's failed rules, and the value its helper column held (an integer's value; a time's
    instant in microseconds since 1970 UTC) in the frame GX validated.
    """
    position = table.column_names.index(column.name)
    body = io.StringIO()
    writer = csv.writer(body, lineterminator="\n")
    for i, value in enumerate(values):
        row = filler(i)
        row[position] = value
        writer.writerow(row)
    batches = list(read_stream(io.BytesIO(body.getvalue().encode()), "generated.csv", table, 1))
    assert [batch.first_line for batch in batches] == list(range(1, len(values) + 1))
    chunk = to_arrow(table, batches, "property")
    verdicts = gate.check(table, chunk, [batch.batch_id for batch in batches], KNOWN)
    helpers = helper_values(validation_frame(table, chunk), column)
    found = []
    for batch in batches:
        failures = verdicts[batch.batch_id].failing_rows.get(batch.first_line, [])
        others = [f for f in failures if f.field not in (column.name, "*")]
        assert not others, f"the filler fields failed: {others}"
        found.append(
            (
                batch.values[position][0],
                batch.decode_errors[0],
                {f.rule for f in failures},
                helpers[batch.first_line],
            )
        )
    return found


def helper_values(frame: pd.DataFrame, column: Column) -> dict[int, int | None]:
    """The column's helper, by line, as Python integers (microseconds for an instant)."""
    if column.kind == "integer":
        values = frame[integer_helper(column.name)].tolist()
    elif column.kind == "timestamp":
        instants = frame[instant_helper(column.name)]
        micros = instants.dt.tz_convert(None).dt.as_unit("us").to_numpy().view("int64")
        values = [None if missing else int(m) for m, missing in zip(micros, instants.isna())]
    else:
        values = [None] * len(frame)
    return dict(zip(frame[LINE_NUMBER].tolist(), values))


VALUE = sql.SQL("$1::text")


def promotion_cast(column: Column) -> sql.Composable:
    """The value cast as promotion casts a raw field into core."""
    return cast_field(column, VALUE)


def plain_cast(column: Column) -> sql.Composable:
    """The value cast by PostgreSQL's own input function, nothing else."""
    return sql.SQL("{}::{}").format(VALUE, sql.SQL(column.postgres_type))


def epoch_micros(instant: sql.Composable) -> sql.Composable:
    return sql.SQL("(extract(epoch from {}) * 1000000)::bigint").format(instant)


def cast_by_postgres(conn, cast: sql.Composable, values: list[str]) -> list[tuple[bool, str]]:
    """Per value, whether the server accepts `cast` of it, and the result (or its message)."""
    query = sql.SQL("select ({})::text").format(cast).as_string(conn)
    return conn.execute(
        "select accepted, result from pg_temp.cast_each(%s, %s::text[])", (query, values)
    ).fetchall()


# --- datetimes ---------------------------------------------------------------------------------

DATETIME = HIRED_EMPLOYEES.column("datetime")
# The ISO shape the rules allow, written independently of rules.ISO_INSTANT and looser than it
# (any two-digit offset): inside it the gate must agree with PostgreSQL, except for the two
# documented cases below; outside it the gate refuses what PostgreSQL may take (` ` for `T`,
# lowercase `t`/`z`, `+hh:mm:ss`, zone names, more than nine fraction digits...).
SHAPE = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
    r"T(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})(?:\.(?P<fraction>[0-9]{1,9}))?"
    r"(?:Z|(?P<sign>[+-])(?P<offset_hours>[0-9]{2})(?::?(?P<offset_minutes>[0-9]{2}))?)"
)


def moved_by_postgres(parts: dict) -> bool:
    """A leap second or 24:00:00: PostgreSQL takes them but moves them into the next minute or
    day, which is not the instant written; the rule refuses them (README)."""
    return parts["second"] == "60" or parts["hour"] == "24"


def written_instant(parts: dict) -> int:
    """Microseconds since 1970 in UTC of the instant the text says, fraction truncated."""
    days = date(int(parts["year"]), int(parts["month"]), int(parts["day"])).toordinal()
    days -= date(1970, 1, 1).toordinal()
    seconds = ((days * 24 + int(parts["hour"])) * 60 + int(parts["minute"])) * 60
    micros = (seconds + int(parts["second"])) * 10**6 + int(
        ((parts["fraction"] or "") + "0" * 6)[:6]
    )
    offset = (int(parts["offset_hours"] or 0) * 60 + int(parts["offset_minutes"] or 0)) * 60
    return micros - (-1 if parts["sign"] == "-" else 1) * offset * 10**6


def two_digits(low: int, high: int):
    return st.integers(low, high).map("{:02d}".format)


def digits(low: int, high: int):
    return st.integers(low, high).flatmap(lambda n: st.text("0123456789", min_size=n, max_size=n))


def offsets(hours, minutes):
    sign = st.sampled_from(["+", "-"])
    return st.one_of(
        st.builds("{}{}:{}".format, sign, hours, minutes),
        st.builds("{}{}{}".format, sign, hours, minutes),
        st.builds("{}{}".format, sign, hours),
    )


# Each part of a datetime: (what a valid instant may hold, the edges and near misses).
PARTS = {
    "year": (
        st.one_of(
            st.integers(1, 9999).map("{:04d}".format),
            st.sampled_from(["0001", "0099", "1582", "1677", "1900", "2000", "2021", "2262"]),
            st.sampled_from(["2024", "9999"]),
        ),
        st.sampled_from(["0000", "000", "20210", "+2021", "２０２１"]),
    ),
    "month": (two_digits(1, 12), st.sampled_from(["00", "13", "1", "012"])),
    "day": (
        st.one_of(two_digits(1, 31), st.sampled_from(["28", "29", "30", "31"])),
        st.sampled_from(["00", "32", "1"]),
    ),
    "separator": (st.just("T"), st.sampled_from(["t", " ", "", "TT", "_"])),
    "hour": (two_digits(0, 23), st.sampled_from(["24", "25", "1"])),
    "minute": (two_digits(0, 59), st.sampled_from(["60", "1"])),
    "second": (two_digits(0, 59), st.sampled_from(["60", "61", "1"])),
    "fraction": (
        st.one_of(
            st.just(""),
            digits(1, 9).map(".{}".format),
            st.integers(1, 9).map(lambda n: "." + "9" * n),
        ),
        st.one_of(
            st.sampled_from([".", ",5", ".5 "]),
            digits(10, 14).map(".{}".format),
        ),
    ),
    "zone": (
        st.one_of(st.just("Z"), offsets(two_digits(0, 15), two_digits(0, 59))),
        st.one_of(
            offsets(two_digits(16, 25), two_digits(0, 59)),
            offsets(two_digits(0, 15), st.sampled_from(["60", "99", "3", "5"])),
            st.builds(
                "{}:{}".format, offsets(two_digits(0, 15), two_digits(0, 59)), two_digits(0, 60)
            ),
            st.sampled_from(["z", "", " Z", "UTC", "+05:30Z", "+", "+5", "+123", "+053015", "-99"]),
        ),
    ),
}


def assemble(parts: dict) -> str:
    return "{year}-{month}-{day}{separator}{hour}:{minute}:{second}{fraction}{zone}".format(**parts)


@st.composite
def datetimes(draw):
    """Mostly well-formed instants (some of them on days that do not exist), some with one part
    at an edge or just wrong, a few with one character replaced, inserted or deleted."""
    parts = {name: draw(valid) for name, (valid, _) in PARTS.items()}
    kind = draw(st.sampled_from(["valid", "valid", "valid", "edge", "edge", "mutated"]))
    if kind != "valid":
        name = draw(st.sampled_from(list(PARTS)))
        parts[name] = draw(PARTS[name][1])
    text = assemble(parts)
    if kind == "mutated":
        at = draw(st.integers(0, len(text)))
        char = draw(st.sampled_from(list("0123456789-:T.+Z tz,١")))
        edit = draw(st.sampled_from(["replace", "insert", "delete"]))
        rest = text[at:] if edit == "insert" else text[at + 1 :]
        text = text[:at] + ("" if edit == "delete" else char) + rest
    return text


SOME_DATETIMES = datetimes()


@settings(PROPERTY)
@given(st.lists(SOME_DATETIMES, min_size=20, max_size=80))
@example(
    [
        "2021-12-31T23:59:59.9999999Z",
        "2021-12-31T23:59:59.999999999-00:00",
        "2021-12-31T23:59:60Z",
        "2021-12-31T24:00:00Z",
        "2021-03-01T10:00:00+18:00",
        "2021-03-01T10:00:00+15:59",
        "2021-03-01T10:00:00-1559",
        "2021-03-01T10:00:00+16:00",
        "2021-03-01T10:00:00+05",
        "2021-03-01T10:00:00+05:30:15",
        "0000-01-01T00:00:00Z",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59.9999999-15:59",
        "1900-02-29T00:00:00Z",
        "2000-02-29T00:00:00Z",
        "2021-03-01t10:00:00z",
        "2021-03-01 10:00:00Z",
        "2021-03-01T10:00:00.1234567890Z",
    ]
)
def test_the_datetime_rule_accepts_exactly_what_timestamptz_accepts_at_the_same_instant(
    gate, conn, values
):
    found = judged(
        gate, HIRED_EMPLOYEES, DATETIME, values, lambda i: [str(i + 1), "N", "", "1", "1"]
    )
    present = [field for field, *_ in found if field is not None]
    promoted = cast_by_postgres(conn, epoch_micros(promotion_cast(DATETIME)), present)
    promoted = dict(zip(present, promoted))
    naive = dict(zip(present, cast_by_postgres(conn, epoch_micros(plain_cast(DATETIME)), present)))
    for field, _, failures, helper in found:
        accepted = not failures
        if field is None:
            assert not accepted
            continue
        postgres_accepts, micros = promoted[field]
        shape = SHAPE.fullmatch(field)
        if accepted:
            assert shape and not moved_by_postgres(shape.groupdict()), field
            assert postgres_accepts, (field, micros)
            written = written_instant(shape.groupdict())
            assert int(micros) == helper == written, field
            if len(shape["fraction"] or "") <= 6:
                assert naive[field] == (True, micros), "truncation changes only 7+ digits"
        elif shape and not moved_by_postgres(shape.groupdict()):
            assert not postgres_accepts, f"{field!r}: PostgreSQL takes it, the rule refuses"
            assert not naive[field][0], f"{field!r}: PostgreSQL's own cast takes it"


@pytest.mark.parametrize(
    ("written", "moved_to"),
    [
        ("2021-12-31T23:59:60Z", "2022-01-01 00:00:00+00"),
        ("2021-12-31T24:00:00Z", "2022-01-01 00:00:00+00"),
    ],
)
def test_a_leap_second_and_24_00_are_refused_because_postgresql_moves_them(
    gate, conn, written, moved_to
):
    conn.execute("set timezone = 'UTC'")
    assert cast_by_postgres(conn, plain_cast(DATETIME), [written]) == [(True, moved_to)]
    ((_, _, failures, _),) = judged(
        gate, HIRED_EMPLOYEES, DATETIME, [written], lambda i: ["1", "N", "", "1", "1"]
    )
    assert failures == {"a real instant (the day and time exist)"}


# --- integers ----------------------------------------------------------------------------------

ID = DEPARTMENTS.column("id")
PLAIN_DIGITS = re.compile(r"[0-9]+")
INTEGER_TEXTS = st.one_of(
    st.integers(-(2**40), 2**40).map(str),
    st.sampled_from(
        ["0", "1", "2147483647", "2147483648", "-2147483648", "-2147483649", "4294967296"]
    ),
    st.builds(
        "{}{}{}".format,
        st.sampled_from(["", "", "+", "-", " ", "0", "00000000000000000000"]),
        st.integers(0, 2**33),
        st.sampled_from(["", "", " ", "\t", "\u00a0", ".0", "e3"]),
    ),
    st.text("0123456789", min_size=11, max_size=40),
    st.builds(
        "{}{}".format,
        st.sampled_from(["0x", "0X", "0o", "0b", "-0x", "+0x"]),
        st.sampled_from(["1F", "7FFFFFFF", "80000000", "17", "101", "", "G"]),
    ),
    st.builds("{}_{}".format, st.integers(0, 999_999), st.integers(0, 999).map("{:03d}".format)),
    st.sampled_from(
        ["_1", "1_", "1__000", "1 000", "1,000", "1.0", "", "   ", "١٢", "１", "१", "²"]
    ),
    st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=4),
    st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=6),
)


@settings(PROPERTY, max_examples=60)
@given(st.lists(INTEGER_TEXTS, min_size=10, max_size=60))
@example(["0", "1", "007", "0" * 30 + "1", "2147483647", "2147483648", "9" * 30, "+1", "-1"])
@example(["1_000", "0x1F", "0o17", "0b101", "١", "１", "", " 12 ", "-0"])
def test_the_integer_rule_accepts_only_what_postgresql_reads_as_the_same_integer(
    gate, conn, values
):
    found = judged(gate, DEPARTMENTS, ID, values, lambda i: ["", "Sales"])
    present = [field for field, *_ in found if field is not None]
    cast = dict(zip(present, cast_by_postgres(conn, promotion_cast(ID), present)))
    for field, _, failures, helper in found:
        accepted = not failures
        if field is None:
            assert not accepted
            continue
        postgres_accepts, value = cast[field]
        if accepted:
            assert postgres_accepts, field
            assert int(value) == int(field) == helper, field
        # Stricter on purpose (README): a sign, 0 (ids are positive), and PostgreSQL 16's
        # `1_000`, `0x1F`, `0o17` and `0b101` are refused; plain digits 1..2147483647 are not.
        elif postgres_accepts and PLAIN_DIGITS.fullmatch(field) and int(value) >= 1:
            pytest.fail(f"{field!r}: PostgreSQL reads {value}, the rule refuses")


def test_postgresql_16_reads_what_the_integer_rule_refuses_on_purpose(conn):
    relaxed = ["1_000", "0x1F", "0o17", "0b101"]
    accepted = [ok for ok, _ in cast_by_postgres(conn, promotion_cast(ID), relaxed)]
    assert accepted == [server_version(conn) >= 16] * len(relaxed)
    assert cast_by_postgres(conn, promotion_cast(ID), ["+7", "-7"]) == [(True, "7"), (True, "-7")]


# --- text --------------------------------------------------------------------------------------

NAME = DEPARTMENTS.column("department")
LONG = "Ñandú 🦤 " * 12_499 + "Ñandú 🦤!"  # 100,000 characters
TEXTS = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=40),
    st.sampled_from(
        [
            "",
            "   ",
            "\t",
            "\u00a0",
            "\u3000",
            "\u200b",
            "Zoë 👩🏽‍💻 García",
            "🏳️‍🌈",
            "שלום עולם",
            "مرحبا بالعالم",
            "\u202eevil\u202c",
            "Robert'); drop table core.departments; --",
            "1; select pg_sleep(10)",
            "' or '1'='1",
            '"quoted", with commas',
            "back\\slash \\x00 \\N",
            "e\u0301 vs \u00e9",
            "NULL",
            "tab\tinside",
            "a\x00b",
        ]
    ),
    st.integers(1_000, 20_000).map(lambda n: "ß" * n),
)


@settings(PROPERTY, max_examples=60)
@given(st.lists(TEXTS, min_size=10, max_size=40))
@example([LONG, "  padded  ", "", "  ", "\u00a0\u3000", "a\x00b"])
def test_text_the_rule_accepts_is_stored_unchanged_by_postgresql(gate, conn, values):
    found = judged(gate, DEPARTMENTS, NAME, values, lambda i: [str(i + 1), ""])
    sent = [field for field, bad_bytes, *_ in found if field is not None and not bad_bytes]
    cast = dict(zip(sent, cast_by_postgres(conn, promotion_cast(NAME), sent)))
    for (field, bad_bytes, failures, _), value in zip(found, values):
        accepted = not failures
        assert field == (value.strip().replace("\x00", "\\x00") or None), "the reader trims"
        if field is None:
            # Required on purpose: PostgreSQL would store '' (README).
            assert failures == {"required: present and non-empty"}
        elif bad_bytes:
            # The reader escapes a NUL and names it; PostgreSQL's text cannot hold one.
            assert failures == {"the line is UTF-8 text without NUL bytes"}
        else:
            assert accepted, field
            assert cast[field] == (True, field)


def test_postgresql_text_cannot_hold_a_nul_which_is_why_the_reader_escapes_it(conn):
    with pytest.raises(psycopg.Error, match="null character not permitted"), conn.transaction():
        conn.execute("select chr(0)")
    with pytest.raises(psycopg.DataError, match="NUL"):
        conn.execute("select %s::text", ("a\x00b",))


def test_core_stores_names_the_rules_accept_byte_for_byte(clean, tmp_path):
    names = [LONG, "Zoë 👩🏽‍💻 García", "שלום עולם", "\u202eevil\u202c", "x'); drop table t; --"]
    folder = tmp_path / "in"
    folder.mkdir()
    with (folder / "departments.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(
            [i, name] for i, name in enumerate(names, 1)
        )
    (folder / "jobs.csv").write_text("1,Clerk\n")
    (folder / "hired_employees.csv").write_text("1,A,2021-03-01T10:00:00Z,1,1\n")
    run_files(settings_for(clean, tmp_path / "state", folder, build_marts=False))
    with psycopg.connect(clean) as conn:
        stored = conn.execute("select department from core.departments order by id").fetchall()
    assert [name for (name,) in stored] == names


# --- the instant the source wrote, end to end --------------------------------------------------


def test_a_hire_a_tenth_of_a_microsecond_before_new_year_stays_in_2021_q4(clean, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "departments.csv").write_text("1,Sales\n")
    (folder / "jobs.csv").write_text("1,Clerk\n")
    (folder / "hired_employees.csv").write_text(
        "1,A,2021-12-31T23:59:59.9999999Z,1,1\n2,B,2022-01-01T00:59:59.999999999+01:00,1,1\n"
    )
    summary = run_files(settings_for(clean, tmp_path / "state", folder, build_marts=False))
    assert summary.total("rows_promoted") == 4
    with psycopg.connect(clean) as conn:
        conn.execute("set timezone = 'Pacific/Kiritimati'")
        stored = conn.execute(
            "select to_char(datetime at time zone 'UTC', 'YYYY \"Q\"Q HH24:MI:SS.US') "
            "from core.hired_employees order by id"
        ).fetchall()
    assert stored == [("2021 Q4 23:59:59.999999",), ("2021 Q4 23:59:59.999999",)]
