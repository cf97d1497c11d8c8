"""Tables ⇄ Avro files: record schemas (core ones from the data dictionary), streaming export
and import.

fastavro's traps are closed here: the writer validates every record (`validator=True`: it
would otherwise accept an out-of-range int) and refuses records with extra or missing fields
(`strict=True`: it would otherwise drop unknown keys); times are written timezone-aware so they
cannot shift with the machine's zone. A file cut at a block boundary or a flipped bit can read
back without error, which is why nothing is imported before `store.verify_file` has checked the
file's sha256 and row count. A file that does not decode raises `UnreadableFile`, whatever
fastavro raised (EOFError, zlib.error, UnicodeDecodeError, ValueError, ...).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import fastavro
import psycopg
from psycopg import sql

from loader.tables import CORE_LINEAGE, Column, Table

CODEC = "deflate"  # in every Avro reader (snappy is optional in the spec); smaller than null
AVRO_TYPES = {
    "integer": "int",
    "text": "string",
    "json": "string",  # jsonb travels as its JSON text: any reader can parse it
    "timestamp": {"type": "long", "logicalType": "timestamp-micros"},
}
COPY_TYPES = {"integer": "int4", "text": "text", "json": "text", "timestamp": "int8"}


class UnreadableFile(Exception):
    """An Avro file that does not decode: cut short, written over, or not Avro at all. The
    message is one line: the decoder's error type and text."""


@contextmanager
def decoding() -> Iterator[None]:
    """Turn whatever the decoder raises on a damaged file into UnreadableFile; OSError (the
    file could not be read at all) passes through."""
    try:
        yield
    except OSError:
        raise
    except Exception as error:  # noqa: BLE001 - fastavro raises many types on a damaged file
        kind = type(error)
        package = kind.__module__.split(".")[0]
        name = kind.__qualname__ if package == "builtins" else f"{package}.{kind.__qualname__}"
        text = " ".join(str(error).split()) or "no detail"
        raise UnreadableFile(f"{name}: {text}") from None


@dataclass(frozen=True)
class Field:
    """One column of a backed-up table as an Avro field."""

    name: str
    kind: str  # "integer", "text", "json" or "timestamp"
    doc: str
    nullable: bool = False


def columns_of(table: Table) -> tuple[Column, ...]:
    """Every column a backup holds: the fields, then the core lineage."""
    return (*table.columns, *CORE_LINEAGE)


def fields_of(table: Table) -> tuple[Field, ...]:
    """A core table's columns as Avro fields (none is nullable)."""
    return tuple(Field(c.name, c.kind, c.description) for c in columns_of(table))


def record_schema(name: str, namespace: str, doc: str, fields: tuple[Field, ...]) -> dict:
    """An Avro record schema; a nullable field is a union with null first."""

    def avro_type(field: Field):
        kind = AVRO_TYPES[field.kind]
        return ["null", kind] if field.nullable else kind

    return {
        "type": "record",
        "name": name,
        "namespace": namespace,
        "doc": doc,
        "fields": [{"name": f.name, "type": avro_type(f), "doc": f.doc} for f in fields],
    }


def avro_schema(table: Table) -> dict:
    """The Avro record schema of a core table, derived from the data dictionary."""
    return record_schema(table.name, "csv_migrate.core", table.description, fields_of(table))


def schema_shape(schema: dict) -> tuple:
    """What makes two record schemas the same for our data: full name, field names and types
    (logical types included); docs and the namespace spelling do not count."""
    name = schema["name"]
    if "." not in name and schema.get("namespace"):
        name = f"{schema['namespace']}.{name}"
    fields = tuple((f["name"], json.dumps(f["type"], sort_keys=True)) for f in schema["fields"])
    return name, fields


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def selected(fields: tuple[Field, ...]) -> sql.Composed:
    """The select list that gives each field in the shape its Avro type takes: times as epoch
    microseconds (exact, in UTC), jsonb as its text."""
    expressions = []
    for field in fields:
        name = sql.Identifier(field.name)
        if field.kind == "timestamp":
            name = sql.SQL("(extract(epoch from {}) * 1000000)::bigint").format(name)
        elif field.kind == "json":
            name = sql.SQL("{}::text").format(name)
        expressions.append(name)
    return sql.SQL(", ").join(expressions)


def export_query(
    conn: psycopg.Connection,
    query: sql.Composable,
    fields: tuple[Field, ...],
    schema: dict,
    path: Path,
) -> int:
    """Stream the rows of `query` (its columns: `selected(fields)`) into an Avro file.

    Rows come through `COPY ... TO STDOUT (FORMAT binary)`, parsed in C by psycopg, so memory
    stays flat and no per-row cursor round trip is paid. Returns the row count.
    """
    statement = sql.SQL("copy ({}) to stdout (format binary)").format(query)
    names = [field.name for field in fields]
    count = 0

    def records() -> Iterator[dict]:
        nonlocal count
        with conn.cursor().copy(statement) as copy:
            copy.set_types([COPY_TYPES[field.kind] for field in fields])
            for row in copy.rows():
                count += 1
                yield dict(zip(names, row))

    parsed = fastavro.parse_schema(schema)
    with path.open("wb") as handle:
        fastavro.writer(handle, parsed, records(), codec=CODEC, validator=True, strict=True)
    return count


def export_table(conn: psycopg.Connection, table: Table, path: Path) -> int:
    """Stream `core.<table>` (in the connection's current transaction) into an Avro file, in
    primary key order. Times leave PostgreSQL as epoch microseconds in UTC, the exact value
    `timestamp-micros` stores: nothing can shift them. Returns the row count."""
    fields = fields_of(table)
    query = sql.SQL("select {} from {} order by {}").format(
        selected(fields), sql.Identifier("core", table.name), sql.Identifier(table.primary_key)
    )
    return export_query(conn, query, fields, avro_schema(table), path)


def read_records(path: Path, names: list[str]) -> Iterator[tuple]:
    """The records of an Avro file, as tuples of the named fields; UnreadableFile where the
    file stops decoding."""
    with path.open("rb") as handle, decoding():
        for record in fastavro.reader(handle):
            yield tuple(record[name] for name in names)


def read_rows(path: Path, table: Table) -> Iterator[tuple]:
    """The rows of a core table's backup file, as tuples in column order."""
    return read_records(path, [column.name for column in columns_of(table)])


def writer_schema(path: Path) -> dict:
    """The schema a file was written with (from its header); UnreadableFile if it has none."""
    with path.open("rb") as handle, decoding():
        return fastavro.reader(handle).writer_schema


def count_rows(path: Path) -> int:
    """Decode every record of the file and count them; UnreadableFile on a decode error."""
    with path.open("rb") as handle, decoding():
        return sum(1 for _ in fastavro.reader(handle))
