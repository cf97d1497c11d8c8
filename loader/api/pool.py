"""The API's connection pool: its own queries (reports, audit look-ups, Idempotency-Keys, health)
share a bounded set of connections instead of opening new ones per request.

Settlements do not use it: `loader.flow.api_run.RequestSettler` holds the request locks of
the batches it settles together, and their run, on a connection of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from loader.db.connect import DatabaseUnavailable, connect, redact
from loader.settings import Settings

APPLICATION_NAME = "loader-api"  # how the pool's sessions show in pg_stat_activity


class PoolExhausted(RuntimeError):
    """Every pooled connection stayed in use for the whole wait: the server is busy."""


class DatabasePool:
    """A bounded psycopg pool, opened and closed with the application (its lifespan)."""

    def __init__(self, url: str, settings: Settings):
        self.url = url
        self.size = settings.api_pool_max
        self.wait_seconds = settings.api_pool_timeout_seconds
        # A query abandoned by a 504 must not keep its connection from everybody else for long.
        statement_ms = int(settings.api_request_seconds * 1000)
        self.options = {
            "autocommit": True,
            "application_name": APPLICATION_NAME,
            "options": f"-c statement_timeout={statement_ms}",
        }
        self.pool = ConnectionPool(
            url,
            min_size=settings.api_pool_min,
            max_size=settings.api_pool_max,
            timeout=settings.api_pool_timeout_seconds,
            open=False,
            name="api",
            check=ConnectionPool.check_connection,
            kwargs={**self.options, "connect_timeout": 10},
        )
        self._in_use = 0
        self._counting = threading.Lock()

    def open(self) -> None:
        # Not waiting: the API starts (and /healthz says 503) while the database is away.
        self.pool.open(wait=False)

    def close(self) -> None:
        self.pool.close()

    def usage(self) -> tuple[int, int]:
        """Connections lent out now, and requests waiting for one (the metrics read it)."""
        with self._counting:
            in_use = self._in_use
        return in_use, self.pool.get_stats().get("requests_waiting", 0)

    @contextmanager
    def connection(self, overflow: bool = False) -> Iterator[psycopg.Connection]:
        """A pooled autocommit connection; PoolExhausted when all are busy, DatabaseUnavailable
        when the pool cannot reach the database.

        `overflow`: when all are busy, a connection of its own beyond the bound instead. Only
        for keeping the answer of a settlement that has already happened (a few threads).
        """
        try:
            conn = self.pool.getconn()
        except PoolTimeout:
            conn, error = None, self._why_no_connection()
        if conn is None:
            if not (overflow and isinstance(error, PoolExhausted)):
                raise error
            with connect(self.url, **self.options) as own:
                yield own
            return
        with self._counting:
            self._in_use += 1
        try:
            yield conn
        finally:
            with self._counting:
                self._in_use -= 1
            self.pool.putconn(conn)

    def _why_no_connection(self) -> Exception:
        with self._counting:
            busy = self._in_use >= self.size
        if busy:
            return PoolExhausted(
                f"no database connection came free within {self.wait_seconds:g} s "
                f"({self.size} of {self.size} in use); retry shortly"
            )
        return DatabaseUnavailable(f"cannot connect to {redact(self.url)}")
