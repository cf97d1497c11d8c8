"""The databases a bench works in: made by it on the server in use, named `bench_<random>_...`,
and dropped when it ends, however it ends; and the check that it runs beside no one's data.

The bench never writes to the database in use (DATABASE_URL, or the embedded server's). It
still refuses to start when that database holds rows in core, raw or audit: those are someone's
loads, and a bench beside them would compete with their server for the machine and write
databases next to them. A database with the loader's empty tables (only
`audit.schema_migrations` filled) is fine.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from loader.db.connect import connect, redact

LOADER_SCHEMAS = ("core", "raw", "audit")
SET_UP_ONLY = {("audit", "schema_migrations")}  # written by any first connection, not data
SHOWN = 3
COMMENT = "made by python -m loader bench; dropped when it ends"


class BenchRefused(RuntimeError):
    """The database in use holds data the bench did not write; the message says what to do."""


def on_database(url: str, name: str) -> str:
    """The same server and options as `url`, database `name` (a URL or key=value conninfo)."""
    if url.startswith(("postgresql://", "postgres://")):
        return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
    return psycopg.conninfo.make_conninfo(url, dbname=name)


def tables_with_rows(conn: psycopg.Connection) -> list[str]:
    """The core, raw and audit tables holding at least one row, set-up tables aside."""
    tables = conn.execute(
        "select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = any(%s) and c.relkind in ('r', 'p') order by 1, 2",
        (list(LOADER_SCHEMAS),),
    ).fetchall()
    return [
        f"{schema}.{table}"
        for schema, table in tables
        if (schema, table) not in SET_UP_ONLY
        and conn.execute(
            sql.SQL("select exists (select from {})").format(sql.Identifier(schema, table))
        ).fetchone()[0]
    ]


def refuse_beside_data(url: str) -> None:
    """Raise BenchRefused if the database at `url` holds loader data."""
    with connect(url, autocommit=True) as conn:
        filled = tables_with_rows(conn)
        database = conn.info.dbname
    if filled:
        named = ", ".join(filled[:SHOWN]) + (
            f" and {len(filled) - SHOWN} more" if filled[SHOWN:] else ""
        )
        raise BenchRefused(
            f"bench refuses to run beside data it did not write: database {database!r} "
            f"({redact(url)}) holds rows in {named}. It works in databases of its own "
            f"(bench_<random>_..., made on the same server and dropped at the end); point "
            f"DATABASE_URL at a database without loader rows, e.g. "
            f"{redact(on_database(url, 'postgres'))}"
        )


class Scratch:
    """The bench's databases on one server; `with Scratch(url) as scratch:` drops them all."""

    def __init__(self, server_url: str):
        self.server_url = server_url
        self.prefix = f"bench_{secrets.token_hex(3)}"
        self.made: list[str] = []

    def create(self, role: str) -> str:
        """A new empty database for `role` (e.g. "loader_1"); returns its URL."""
        name = f"{self.prefix}_{role}"
        with connect(self.server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
            self.made.append(name)
            conn.execute(
                sql.SQL("comment on database {} is {}").format(
                    sql.Identifier(name), sql.Literal(COMMENT)
                )
            )
        return on_database(self.server_url, name)

    def drop(self, url: str) -> None:
        name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
        if name not in self.made:
            raise ValueError(f"{name} was not made by this bench")  # never drop anyone else's
        with connect(self.server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )
        self.made.remove(name)

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc) -> None:
        for name in list(self.made):
            self.drop(on_database(self.server_url, name))
