"""Restore core tables and their ledger from a backup, atomically: all of it in one
transaction, or nothing.

Before anything is imported, every file involved is checked: sha256 and schema against the
manifest (store.verify_file) and the row count its blocks declare. Then, in the one
transaction that holds the tables' exclusive locks, each core table is replaced as
pg_restore fills one: its key and the foreign keys that touch it are set aside, its rows
deleted (never TRUNCATE, which other sessions would see before the commit), the backup's
rows copied in, the key rebuilt in one sort and the foreign keys re-validated in one pass
each. A parent's rows still referenced by child rows block the restore, named in the
message, unless the dependents are restored from the same backup too. In the same
transaction the tables' ledger goes back to the backup's (backup/ledger.py), so the next run
redoes the batches whose rows the restore took away instead of skipping them as settled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg import sql

from backup import ledger
from backup.avro import UnreadableFile, declared_rows, fields_of, import_file
from backup.store import (
    BackupError,
    BackupInfo,
    find_backup,
    lock_tables,
    verify_file,
    verify_ledger_file,
)
from loader.db.connect import connect, reason_of
from loader.db.schema import ensure_schemas
from loader.tables import Table, dependents_of, table_named

BLOCKING_SHOWN = 5


@dataclass(frozen=True)
class Restored:
    """What a restore did to one table and its ledger.

    `batches` and `rejected_rows`: the ledger rows the table holds now, as in the backup.
    `redo`: for a backup without ledger files, None otherwise: how many batches settled since
    the backup were taken out of the ledger for the next run to redo.
    """

    table: str
    rows: int
    deleted: int
    stamp: str = ""
    batches: int = 0
    rejected_rows: int = 0
    redo: int | None = None


@dataclass(frozen=True)
class Constraint:
    """A constraint set aside while a table is replaced, and how to put it back."""

    schema: str
    table: str
    name: str
    definition: str
    kind: str  # "p" primary key, "u" unique, "f" foreign key

    def drop(self, conn: psycopg.Connection) -> None:
        conn.execute(
            sql.SQL("alter table {} drop constraint {}").format(
                sql.Identifier(self.schema, self.table), sql.Identifier(self.name)
            )
        )

    def add(self, conn: psycopg.Connection) -> None:
        conn.execute(
            sql.SQL("alter table {} add constraint {} {}").format(
                sql.Identifier(self.schema, self.table),
                sql.Identifier(self.name),
                sql.SQL(self.definition),
            )
        )


def set_aside(conn: psycopg.Connection, tables: list[Table]) -> list[Constraint]:
    """Drop the tables' keys and every foreign key from or to them; return them, keys first,
    in the order to add them back.

    Re-adding builds each key in one sort and validates each foreign key in one set-based
    pass instead of a trigger or an index insertion per row (as pg_restore does); it all
    happens inside the restore's transaction, so nothing is ever committed without them.
    """
    names = [f"core.{table.name}" for table in tables]
    found = conn.execute(
        "select n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid), k.contype "
        "from pg_constraint k join pg_class c on c.oid = k.conrelid "
        "join pg_namespace n on n.oid = c.relnamespace "
        "where (k.contype = 'f' and (k.conrelid = any(%(tables)s::regclass[]) "
        "or k.confrelid = any(%(tables)s::regclass[]))) "
        "or (k.contype in ('p', 'u') and k.conrelid = any(%(tables)s::regclass[])) "
        "order by k.contype = 'f', n.nspname, c.relname, k.conname",
        {"tables": names},
    ).fetchall()
    constraints = [Constraint(*row) for row in found]
    for constraint in reversed(constraints):  # foreign keys before the keys they rest on
        constraint.drop(conn)
    return constraints


def _old_keys(table: Table) -> sql.Identifier:
    return sql.Identifier(f"restore_old_{table.name}")


def empty(conn: psycopg.Connection, table: Table) -> None:
    """Delete every row of core.<table>, keeping their keys to count what the restore
    removes."""
    names = {
        "keys": _old_keys(table),
        "target": sql.Identifier("core", table.name),
        "key": sql.Identifier(table.primary_key),
    }
    conn.execute(
        sql.SQL(
            "create temp table {keys} on commit drop as select {key} from {target} limit 0"
        ).format(**names)
    )
    conn.execute(
        sql.SQL(
            "with gone as (delete from {target} returning {key}) "
            "insert into {keys} select {key} from gone"
        ).format(**names)
    )


def removed(conn: psycopg.Connection, table: Table) -> int:
    """How many of the rows the table held before the restore the backup does not hold."""
    return conn.execute(
        sql.SQL(
            "select count(*) from {keys} o where not exists "
            "(select 1 from {target} t where t.{key} = o.{key})"
        ).format(
            keys=_old_keys(table),
            target=sql.Identifier("core", table.name),
            key=sql.Identifier(table.primary_key),
        )
    ).fetchone()[0]


def blocking_rows(conn: psycopg.Connection, parent: Table, child: Table) -> list[tuple]:
    """Child rows whose parent id the restored `parent` does not hold."""
    foreign_key = next(c for c in child.foreign_keys if c.references == parent.name)
    query = sql.SQL(
        "select c.id, c.{fk} from {child} c where not exists "
        "(select 1 from {parent} p where p.id = c.{fk}) order by c.id"
    ).format(
        fk=sql.Identifier(foreign_key.name),
        child=sql.Identifier("core", child.name),
        parent=sql.Identifier("core", parent.name),
    )
    return conn.execute(query).fetchall()


def refuse_if_blocked(conn: psycopg.Connection, table: Table, stamp: str) -> None:
    """A parent restored alone must not orphan child rows: name the ones it would."""
    for child in dependents_of(table):
        blocking = blocking_rows(conn, table, child)
        if blocking:
            shown = ", ".join(
                f"{child.name}.id {row[0]} → {row[1]}" for row in blocking[:BLOCKING_SHOWN]
            )
            more = (
                f" and {len(blocking) - BLOCKING_SHOWN} more"
                if len(blocking) > BLOCKING_SHOWN
                else ""
            )
            raise BackupError(
                f"refused: {len(blocking)} {child.name} rows reference {table.name} ids missing "
                f"from backup {stamp} ({shown}{more}); restore them too with --with-dependents"
            )


def stage_file(backup: BackupInfo, entry: dict, staging: Callable[[Path], int]) -> None:
    """Copy one file in with `staging` (path → records read) and check its row count.

    A file whose sha256 matches (its manifest checksum rewritten to match) but which does not
    decode, or whose values PostgreSQL refuses, ends in one BackupError naming it: the COPY is
    cancelled and the restore's transaction rolls back, so nothing changes.
    """
    where = f"backup {backup.stamp}, {entry['file']}"
    try:
        staged = staging(backup.path / entry["file"])
    except UnreadableFile as error:
        raise BackupError(
            f"{where}: damaged, it does not decode ({error}); nothing changed"
        ) from None
    except OSError as error:
        raise BackupError(f"{where}: cannot read it ({error.strerror}); nothing changed") from None
    except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as error:
        raise BackupError(
            f"{where}: PostgreSQL refuses its rows ({reason_of(error)}); nothing changed"
        ) from None
    if staged != entry["rows"]:
        raise BackupError(
            f"{where}: {staged} rows, the manifest says {entry['rows']}; nothing changed"
        )


def files_of(backup: BackupInfo, tables: list[Table]) -> list[dict]:
    """The manifest entries of every file a restore of `tables` reads."""
    entries = [backup.tables[each.name] for each in tables]
    if backup.ledger is not None:
        entries += [backup.ledger[audit.name] for audit in ledger.LEDGER]
    return entries


def check_row_counts(backup: BackupInfo, tables: list[Table]) -> None:
    """Match each file's row count, as its blocks declare it, with the manifest's, before
    anything is imported; decoding them later checks each block holds what it declares."""
    for entry in files_of(backup, tables):
        stage_file(backup, entry, declared_rows)


def stage_ledger(conn: psycopg.Connection, backup: BackupInfo, tables: list[Table]) -> None:
    """Copy the backup's ledger files into temporary tables (backup/ledger.py)."""
    if backup.ledger is not None:
        names = [each.name for each in tables]
        for audit in ledger.LEDGER:
            stage_file(
                backup,
                backup.ledger[audit.name],
                lambda path, audit=audit: ledger.stage(conn, audit, path, names),
            )


