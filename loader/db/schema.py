"""Schema set-up: `core` derived from the data dictionary, `audit` from ordered SQL migrations
recorded in `audit.schema_migrations`, all under the schema lock so that simultaneous first
runs (or a run and the API starting) cannot collide.

`raw` is not created here: dlt owns it (its tables, its schema versions, its load state).
`create table if not exists` cannot change a table that exists, so every change to `audit`
after the first release is a new numbered file in `migrations/`; a database made by an earlier
release is upgraded in place on the first run of this one.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from loader.db.locks import schema_lock
from loader.tables import CORE_LINEAGE, TABLES, Table

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def core_table_ddl(table: Table) -> str:
    columns = [f'"{column.name}" {column.postgres_type} not null' for column in table.columns]
    columns += [f'"{column.name}" {column.postgres_type} not null' for column in CORE_LINEAGE]
    columns.append(f'primary key ("{table.primary_key}")')
    columns += [
        f'foreign key ("{column.name}") references core."{column.references}" (id)'
        for column in table.foreign_keys
    ]
    return f'create table if not exists core."{table.name}" (\n  ' + ",\n  ".join(columns) + "\n)"


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, SQL) of every migration, in order."""
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        version, _, name = path.stem.partition("_")
        found.append((int(version), name, path.read_text()))
    return found


def pending(conn: psycopg.Connection) -> list[tuple[int, str, str]]:
    exists = conn.execute("select to_regclass('audit.schema_migrations')").fetchone()[0]
    applied = (
        {row[0] for row in conn.execute("select version from audit.schema_migrations")}
        if exists
        else set()
    )
    return [migration for migration in migrations() if migration[0] not in applied]


def ensure_schemas(conn: psycopg.Connection) -> list[str]:
    """Create `core` and `audit` if missing and apply pending migrations; return their names.

    Each migration runs in its own transaction with its row in `audit.schema_migrations`.
    """
    with schema_lock(conn):
        with conn.transaction():
            conn.execute("create schema if not exists core")
            conn.execute("create schema if not exists audit")
            for table in TABLES:
                conn.execute(core_table_ddl(table))
            conn.execute(
                "create table if not exists audit.schema_migrations ("
                "version integer primary key, name text not null, "
                "applied_at timestamptz not null default now())"
            )
        applied = []
        for version, name, statements in pending(conn):
            with conn.transaction():
                conn.execute(statements)
                conn.execute(
                    "insert into audit.schema_migrations (version, name) values (%s, %s)",
                    (version, name),
                )
            applied.append(f"{version:03d}_{name}")
        return applied
