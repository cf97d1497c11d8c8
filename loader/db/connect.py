"""Connections to PostgreSQL: the one named by DATABASE_URL, or the embedded server; URLs in
the forms libpq, dbt and messages need."""

from __future__ import annotations

import re
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


# A password anywhere libpq takes one: `user:pw@` in a URL, `?password=` in its query, or a
# `password=` pair of a key=value string (quoted with '' and backslash escapes, or bare).
_URL_PASSWORD = re.compile(r"^([a-z][a-z0-9+.-]*://[^/@?#]*?:)[^/@?#]*(@)", re.IGNORECASE)
_PAIR_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'?|[^\s&#]*)", re.IGNORECASE)


def redact(url: str) -> str:
    """The connection string with every password replaced by `***`, fit for messages, logs
    and manifests; whatever form libpq accepted it in."""
    return _PAIR_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***\2", url))


def scrub(text: str, url: str) -> str:
    """`text` (a driver's message about `url`) without the password it may quote."""
    secrets = [
        psycopg.conninfo.conninfo_to_dict(url).get("password") if _parses(url) else None,
        *(match.group(0)[len(match.group(1)) : -1] for match in _URL_PASSWORD.finditer(url)),
    ]
    for secret in filter(None, secrets):
        text = text.replace(secret, "***")
    return text


def _parses(url: str) -> bool:
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return False
    return True


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
        reason = scrub(reason_of(error), url)
        raise DatabaseUnavailable(f"cannot connect to {redact(url)}: {reason}") from None


def database_gone(url: str) -> bool:
    """Whether the database at `url` fails to answer now: what tells a lost database from an
    error of our own after a step failed."""
    try:
        with psycopg.connect(url, connect_timeout=3) as probe:
            probe.execute("select 1")
    except psycopg.Error:
        return True
    return False


def lost_database(error: BaseException, url: str, consequence: str) -> DatabaseUnavailable:
    """The one line for a database lost during work: the URL (password hidden), the driver's
    reason, and what it means for what was being done."""
    return DatabaseUnavailable(
        f"lost the database {redact(url)} ({scrub(reason_of(error), url)}); {consequence}"
    )