def swap_core(
    conn: psycopg.Connection, backup: BackupInfo, tables: list[Table], with_dependents: bool
) -> tuple[dict, dict]:
    """Make each core table hold exactly its backup's rows; return rows written and rows
    removed, per table."""
    constraints = set_aside(conn, tables)
    written = {}
    for each in tables:
        empty(conn, each)
        target = sql.Identifier("core", each.name)
        stage_file(
            backup,
            backup.tables[each.name],
            lambda path, each=each, target=target: import_file(conn, target, fields_of(each), path),
        )
        written[each.name] = backup.tables[each.name]["rows"]
    for constraint in constraints:
        if constraint.kind != "f":
            constraint.add(conn)
    if not with_dependents:
        refuse_if_blocked(conn, tables[0], backup.stamp)
    for constraint in constraints:
        if constraint.kind == "f":
            constraint.add(conn)
    return written, {each.name: removed(conn, each) for each in tables}


def swap_ledger(conn: psycopg.Connection, backup: BackupInfo, tables: list[Table]) -> dict:
    """Put the tables' ledger back as the backup holds it, or, for a backup without ledger
    files, take out of the ledger what was settled since; return per table the keyword
    arguments of its `Restored`."""
    names = [each.name for each in tables]
    if backup.ledger is None:
        since = datetime.fromisoformat(backup.manifest["snapshot_at"])
        redo = ledger.forget_settled_since(conn, names, since)
        forget_stale_answers(conn)
        forget_files(conn, names)
        return {name: {"redo": redo[name]} for name in names}
    held = ledger.put_back(conn, names)
    forget_stale_answers(conn)
    forget_files(conn, names)
    return {name: {"batches": held[name][0], "rejected_rows": held[name][1]} for name in names}


