"""Restore core tables and their ledger from a backup, atomically: all of it in one
transaction, or nothing.

Rows are loaded with COPY into a temporary table, then the core table is made equal to it
(upsert every backed-up row, delete every row the backup does not hold). Never TRUNCATE:
a parent's rows still referenced by child rows block the restore, named in the message,
unless the dependents are restored from the same backup too. In the same transaction the
tables' ledger goes back to the backup's (backup/ledger.py), so the next run redoes the batches
whose rows the restore took away instead of skipping them as settled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg import sql

from backup import ledger
from backup.avro import UnreadableFile, columns_of, read_rows
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


def _staged(table: Table) -> sql.Identifier:
    return sql.Identifier(f"restore_{table.name}")


def stage(conn: psycopg.Connection, table: Table, path: Path) -> int:
    """COPY the backup's rows into a temporary table shaped like the core table; return how
    many rows were staged."""
    names = [column.name for column in columns_of(table)]
    conn.execute(
        sql.SQL("create temp table {} (like {}) on commit drop").format(
            _staged(table), sql.Identifier("core", table.name)
        )
    )
    statement = sql.SQL("copy {} ({}) from stdin").format(
        _staged(table), sql.SQL(", ").join(map(sql.Identifier, names))
    )
    staged = 0
    with conn.cursor().copy(statement) as copy:
        for row in read_rows(path, table):
            copy.write_row(row)
            staged += 1
    return staged


def without_foreign_keys(conn: psycopg.Connection, table: Table) -> list[tuple[str, str]]:
    """Drop the table's own foreign keys for the bulk write and return them to re-add.

    Re-adding validates every row in one set-based pass instead of a trigger per row (as
    pg_restore does); it all happens inside the restore's transaction, so nothing is ever
    committed without them.
    """
    found = conn.execute(
        "select conname, pg_get_constraintdef(oid) from pg_constraint "
        "where conrelid = %s::regclass and contype = 'f'",
        (f"core.{table.name}",),
    ).fetchall()
    for name, _ in found:
        conn.execute(
            sql.SQL("alter table {} drop constraint {}").format(
                sql.Identifier("core", table.name), sql.Identifier(name)
            )
        )
    return found


def with_foreign_keys(conn: psycopg.Connection, table: Table, keys: list[tuple[str, str]]) -> None:
    for name, definition in keys:
        conn.execute(
            sql.SQL("alter table {} add constraint {} {}").format(
                sql.Identifier("core", table.name), sql.Identifier(name), sql.SQL(definition)
            )
        )


def blocking_rows(conn: psycopg.Connection, parent: Table, child: Table) -> list[tuple]:
    """Child rows whose parent id is not in the staged backup of `parent`."""
    foreign_key = next(c for c in child.foreign_keys if c.references == parent.name)
    query = sql.SQL(
        "select c.id, c.{fk} from {child} c where not exists "
        "(select 1 from {staged} s where s.id = c.{fk}) order by c.id"
    ).format(
        fk=sql.Identifier(foreign_key.name),
        child=sql.Identifier("core", child.name),
        staged=_staged(parent),
    )
    return conn.execute(query).fetchall()


def upsert_rows(conn: psycopg.Connection, table: Table) -> int:
    """Insert or update every staged row into core.<table>; return how many."""
    names = [column.name for column in columns_of(table)]
    updates = [name for name in names if name != table.primary_key]
    return conn.execute(
        sql.SQL(
            "insert into {target} ({columns}) select {columns} from {staged} "
            "on conflict ({key}) do update set {updates}"
        ).format(
            target=sql.Identifier("core", table.name),
            staged=_staged(table),
            key=sql.Identifier(table.primary_key),
            columns=sql.SQL(", ").join(map(sql.Identifier, names)),
            updates=sql.SQL(", ").join(
                sql.SQL("{0} = excluded.{0}").format(sql.Identifier(name)) for name in updates
            ),
        )
    ).rowcount


def delete_missing(conn: psycopg.Connection, table: Table) -> int:
    """Delete the core rows the staged backup does not hold; return how many."""
    return conn.execute(
        sql.SQL(
            "delete from {target} t "
            "where not exists (select 1 from {staged} s where s.{key} = t.{key})"
        ).format(
            target=sql.Identifier("core", table.name),
            staged=_staged(table),
            key=sql.Identifier(table.primary_key),
        )
    ).rowcount


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
    """Stage one file with `staging` (path → records read) and check its row count.

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


