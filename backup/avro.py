"""Tables ⇄ Avro files: record schemas (core ones from the data dictionary), streaming export
and import.

Rows travel in bulk, never one Python object per row: `COPY ... TO STDOUT (FORMAT binary)` is
parsed into columns (backup/postgres_binary.py), the columns are encoded into Avro block bodies
(backup/avro_binary.py, byte for byte what fastavro's record writer makes), and fastavro's
`Writer` writes the file around them: header, schema, deflate codec, sync markers. A restore
reads the blocks with fastavro's `block_reader` (which checks every sync marker and inflates),
decodes them into columns and sends them as binary COPY rows.

The encoder validates every record as fastavro's `validator=True` would: no NULL where the
schema has none, an "int" within 32 bits (fastavro would otherwise write a wider one), a
"string" that is UTF-8; the fields are the schema's by construction (`strict=True`). Times go
as microseconds since the Unix epoch in UTC, the exact value `timestamp-micros` stores, so
they cannot shift with any zone. A file cut at a block boundary or a flipped bit can read
back without error, which is why nothing is imported before `store.verify_file` has checked
the file's sha256 and `declared_rows` its row count. A file that does not decode raises
`UnreadableFile`, whatever the decoder raised (EOFError, zlib.error, ValueError, ...).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import fastavro
import psycopg
from psycopg import sql

from backup import avro_binary, postgres_binary
from loader.tables import CORE_LINEAGE, Column, Table

CODEC = "deflate"  # in every Avro reader (snappy is optional in the spec); smaller than null
# Level 1 rather than zlib's default 6: half the CPU, and in blocks of 512 records the file is
# as small as level 6 made it in fastavro's default 16 kB blocks (980,000 sample rows:
# 17.4 MB either way; level 6 in 512-record blocks 16.2 MB; pg_dump -Fc 15.3 MB).
COMPRESSION_LEVEL = 1
# Records per Avro block: BLOCK_RECORDS (deflate starts afresh in every block); a batch
# smaller than BATCH_ROWS (a small table, a table's last rows) in SMALL_BATCH_BLOCKS blocks
# of at least SMALL_BLOCK_RECORDS, as decoding walks blocks side by side (avro_binary).
BLOCK_RECORDS = 512
BATCH_ROWS = 64 * BLOCK_RECORDS  # rows parsed and encoded at once: memory stays flat
SMALL_BATCH_BLOCKS, SMALL_BLOCK_RECORDS = 256, 16
WINDOW_BYTES = 16 << 20  # inflated bytes of blocks decoded side by side on import
QUEUED_BATCHES = 2  # encoded batches waiting to be compressed and written
AVRO_TYPES = {
    "integer": "int",
    "text": "string",
    "json": "string",  # jsonb travels as its JSON text: any reader can parse it
    "timestamp": {"type": "long", "logicalType": "timestamp-micros"},
}
# The file header, as the Avro specification defines it.
HEADER_SCHEMA = fastavro.parse_schema(
    {
        "type": "record",
        "name": "org.apache.avro.file.Header",
        "fields": [
            {"name": "magic", "type": {"type": "fixed", "name": "Magic", "size": 4}},
            {"name": "meta", "type": {"type": "map", "values": "bytes"}},
            {"name": "sync", "type": {"type": "fixed", "name": "Sync", "size": 16}},
        ],
    }
)
MAGIC = b"Obj\x01"
LONG_SCHEMA = fastavro.parse_schema("long")


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


@dataclass(frozen=True)
class Written:
    """A file just written: its records, size and sha256 (hashed as it was written)."""

    rows: int
    bytes: int
    sha256: str


class HashingFile:
    """A file opened for writing that hashes and counts what goes into it."""

    def __init__(self, handle):
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()

    def seekable(self) -> bool:
        return False  # never an existing file to append to, for fastavro


@dataclass
class EncodedBlock:
    """A block body for fastavro's `Writer.write_block`, which takes what its
    `block_reader` gives: the record count and the (uncompressed) records."""

    num_records: int
    bytes_: io.BytesIO


class BlockWriter:
    """An Avro file written by fastavro from encoded blocks, compressed and written on a thread
    of its own (zlib and file writes let go of the GIL) while the next rows are encoded."""

    def __init__(self, handle: HashingFile, schema: dict):
        self.writer = fastavro.write.Writer(
            handle, fastavro.parse_schema(schema), codec=CODEC, compression_level=COMPRESSION_LEVEL
        )
        self.waiting: queue.Queue = queue.Queue(maxsize=QUEUED_BATCHES)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.drain, name="avro-writer", daemon=True)
        self.thread.start()

    def drain(self) -> None:
        while (blocks := self.waiting.get()) is not None:
            if self.error is None:
                try:
                    for count, body in blocks:
                        self.writer.write_block(EncodedBlock(count, io.BytesIO(body)))
                except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
                    self.error = error

    def put(self, blocks: list[tuple[int, bytes]]) -> None:
        self.raise_error()
        self.waiting.put(blocks)

    def close(self) -> None:
        """Write what is queued and the last block; raise what the thread met."""
        self.stop()
        self.raise_error()
        self.writer.flush()

    def stop(self) -> None:
        self.waiting.put(None)
        self.thread.join()

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


def block_records(batch: int) -> int:
    """Records per block for a batch of `batch` rows."""
    if batch >= BATCH_ROWS:
        return BLOCK_RECORDS
    return min(BLOCK_RECORDS, max(SMALL_BLOCK_RECORDS, -(-batch // SMALL_BATCH_BLOCKS)))


def shapes(fields: tuple[Field, ...]) -> list[tuple[str, str, bool]]:
    return [(field.name, field.kind, field.nullable) for field in fields]


def export_query(
    conn: psycopg.Connection,
    query: sql.Composable,
    fields: tuple[Field, ...],
    schema: dict,
    path: Path,
) -> Written:
    """Stream the rows of `query` (its columns: `selected(fields)`) into an Avro file.

    Rows come through `COPY ... TO STDOUT (FORMAT binary)` and are encoded a batch at a time
    (refused with ValueError if one does not fit the schema), so memory stays flat whatever the
    table's size and no per-row cursor round trip is paid.
    """
    statement = sql.SQL("copy ({}) to stdout (format binary)").format(query)
    kinds = [field.kind for field in fields]
    rows = 0
    with path.open("wb") as handle:
        hashing = HashingFile(handle)
        writer = BlockWriter(hashing, schema)
        try:
            with conn.cursor().copy(statement) as copy:
                for count, columns in postgres_binary.batches(conn, copy, kinds, BATCH_ROWS):
                    encoded, ends = avro_binary.encode(shapes(fields), columns, count)
                    writer.put(avro_binary.blocks(encoded, ends, block_records(count)))
                    rows += count
        except BaseException:
            writer.stop()  # the file is left unfinished: the caller throws it away
            raise
        writer.close()
    return Written(rows, hashing.size, hashing.digest.hexdigest())


def selected(fields: tuple[Field, ...]) -> sql.Composed:
    """The select list of the fields, each as its column is: postgres_binary reads every kind
    in its own binary form."""
    return sql.SQL(", ").join(sql.Identifier(field.name) for field in fields)


def export_table(conn: psycopg.Connection, table: Table, path: Path) -> Written:
    """Stream `core.<table>` (in the connection's current transaction) into an Avro file, in
    primary key order."""
    fields = fields_of(table)
    query = sql.SQL("select {} from {} order by {}").format(
        selected(fields), sql.Identifier("core", table.name), sql.Identifier(table.primary_key)
    )
    return export_query(conn, query, fields, avro_schema(table), path)


def read_rows(path: Path, fields: tuple[Field, ...]) -> Iterator[tuple[int, bytes]]:
    """The records of an Avro file as binary COPY rows of the fields: (rows, their bytes),
    a slice at a time. UnreadableFile where the file stops decoding."""
    kinds = [field.kind for field in fields]
    with path.open("rb") as handle, decoding():
        data, sizes, counts = bytearray(), [], []
        for block in fastavro.block_reader(handle):
            body = block.bytes_.getbuffer()
            data += body
            sizes.append(len(body))
            counts.append(block.num_records)
            del body  # the block's buffer may go
            if len(data) >= WINDOW_BYTES:
                yield from window(fields, kinds, data, sizes, counts)
                data, sizes, counts = bytearray(), [], []
        if counts:
            yield from window(fields, kinds, data, sizes, counts)


def window(
    fields: tuple[Field, ...],
    kinds: list[str],
    data: bytearray,
    sizes: list[int],
    counts: list[int],
) -> Iterator[tuple[int, bytes]]:
    """Decode a window of blocks side by side, then make their rows a slice at a time."""
    columns, rows = avro_binary.decode(shapes(fields), data, sizes, counts)
    for first in range(0, rows, BATCH_ROWS):
        last = min(first + BATCH_ROWS, rows)
        part = [values.slice(first, last) for values in columns]
        yield last - first, postgres_binary.rows(kinds, part, last - first).tobytes()


def import_file(
    conn: psycopg.Connection, target: sql.Composable, fields: tuple[Field, ...], path: Path
) -> int:
    """COPY the records of an Avro file into `target` (a table with the fields as columns, of
    their kinds' types); return how many. UnreadableFile if the file does not decode, the
    COPY's error if PostgreSQL refuses a value; either way the COPY is cancelled."""
    statement = sql.SQL("copy {} ({}) from stdin (format binary)").format(target, selected(fields))
    rows = 0
    cursor = conn.cursor()
    with cursor.copy(statement, writer=postgres_binary.QueuedWriter(cursor)) as copy:
        copy.write(postgres_binary.SIGNATURE)
        for count, data in read_rows(path, fields):
            copy.write(data)
            rows += count
        copy.write(postgres_binary.TRAILER)
    return rows


def declared_rows(path: Path) -> int:
    """The records the file's blocks say they hold, read from the block headers without
    inflating or decoding them (each block's sync marker checked); UnreadableFile if the file
    is not a whole Avro file."""
    with path.open("rb") as handle, decoding():
        end = os.fstat(handle.fileno()).st_size
        header = fastavro.schemaless_reader(handle, HEADER_SCHEMA)
        if header["magic"] != MAGIC:
            raise ValueError("not an Avro object container file")
        rows = 0
        while handle.tell() < end:
            count = fastavro.schemaless_reader(handle, LONG_SCHEMA)
            size = fastavro.schemaless_reader(handle, LONG_SCHEMA)
            if count < 0 or size < 0 or handle.tell() + size + len(header["sync"]) > end:
                raise EOFError("a block runs past the end of the file")
            handle.seek(size, os.SEEK_CUR)
            if handle.read(len(header["sync"])) != header["sync"]:
                raise ValueError("a block is not followed by the file's sync marker")
            rows += count
        return rows


def writer_schema(path: Path) -> dict:
    """The schema a file was written with (from its header); UnreadableFile if it has none."""
    with path.open("rb") as handle, decoding():
        return fastavro.reader(handle).writer_schema


def count_rows(path: Path) -> int:
    """Decode every record of the file and count them; UnreadableFile on a decode error."""
    with path.open("rb") as handle, decoding():
        return sum(1 for _ in fastavro.reader(handle))
