"""Core tables ⇄ Avro files: schemas from the data dictionary, streaming export and import.

fastavro's traps are closed here: the writer validates every record (`validator=True`: it
would otherwise accept an out-of-range int) and refuses records with extra or missing fields
(`strict=True`: it would otherwise drop unknown keys); times are written timezone-aware so they
cannot shift with the machine's zone. A file cut at a block boundary or a flipped bit can read
back without error, which is why nothing is imported before `manifest.verify` has checked the
file's sha256 and row count.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import fastavro
import psycopg
from psycopg import sql

from loader.tables import CORE_LINEAGE, Column, Table

CODEC = "deflate"  # in every Avro reader (snappy is optional in the spec); smaller than null
AVRO_TYPES = {
    "integer": "int",
    "text": "string",
    "timestamp": {"type": "long", "logicalType": "timestamp-micros"},
}
COPY_TYPES = {"integer": "int4", "text": "text", "timestamp": "int8"}


def columns_of(table: Table) -> tuple[Column, ...]:
    """Every column a backup holds: the fields, then the core lineage."""
    return (*table.columns, *CORE_LINEAGE)


def avro_schema(table: Table) -> dict:
    """The Avro record schema of a core table, derived from the data dictionary."""
    return {
        "type": "record",
        "name": table.name,
        "namespace": "csv_migrate.core",
        "doc": table.description,
        "fields": [
            {"name": column.name, "type": AVRO_TYPES[column.kind], "doc": column.description}
            for column in columns_of(table)
        ],
    }


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


def export_table(conn: psycopg.Connection, table: Table, path: Path) -> int:
    """Stream `core.<table>` (in the connection's current transaction) into an Avro file.

    Rows come through `COPY ... TO STDOUT (FORMAT binary)`, parsed in C by psycopg, so memory
    stays flat and no per-row cursor round trip is paid. Times leave PostgreSQL as epoch
    microseconds in UTC, the exact value `timestamp-micros` stores: nothing can shift them.
    Returns the row count.
    """
    columns = columns_of(table)
    selected = [
        sql.SQL("(extract(epoch from {0}) * 1000000)::bigint").format(sql.Identifier(c.name))
        if c.kind == "timestamp"
        else sql.Identifier(c.name)
        for c in columns
    ]
    query = sql.SQL("copy (select {} from {} order by {}) to stdout (format binary)").format(
        sql.SQL(", ").join(selected),
        sql.Identifier("core", table.name),
        sql.Identifier(table.primary_key),
    )
    names = [column.name for column in columns]
    count = 0

    def records() -> Iterator[dict]:
        nonlocal count
        with conn.cursor().copy(query) as copy:
            copy.set_types([COPY_TYPES[column.kind] for column in columns])
            for row in copy.rows():
                count += 1
                yield dict(zip(names, row))

    parsed = fastavro.parse_schema(avro_schema(table))
    with path.open("wb") as handle:
        fastavro.writer(handle, parsed, records(), codec=CODEC, validator=True, strict=True)
    return count


def read_rows(path: Path, table: Table) -> Iterator[tuple]:
    """The rows of a backup file, as tuples in column order."""
    names = [column.name for column in columns_of(table)]
    with path.open("rb") as handle:
        for record in fastavro.reader(handle):
            yield tuple(record[name] for name in names)


def writer_schema(path: Path) -> dict:
    """The schema a file was written with (from its header)."""
    with path.open("rb") as handle:
        return fastavro.reader(handle).writer_schema


def count_rows(path: Path) -> int:
    """Decode every record of the file and count them (a decode error raises)."""
    with path.open("rb") as handle:
        return sum(1 for _ in fastavro.reader(handle))
