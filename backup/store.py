"""The backup folder: `<dir>/<UTC stamp>/<table>.avro`, the ledger of those tables
(`audit.<name>.avro`, see backup/ledger.py) and `manifest.json` per backup.

A backup is written into a hidden `.partial` folder and renamed into place when complete, so a
listed backup is always whole. All its files come from one REPEATABLE READ snapshot, so the
ledger in a backup agrees with the core rows beside it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import psycopg

from backup.avro import (
    CODEC,
    avro_schema,
    count_rows,
    export_table,
    file_sha256,
    schema_shape,
    writer_schema,
)
from backup.ledger import LEDGER, LEDGER_BY_NAME, AuditTable, export_audit
from loader.db.connect import connect, redact
from loader.db.locks import table_lock
from loader.db.schema import ensure_schemas
from loader.tables import TABLES, Table, table_named

MANIFEST = "manifest.json"
FORMAT = 2  # 2: the manifest lists the ledger files ("ledger"); 1 (earlier release): it has none
FORMATS = (1, 2)


class BackupError(RuntimeError):
    """A backup is missing, damaged or does not fit; the message is one line for the user."""


@dataclass(frozen=True)
class BackupInfo:
    """One listed backup."""

    stamp: str
    path: Path
    manifest: dict

    @property
    def tables(self) -> dict:
        return self.manifest["tables"]

    @property
    def ledger(self) -> dict | None:
        """The ledger files (audit table name → entry); None for a backup made before them."""
        return self.manifest.get("ledger")

    @property
    def bytes(self) -> int:
        entries = [*self.tables.values(), *(self.ledger or {}).values()]
        return sum(entry["bytes"] for entry in entries)


def lock_tables(conn: psycopg.Connection, tables: list[Table], exclusive: bool = False) -> None:
    """The tables' locks for this transaction, in name order (loader.db.locks): shared for a
    backup, which only reads, as for settling; exclusive for a restore, which waits for every
    settlement into the table to end and holds new ones off until it commits."""
    for name in sorted({table.name for table in tables}):
        table_lock(conn, name, exclusive=exclusive)


def new_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")[:-4] + "Z"


def file_entry(path: Path, rows: int, schema: dict) -> dict:
    """A file's manifest entry: what verify and restore check it against."""
    return {
        "file": path.name,
        "rows": rows,
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "schema": schema,
    }


