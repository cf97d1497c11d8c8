"""The read-only role for BI tools: it can read the `marts` schema and nothing else."""

from __future__ import annotations

import psycopg
from psycopg import sql


def grant_marts_reader(conn: psycopg.Connection, role: str, password: str) -> None:
    """Create (or update) a login role that can select from every table in `marts`, now and
    after every `dbt build` (which recreates the tables as this user: default privileges).

    The role gets no other grant; `core`, `raw` and `audit` grant nothing to PUBLIC, so it is
    refused there.
    """
    name = sql.Identifier(role)
    with conn.transaction():
        exists = conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone()
        verb = sql.SQL("alter") if exists else sql.SQL("create")
        conn.execute(
            sql.SQL(
                "{} role {} with login password {} nosuperuser nocreatedb nocreaterole noinherit"
            ).format(verb, name, sql.Literal(password))
        )
        conn.execute("create schema if not exists marts")
        conn.execute(sql.SQL("grant usage on schema marts to {}").format(name))
        conn.execute(sql.SQL("grant select on all tables in schema marts to {}").format(name))
        conn.execute(
            sql.SQL("alter default privileges in schema marts grant select on tables to {}").format(
                name
            )
        )
