"""Connections to PostgreSQL (the one named by DATABASE_URL, or the embedded server) and the
set-up of the `core` and `audit` schemas, derived from the data dictionary.

`raw` is not created here: dlt owns it (its tables, its schema versions, its load state).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg

from loader.embedded import EmbeddedServer
from loader.settings import Settings
from loader.tables import CORE_LINEAGE, TABLES, Table


class DatabaseUnavailable(RuntimeError):
    """The database did not answer; the message names the URL with its password hidden."""


def embedded_server(settings: Settings) -> EmbeddedServer:
    return EmbeddedServer(settings.pgdata_dir, settings.embedded_port)


def database_url(settings: Settings) -> str:
    """The URL of the database in use, starting the embedded server when none is configured."""
    if settings.database_url:
        return settings.database_url
    return embedded_server(settings).start()


def with_user(url: str, user: str) -> str:
    """The same server and database as `url`, for another user (password left out)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def redact(url: str) -> str:
    """The URL with its password replaced by `***`, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


LIBPQ_VARIABLES = {
    "host": "PGHOST",
    "port": "PGPORT",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "dbname": "PGDATABASE",
}


def libpq_environment(url: str) -> dict[str, str]:
    """The PG* variables libpq (and so dbt's profiles.yml) reads, for this URL."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    return {variable: str(info[key]) for key, variable in LIBPQ_VARIABLES.items() if info.get(key)}


def connect(url: str, **kwargs) -> psycopg.Connection:
    """Open a connection, turning every failure into one clear DatabaseUnavailable line."""
    try:
        return psycopg.connect(url, connect_timeout=10, **kwargs)
    except psycopg.Error as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DatabaseUnavailable(f"cannot connect to {redact(url)}: {reason}") from None


def core_table_ddl(table: Table) -> str:
    columns = [f'"{column.name}" {column.postgres_type} not null' for column in table.columns]
    columns += [f'"{column.name}" {column.postgres_type} not null' for column in CORE_LINEAGE]
    columns.append(f'primary key ("{table.primary_key}")')
    columns += [
        f'foreign key ("{column.name}") references core."{column.references}" (id)'
        for column in table.foreign_keys
    ]
    return f'create table if not exists core."{table.name}" (\n  ' + ",\n  ".join(columns) + "\n)"


AUDIT_DDL = (
    """create table if not exists audit.runs (
      run_id text primary key,
      started_at timestamptz not null,
      finished_at timestamptz,
      input text not null,
      batch_size integer not null,
      policy text not null,
      status text not null,
      summary jsonb
    )""",
    """create table if not exists audit.batches (
      batch_id text primary key,
      run_id text not null references audit.runs (run_id),
      table_name text not null,
      source text not null,
      first_line integer not null,
      last_line integer not null,
      rows_read integer not null,
      rows_promoted integer not null,
      rows_rejected integer not null,
      status text not null check (status in ('promoted', 'rejected', 'partially_promoted')),
      reasons jsonb not null default '[]',
      settled_at timestamptz not null default now()
    )""",
    """create table if not exists audit.mart_builds (
      built_at timestamptz primary key default clock_timestamp(),
      rows jsonb not null
    )""",
    """create table if not exists audit.api_requests (
      idempotency_key text primary key,
      body_sha256 text not null,
      status_code integer,
      response jsonb,
      received_at timestamptz not null default now()
    )""",
    """create table if not exists audit.rejected_rows (
      batch_id text not null references audit.batches (batch_id),
      run_id text not null,
      table_name text not null,
      source text not null,
      line_number integer not null,
      raw_values jsonb not null,
      failures jsonb not null,
      primary key (batch_id, line_number)
    )""",
)


def ensure_schemas(conn: psycopg.Connection) -> None:
    """Create `core` and `audit` and their tables if missing (idempotent, one transaction)."""
    with conn.transaction():
        conn.execute("create schema if not exists core")
        conn.execute("create schema if not exists audit")
        for table in TABLES:
            conn.execute(core_table_ddl(table))
        for statement in AUDIT_DDL:
            conn.execute(statement)