def stage_backup(conn: psycopg.Connection, backup: BackupInfo, tables: list[Table]) -> None:
    """Stage every file the restore needs, checking each against the manifest's row count."""
    for each in tables:
        stage_file(
            backup, backup.tables[each.name], lambda path, each=each: stage(conn, each, path)
        )
    if backup.ledger is not None:
        names = [each.name for each in tables]
        for audit in ledger.LEDGER:
            stage_file(
                backup,
                backup.ledger[audit.name],
                lambda path, audit=audit: ledger.stage(conn, audit, path, names),
            )


def swap_core(conn: psycopg.Connection, tables: list[Table]) -> tuple[dict, dict]:
    """Make each core table equal to its staged backup; return rows upserted and deleted."""
    keys = {each.name: without_foreign_keys(conn, each) for each in tables}
    # Parents' rows first, so children find every id they need; deletions from the
    # children up, so no parent row goes while a child still points at it.
    upserted = {each.name: upsert_rows(conn, each) for each in tables}
    deleted = {each.name: delete_missing(conn, each) for each in reversed(tables)}
    for each in tables:
        with_foreign_keys(conn, each, keys[each.name])
    return upserted, deleted


def swap_ledger(conn: psycopg.Connection, backup: BackupInfo, tables: list[Table]) -> dict:
    """Put the tables' ledger back as the backup holds it, or, for a backup without ledger
    files, take out of the ledger what was settled since; return per table the keyword
    arguments of its `Restored`."""
    names = [each.name for each in tables]
    if backup.ledger is None:
        since = datetime.fromisoformat(backup.manifest["snapshot_at"])
        redo = ledger.forget_settled_since(conn, names, since)
        forget_stale_answers(conn)
        return {name: {"redo": redo[name]} for name in names}
    held = ledger.put_back(conn, names)
    forget_stale_answers(conn)
    return {name: {"batches": held[name][0], "rejected_rows": held[name][1]} for name in names}


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
    (store.find_backup). Every file involved is checked (sha256 and schema against the
    manifest), and decoded and counted as it is staged, before any row changes. Then, in the one
    transaction that holds the tables' exclusive locks, the core rows and the ledger rows are
    swapped in; any error leaves every table as it was.
    """
    table = table_named(table_name)
    backup = find_backup(folder, stamp)
    tables = [table, *dependents_of(table)] if with_dependents else [table]
    for each in tables:
        verify_file(backup, each.name)
    for audit in ledger.LEDGER if backup.ledger is not None else ():
        verify_ledger_file(backup, audit)
    with connect(url, autocommit=True) as setup:
        ensure_schemas(setup)  # a fresh database gets its tables; an old one, its migrations
    try:
        with connect(url) as conn, conn.transaction():
            lock_tables(conn, tables, exclusive=True)
            stage_backup(conn, backup, tables)
            if not with_dependents:
                refuse_if_blocked(conn, table, backup.stamp)
            upserted, deleted = swap_core(conn, tables)
            ledgers = swap_ledger(conn, backup, tables)
    except psycopg.errors.IntegrityError as error:
        raise BackupError(
            f"refused by the database, nothing changed: {str(error).splitlines()[0]}"
        ) from None
    return [
        Restored(
            each.name, upserted[each.name], deleted[each.name], backup.stamp, **ledgers[each.name]
        )
        for each in tables
    ]
