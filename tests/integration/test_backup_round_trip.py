"""Every column kind through the bulk path against a real PostgreSQL: `COPY ... TO STDOUT
(FORMAT binary)` into an Avro file, the file read back by fastavro alone, and the file copied
back in with `COPY ... FROM STDIN (FORMAT binary)`, equal to the last microsecond and byte."""

from __future__ import annotations

from datetime import UTC, datetime

import fastavro
import psycopg
import pytest
from psycopg import sql

from backup.avro import (
    BATCH_ROWS,
    Field,
    UnreadableFile,
    declared_rows,
    export_query,
    file_sha256,
    import_file,
    record_schema,
)

pytestmark = pytest.mark.database

FIELDS = (
    Field("id", "integer", "Key."),
    Field("name", "text", "Text."),
    Field("at", "timestamp", "Time."),
    Field("doc", "json", "JSON.", nullable=True),
    Field("small", "integer", "Nullable int.", nullable=True),
    Field("seen", "timestamp", "Nullable time.", nullable=True),
    Field("note", "text", "Nullable text.", nullable=True),
)
SCHEMA = record_schema("every_kind", "csv_migrate.test", "Every kind.", FIELDS)
COLUMNS = (
    "id integer primary key, name text not null, at timestamptz not null, doc jsonb, "
    "small integer, seen timestamptz, note text"
)
ODD = [
    "",
    "Zoë Ångström",
    "José\u0301",
    "שלום",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🧑🏽‍💻",
    'tab\tnew\nline\r\\back,comma"quote',
    "\u2028\u2029\ufeff",
    "x" * 200,
]
ROWS = [
    (
        1,
        "Ana",
        "2021-03-31 22:00:00.000001-05",
        '{"a": [1, 2.5, "é"], "b": null}',
        -(2**31),
        "0001-01-01 00:00:00+00",
        None,
    ),
    (2, "", "1969-12-31 23:59:59.999999+00", None, 2**31 - 1, None, ""),
    (3, "🧑🏽‍💻", "9999-12-30 23:59:59.999999+00", "[]", 0, "2000-01-01 00:00:00+00", "n"),
    (
        2**31 - 1,
        "tab\t",
        "1970-01-01 00:00:00+00",
        '"text"',
        None,
        "2024-02-29 12:34:56.789012+05:45",
        "\u2028",
    ),
]


@pytest.fixture()
def conn(database_url):
    with psycopg.connect(database_url) as conn:
        conn.execute("set timezone = 'Asia/Kathmandu'")  # +05:45: nothing may shift with it
        conn.execute(f"create temp table source ({COLUMNS})")
        conn.execute(f"create temp table target ({COLUMNS})")
        with conn.cursor() as cursor:
            cursor.executemany("insert into source values (%s, %s, %s, %s, %s, %s, %s)", ROWS)
            cursor.execute(
                "insert into source select 1000 + i, %s, "
                "timestamptz '2022-07-04 04:06:58.000123+00' + i * interval '1.000001 second', "
                "case when i %% 3 = 0 then jsonb_build_object('i', i) end, "
                "case when i %% 4 > 0 then -i end, "
                "case when i %% 5 = 0 then now() end, "
                "case when i %% 2 = 0 then %s end "
                "from generate_series(0, %s) i",
                ("𝔘 " * 3, ODD[-3], BATCH_ROWS + 100),  # more than one batch and one block
            )
        yield conn


def all_rows(conn, table):
    return conn.execute(
        sql.SQL("select * from {} order by id").format(sql.Identifier(table))
    ).fetchall()


def export(conn, path):
    query = sql.SQL("select {} from source order by id").format(
        sql.SQL(", ").join(sql.Identifier(field.name) for field in FIELDS)
    )
    return export_query(conn, query, FIELDS, SCHEMA, path)


def test_every_kind_round_trips_through_avro_exactly(conn, tmp_path):
    path = tmp_path / "every_kind.avro"
    written = export(conn, path)
    source = all_rows(conn, "source")
    assert written.rows == len(source) == declared_rows(path)
    assert written.sha256 == file_sha256(path) and written.bytes == path.stat().st_size
    assert import_file(conn, sql.Identifier("target"), FIELDS, path) == len(source)
    assert all_rows(conn, "target") == source


def test_the_file_reads_back_with_fastavro_alone(conn, tmp_path):
    path = tmp_path / "every_kind.avro"
    export(conn, path)
    with path.open("rb") as handle:
        reader = fastavro.reader(handle)
        assert reader.codec == "deflate"
        records = list(reader)
    source = conn.execute(  # jsonb travels as its text
        "select id, name, at, doc::text, small, seen, note from source order by id"
    ).fetchall()
    assert len(records) == len(source)
    for record, row in zip(records, source):
        expected = dict(zip([field.name for field in FIELDS], row))
        for name in ("at", "seen"):
            if expected[name] is not None:
                assert record[name].utcoffset().total_seconds() == 0
                expected[name] = expected[name].astimezone(UTC)
        assert record == expected
    assert records[0]["at"] == datetime(2021, 4, 1, 3, 0, 0, 1, tzinfo=UTC)


def test_a_value_the_schema_refuses_stops_the_export(conn, tmp_path):
    conn.execute("alter table source alter column name drop not null")
    conn.execute("update source set name = null where id = 2")  # the file's schema: no null
    with pytest.raises(ValueError, match="name is NULL"):
        export(conn, tmp_path / "refused.avro")


def test_a_file_cut_short_is_unreadable_before_any_row_is_copied(conn, tmp_path):
    path = tmp_path / "every_kind.avro"
    export(conn, path)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(UnreadableFile):
        declared_rows(path)
    with pytest.raises(UnreadableFile):
        import_file(conn, sql.Identifier("target"), FIELDS, path)
