"""The backup folder: `<dir>/<UTC stamp>/<table>.avro`, the ledger of those tables
(`audit.<name>.avro`, see backup/ledger.py) and `manifest.json` per backup.

A backup is written into a hidden `.partial` folder and renamed into place when complete, so a
listed backup is always whole. All its files come from one REPEATABLE READ snapshot, so the
ledger in a backup agrees with the core rows beside it.

A backup is named by its stamp alone, never by a path: a name that leads out of the folder or
into a hidden one is refused. A backup whose manifest cannot be read or lacks what this version
needs is listed with its problem and refused, never skipped for an older one.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import psycopg

from backup.avro import (
    CODEC,
    UnreadableFile,
    Written,
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
from loader.tables import TABLES, TABLES_BY_NAME, Table, table_named

MANIFEST = "manifest.json"
FORMAT = 2  # 2: the manifest lists the ledger files ("ledger"); 1 (earlier release): it has none
FORMATS = (1, 2)
STAMP = re.compile(r"\d{8}T\d{6}(\.\d+)?Z")  # what new_stamp() makes
ENTRY_KEYS = {"file": str, "rows": int, "bytes": int, "sha256": str, "schema": dict}


class BackupError(RuntimeError):
    """A backup is missing, damaged or does not fit; the message is one line for the user."""


@dataclass(frozen=True)
class BackupInfo:
    """One listed backup. `problem` says why its manifest cannot be used (then `manifest` may be
    anything); None for a sound one."""

    stamp: str
    path: Path
    manifest: dict
    problem: str | None = None

    @property
    def tables(self) -> dict:
        return self.manifest["tables"]

    @property
    def ledger(self) -> dict | None:
        """The ledger files (audit table name → entry); None for a backup made before them."""
        return None if self.manifest.get("format") == 1 else self.manifest.get("ledger")

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


def file_entry(path: Path, written: Written, schema: dict) -> dict:
    """A file's manifest entry: what verify and restore check it against (its sha256 taken
    as it was written)."""
    return {
        "file": path.name,
        "rows": written.rows,
        "bytes": written.bytes,
        "sha256": written.sha256,
        "schema": schema,
    }


def create_backup(
    url: str, folder: Path, tables: list[Table] | None = None, stamp: str | None = None
) -> BackupInfo:
    """Back up `tables` (default: all of core) and their ledger from one consistent snapshot,
    as `stamp` (default: now's)."""
    tables = tables or list(TABLES)
    names = [table.name for table in tables]
    stamp = stamp or new_stamp()
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
                    written = export_table(conn, table, path)
                    entries[table.name] = file_entry(path, written, avro_schema(table))
                for audit in LEDGER:
                    path = partial / audit.file_name
                    written = export_audit(conn, audit, names, path)
                    ledger[audit.name] = file_entry(path, written, audit.schema)
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


def is_file_name(name: object) -> bool:
    """A plain name of something directly inside a folder: no path, not `.` or `..`."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\0" not in name
    )


def entry_problem(where: str, entry: object) -> str | None:
    """What makes a manifest's file entry unusable, or None."""
    if not isinstance(entry, dict):
        return f"{where} is not an object"
    for key, kind in ENTRY_KEYS.items():
        value = entry.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{where} lacks {key!r}" if value is None else f"{where}: {key!r} is malformed"
    if not is_file_name(entry["file"]):
        return f"{where}: file {entry['file']!r} is not a name in the backup's folder"
    try:
        schema_shape(entry["schema"])
    except (KeyError, TypeError, AttributeError):
        return f"{where}: its schema is malformed"
    return None


def manifest_problem(manifest: object) -> str | None:
    """What makes a parsed manifest unusable by this version, or None: an unknown format, a
    missing or malformed key."""
    if not isinstance(manifest, dict):
        return f"{MANIFEST} is not a JSON object"
    if "format" not in manifest:
        return f"{MANIFEST} lacks 'format'"
    if manifest["format"] not in FORMATS or isinstance(manifest["format"], bool):
        known = " and ".join(map(str, FORMATS))
        return (
            f"{MANIFEST} has format {manifest['format']!r}, unknown to this version "
            f"(it reads {known})"
        )
    try:
        datetime.fromisoformat(manifest["snapshot_at"])
    except KeyError:
        return f"{MANIFEST} lacks 'snapshot_at'"
    except (TypeError, ValueError):
        return f"{MANIFEST}: 'snapshot_at' is not a time"
    groups = {"tables": manifest.get("tables")}
    if manifest["format"] >= 2:
        groups["ledger"] = manifest.get("ledger")
    for group, entries in groups.items():
        if not isinstance(entries, dict) or not entries:
            return f"{MANIFEST} lacks {group!r}"
        for name, entry in entries.items():
            problem = entry_problem(f"{MANIFEST}, {group}.{name}", entry)
            if problem:
                return problem
    return None


def read_backup(path: Path) -> BackupInfo:
    """The backup in folder `path`, with the problem of its manifest if it has one."""
    manifest = path / MANIFEST
    try:
        parsed = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return BackupInfo(path.name, path, {}, f"{MANIFEST} is missing")
    except OSError as error:
        return BackupInfo(path.name, path, {}, f"cannot read {MANIFEST} ({error.strerror})")
    except ValueError as error:
        detail = " ".join(str(error).split())
        return BackupInfo(path.name, path, {}, f"{MANIFEST} is not valid JSON ({detail})")
    problem = manifest_problem(parsed)
    return BackupInfo(path.name, path, parsed if isinstance(parsed, dict) else {}, problem)


def list_backups(folder: Path) -> list[BackupInfo]:
    """Every backup, oldest first, the unusable ones with their `problem`: each folder with a
    manifest, or named like a stamp; hidden ones (`.partial`, being written) are not backups."""
    try:
        paths = sorted(folder.iterdir()) if folder.is_dir() else []
    except OSError as error:
        raise BackupError(f"cannot read the backup folder {folder} ({error.strerror})") from None
    found = []
    for path in paths:
        if path.name.startswith(".") or not path.is_dir():
            continue
        if (path / MANIFEST).exists() or STAMP.fullmatch(path.name):
            found.append(read_backup(path))
    return found


def check_stamp(stamp: str) -> None:
    """Refuse a `stamp` that is not the name of a backup directly inside the folder: a path
    (`../..`, `a/b`, an absolute one) or a hidden folder (`.<stamp>.partial`)."""
    if not is_file_name(stamp) or stamp.startswith("."):
        raise BackupError(
            f"refused: {stamp!r} is not a backup's name (a stamp as `list` shows it, "
            "not a path or a hidden folder)"
        )


def find_backup(folder: Path, stamp: str | None) -> BackupInfo:
    """The backup called `stamp`, or the newest one; BackupError if it cannot be used (an
    unusable newest backup is refused, not passed over for an older one)."""
    if stamp is None:
        backups = list_backups(folder)
        if not backups:
            raise BackupError(f"no backups in {folder}")
        newest = backups[-1]
        if newest.problem:
            raise BackupError(
                f"the newest backup, {newest.stamp}, cannot be used: {newest.problem}; "
                "refused rather than passed over for an older one (name the backup to use, "
                "see `list`)"
            )
        return newest
    check_stamp(stamp)
    path = folder / stamp
    if not path.is_dir():
        raise BackupError(f"no backup {stamp} in {folder}")
    backup = read_backup(path)
    if backup.problem:
        raise BackupError(f"backup {stamp} cannot be used: {backup.problem}")
    return backup


def _verify_entry(backup: BackupInfo, entry: dict, expected: dict, what: str) -> Path:
    """Check a file's sha256, and its schema against the manifest and `expected` (this
    version's), without decoding its rows; return its path."""
    path = backup.path / entry["file"]
    where = f"backup {backup.stamp}, {entry['file']}"
    if not path.is_file():
        raise BackupError(f"{where}: file missing")
    shape = schema_shape(expected)
    try:
        if file_sha256(path) != entry["sha256"]:
            raise BackupError(f"{where}: sha256 does not match the manifest (damaged or changed)")
        if schema_shape(entry["schema"]) != shape:
            raise BackupError(f"{where}: made for another schema of {what} than this version's")
        written = writer_schema(path)
    except OSError as error:
        raise BackupError(f"{where}: cannot read it ({error.strerror})") from None
    except UnreadableFile as error:
        raise BackupError(f"{where}: damaged, it does not decode ({error})") from None
    try:
        same = schema_shape(written) == shape
    except (KeyError, TypeError, AttributeError):
        same = False
    if not same:
        raise BackupError(f"{where}: the file's schema differs from its manifest")
    return path


def verify_file(backup: BackupInfo, table_name: str) -> Path:
    """Check a core table's file (sha256 and schema, rows not decoded); return its path."""
    entry = backup.tables.get(table_name)
    if entry is None:
        raise BackupError(f"backup {backup.stamp} holds no table {table_name}")
    if table_name not in TABLES_BY_NAME:
        raise BackupError(
            f"backup {backup.stamp} holds a table this version does not know: {table_name}"
        )
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
    except OSError as error:
        raise BackupError(f"{where}: cannot read it ({error.strerror})") from None
    except UnreadableFile as error:
        raise BackupError(f"{where}: damaged, it does not decode ({error})") from None
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
    problem = backup.problem or manifest_problem(backup.manifest)
    if problem:
        raise BackupError(f"backup {backup.stamp} cannot be used: {problem}")
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
    """Delete all but the newest `keep` sound backups; return the stamps deleted.

    `keep` must be at least 1, so the newest backup always stays (ValueError otherwise).
    Backups whose manifest cannot be read are neither counted nor deleted: `list` shows them
    for someone to look at.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"prune must keep at least 1 backup, not {keep!r}")
    backups = [backup for backup in list_backups(folder) if backup.problem is None]
    doomed = backups[:-keep]
    for backup in doomed:
        shutil.rmtree(backup.path)
    return [backup.stamp for backup in doomed]
