"""The backup folder: `<dir>/<UTC stamp>/<table>.avro` plus `manifest.json` per backup.

A backup is written into a hidden `.partial` folder and renamed into place when complete, so a
listed backup is always whole. All its tables come from one REPEATABLE READ snapshot.
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
from loader.db.connect import connect, redact
from loader.tables import TABLES, Table, table_named

MANIFEST = "manifest.json"
FORMAT = 1


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
    def bytes(self) -> int:
        return sum(entry["bytes"] for entry in self.tables.values())


def lock_tables(conn: psycopg.Connection, tables: list[Table]) -> None:
    """Transaction-scoped advisory locks: a backup and a restore of a table never overlap."""
    for table in sorted(tables, key=lambda t: t.name):
        conn.execute("select pg_advisory_xact_lock(hashtext(%s))", (f"csv-migrate:{table.name}",))


def new_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")[:-4] + "Z"


def create_backup(url: str, folder: Path, tables: list[Table] | None = None) -> BackupInfo:
    """Back up `tables` (default: all of core) from one consistent snapshot."""
    tables = tables or list(TABLES)
    stamp = new_stamp()
    partial = folder / f".{stamp}.partial"
    partial.mkdir(parents=True)
    try:
        entries = {}
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
                    entries[table.name] = {
                        "file": path.name,
                        "rows": rows,
                        "bytes": path.stat().st_size,
                        "sha256": file_sha256(path),
                        "schema": avro_schema(table),
                    }
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


def verify_file(backup: BackupInfo, table_name: str) -> Path:
    """Check a file's sha256, and its schema against the manifest and this version's dictionary,
    without decoding its rows; return its path."""
    entry = backup.tables.get(table_name)
    if entry is None:
        raise BackupError(f"backup {backup.stamp} holds no table {table_name}")
    path = backup.path / entry["file"]
    where = f"backup {backup.stamp}, {entry['file']}"
    if not path.is_file():
        raise BackupError(f"{where}: file missing")
    if file_sha256(path) != entry["sha256"]:
        raise BackupError(f"{where}: sha256 does not match the manifest (damaged or changed)")
    expected = schema_shape(avro_schema(table_named(table_name)))
    if schema_shape(entry["schema"]) != expected:
        raise BackupError(f"{where}: made for another schema of {table_name} than this version's")
    try:
        if schema_shape(writer_schema(path)) != expected:
            raise BackupError(f"{where}: the file's schema differs from its manifest")
    except BackupError:
        raise
    except Exception as error:  # noqa: BLE001 - fastavro raises many types on a damaged file
        raise BackupError(f"{where}: unreadable ({type(error).__name__}: {error})") from None
    return path


def verify_table(backup: BackupInfo, table_name: str) -> int:
    """verify_file, then decode every record and match the manifest's row count."""
    path = verify_file(backup, table_name)
    where = f"backup {backup.stamp}, {path.name}"
    entry = backup.tables[table_name]
    try:
        rows = count_rows(path)
    except Exception as error:  # noqa: BLE001 - fastavro raises many types on a damaged file
        raise BackupError(f"{where}: unreadable ({type(error).__name__}: {error})") from None
    if rows != entry["rows"]:
        raise BackupError(f"{where}: {rows} rows, the manifest says {entry['rows']}")
    return rows


def verify_backup(backup: BackupInfo) -> dict[str, int]:
    """Check every file of a backup; raise BackupError on the first problem."""
    if backup.manifest.get("format") != FORMAT:
        raise BackupError(f"backup {backup.stamp}: unknown manifest format")
    return {name: verify_table(backup, name) for name in backup.tables}


def prune(folder: Path, keep: int) -> list[str]:
    """Delete all but the newest `keep` backups; return the stamps deleted."""
    backups = list_backups(folder)
    doomed = backups[:-keep] if keep > 0 else backups
    for backup in doomed:
        shutil.rmtree(backup.path)
    return [backup.stamp for backup in doomed]
