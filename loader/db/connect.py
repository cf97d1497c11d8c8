"""Connections to PostgreSQL: the one named by DATABASE_URL, or the embedded server; URLs in
the forms libpq, dbt and messages need."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg

from loader.db.embedded import EmbeddedServer
from loader.settings import Settings


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
    """The PG* variables libpq (and so dbt's profiles.yml) reads, for this URL.

    A URL may leave the host or port to libpq's defaults (`postgresql://user@/db?host=/run/...`
    names no port; `postgresql:///db` no host either): then libpq is asked what it used, so that
    dbt, whose profile has defaults of its own, reaches the same server.
    """
    info = psycopg.conninfo.conninfo_to_dict(url)
    if not (info.get("host") and info.get("port")):
        with connect(url) as conn:
            info = {
                **info,
                "host": conn.info.host,
                "port": conn.info.port,
                "user": info.get("user") or conn.info.user,
                "dbname": info.get("dbname") or conn.info.dbname,
            }
    return {variable: str(info[key]) for key, variable in LIBPQ_VARIABLES.items() if info.get(key)}


def reason_of(error: BaseException) -> str:
    """The first line of a driver's error, in words fit for a one-line message."""
    text = str(error).strip()
    reason = text.splitlines()[0] if text else type(error).__name__
    # libpq's "server closed the connection unexpectedly" reads like a bug of ours; it is not.
    if "closed the connection" in reason or "consuming input failed" in reason:
        return "the server closed the connection"
    return reason


def connect(url: str, **kwargs) -> psycopg.Connection:
    """Open a connection, turning every failure into one clear DatabaseUnavailable line."""
    try:
        return psycopg.connect(url, connect_timeout=10, **kwargs)
    except psycopg.Error as error:
        raise DatabaseUnavailable(f"cannot connect to {redact(url)}: {reason_of(error)}") from None