def create_backup(url: str, folder: Path, tables: list[Table] | None = None) -> BackupInfo:
    """Back up `tables` (default: all of core) and their ledger from one consistent snapshot."""
    tables = tables or list(TABLES)
    names = [table.name for table in tables]
    stamp = new_stamp()
    partial = folder / f".{stamp}.partial"
    partial.mkdir(parents=True)
    try:
        entries, ledger = {}, {}
        with connect(url, autocommit=True) as setup:
            ensure_schemas(setup)  # the audit tables as this version declares them
        with connect(url) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            with conn.transaction():
                lock_tables(conn, tables)
                conn.execute("set local timezone = 'UTC'")
                snapshot_at = conn.execute("select now()").fetchone()[0]
                for table in tables:
                    path = partial / f"{table.name}.avro"
                    rows = export_table(conn, table, path)
                    entries[table.name] = file_entry(path, rows, avro_schema(table))
                for audit in LEDGER:
                    path = partial / audit.file_name
                    rows = export_audit(conn, audit, names, path)
                    ledger[audit.name] = file_entry(path, rows, audit.schema)
        manifest = {
            "format": FORMAT,
            "tool": "csv-migrate",
            "version": version("csv-migrate"),
            "stamp": stamp,
            "database": redact(url),
            "snapshot_at": snapshot_at.isoformat(),
            "created_at": datetime.now(UTC).isoformat(),
            "codec": CODEC,
            "tables": entries,
            "ledger": ledger,
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
        final = folder / stamp
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return BackupInfo(stamp, final, manifest)


def list_backups(folder: Path) -> list[BackupInfo]:
    """Complete backups, oldest first."""
    found = []
    for path in sorted(folder.glob("*/" + MANIFEST)) if folder.is_dir() else []:
        if path.parent.name.startswith("."):
            continue
        try:
            found.append(BackupInfo(path.parent.name, path.parent, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue  # listed by verify, which names what is wrong
    return found


def find_backup(folder: Path, stamp: str | None) -> BackupInfo:
    """The backup called `stamp`, or the newest one."""
    backups = list_backups(folder)
    if stamp is None:
        if not backups:
            raise BackupError(f"no backups in {folder}")
        return backups[-1]
    manifest = folder / stamp / MANIFEST
    if not manifest.is_file():
        raise BackupError(f"no backup {stamp} in {folder}")
    try:
        return BackupInfo(stamp, folder / stamp, json.loads(manifest.read_text()))
    except ValueError as error:
        raise BackupError(f"{manifest}: not a readable manifest ({error})") from None


def _verify_entry(backup: BackupInfo, entry: dict, expected: dict, what: str) -> Path:
    """Check a file's sha256, and its schema against the manifest and `expected` (this
    version's), without decoding its rows; return its path."""
    path = backup.path / entry["file"]
    where = f"backup {backup.stamp}, {entry['file']}"
    if not path.is_file():
        raise BackupError(f"{where}: file missing")
    if file_sha256(path) != entry["sha256"]:
        raise BackupError(f"{where}: sha256 does not match the manifest (damaged or changed)")
    shape = schema_shape(expected)
    if schema_shape(entry["schema"]) != shape:
        raise BackupError(f"{where}: made for another schema of {what} than this version's")
    try:
        if schema_shape(writer_schema(path)) != shape:
            raise BackupError(f"{where}: the file's schema differs from its manifest")
    except BackupError:
        raise
    except Exception as error:  # noqa: BLE001 - fastavro raises many types on a damaged file
        raise BackupError(f"{where}: unreadable ({type(error).__name__}: {error})") from None
    return path


def verify_file(backup: BackupInfo, table_name: str) -> Path:
    """Check a core table's file (sha256 and schema, rows not decoded); return its path."""
    entry = backup.tables.get(table_name)
    if entry is None:
        raise BackupError(f"backup {backup.stamp} holds no table {table_name}")
    return _verify_entry(backup, entry, avro_schema(table_named(table_name)), table_name)


def verify_ledger_file(backup: BackupInfo, audit: AuditTable) -> Path:
    """Check a ledger file of a backup that has them (sha256 and schema); return its path."""
    entry = (backup.ledger or {}).get(audit.name)
    if entry is None:
        raise BackupError(f"backup {backup.stamp}: the manifest lists no audit.{audit.name} file")
    return _verify_entry(backup, entry, audit.schema, f"audit.{audit.name}")


def _count_matches(backup: BackupInfo, path: Path, entry: dict) -> int:
    where = f"backup {backup.stamp}, {path.name}"
    try:
        rows = count_rows(path)
    except Exception as error:  # noqa: BLE001 - fastavro raises many types on a damaged file
        raise BackupError(f"{where}: unreadable ({type(error).__name__}: {error})") from None
    if rows != entry["rows"]:
        raise BackupError(f"{where}: {rows} rows, the manifest says {entry['rows']}")
    return rows


def verify_table(backup: BackupInfo, table_name: str) -> int:
    """verify_file, then decode every record and match the manifest's row count."""
    path = verify_file(backup, table_name)
    return _count_matches(backup, path, backup.tables[table_name])


def verify_backup(backup: BackupInfo) -> dict[str, int]:
    """Check every file of a backup, core and ledger; raise BackupError on the first problem.
    Returns rows per file: core tables by name, ledger files as `audit.<name>`."""
    if backup.manifest.get("format") not in FORMATS:
        raise BackupError(f"backup {backup.stamp}: unknown manifest format")
    checked = {name: verify_table(backup, name) for name in backup.tables}
    for name, entry in (backup.ledger or {}).items():
        audit = LEDGER_BY_NAME.get(name)
        if audit is None:
            raise BackupError(f"backup {backup.stamp}: unknown ledger file audit.{name}")
        path = verify_ledger_file(backup, audit)
        checked[f"audit.{name}"] = _count_matches(backup, path, entry)
    if backup.ledger is not None and set(backup.ledger) != set(LEDGER_BY_NAME):
        missing = sorted(set(LEDGER_BY_NAME) - set(backup.ledger))
        raise BackupError(f"backup {backup.stamp}: ledger files missing: {', '.join(missing)}")
    return checked


def prune(folder: Path, keep: int) -> list[str]:
    """Delete all but the newest `keep` backups; return the stamps deleted."""
    backups = list_backups(folder)
    doomed = backups[:-keep] if keep > 0 else backups
    for backup in doomed:
        shutil.rmtree(backup.path)
    return [backup.stamp for backup in doomed]