def forget_files(conn: psycopg.Connection, names: list[str]) -> None:
    """Forget which export files of the restored tables were loaded: the next run reads them
    again, and the batch ledger (put back as it was in the backup) decides what it redoes."""
    if conn.execute("select to_regclass('audit.files')").fetchone()[0] is not None:
        conn.execute("delete from audit.files where table_name = any(%s)", (names,))


def forget_stale_answers(conn: psycopg.Connection) -> None:
    """Drop the stored API answers (Idempotency-Keys) about batches the ledger no longer holds:
    a client re-sending such a request after the restore gets it settled again, not an answer
    about rows that are gone."""
    conn.execute(
        "delete from audit.api_requests as request where request.response ? 'batch_id' "
        "and not exists (select 1 from audit.batches as batch "
        "where batch.batch_id = request.response ->> 'batch_id')"
    )


def restore_table(
    url: str, folder: Path, table_name: str, stamp: str | None = None, with_dependents: bool = False
) -> list[Restored]:
    """Restore `table_name` (and, if asked, the tables referencing it) from a backup, with
    their ledger.

    The backup is refused first if its name is not a plain stamp or its manifest is unusable
    (store.find_backup). Every file involved is checked (sha256, schema and the row count its
    blocks declare, against the manifest) before any row changes, and decoded and counted
    again as it is copied in. Then, in the one transaction that holds the tables' exclusive
    locks, the core rows and the ledger rows are swapped in; any error leaves every table as
    it was.
    """
    table = table_named(table_name)
    backup = find_backup(folder, stamp)
    tables = [table, *dependents_of(table)] if with_dependents else [table]
    for each in tables:
        verify_file(backup, each.name)
    for audit in ledger.LEDGER if backup.ledger is not None else ():
        verify_ledger_file(backup, audit)
    check_row_counts(backup, tables)
    with connect(url, autocommit=True) as setup:
        ensure_schemas(setup)  # a fresh database gets its tables; an old one, its migrations
    try:
        with connect(url) as conn, conn.transaction():
            lock_tables(conn, tables, exclusive=True)
            stage_ledger(conn, backup, tables)
            written, deleted = swap_core(conn, backup, tables, with_dependents)
            ledgers = swap_ledger(conn, backup, tables)
    except psycopg.errors.IntegrityError as error:
        raise BackupError(
            f"refused by the database, nothing changed: {str(error).splitlines()[0]}"
        ) from None
    return [
        Restored(
            each.name, written[each.name], deleted[each.name], backup.stamp, **ledgers[each.name]
        )
        for each in tables
    ]
