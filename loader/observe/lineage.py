"""OpenLineage events (openlineage-python) for every job: START, then COMPLETE, FAIL or ABORT,
with datasets named by OpenLineage's naming spec and data-quality facets.

Configured the standard way: `OPENLINEAGE_URL`, `OPENLINEAGE_CONFIG`, an `openlineage.yml` in
the working directory or ~/.openlineage, or `OPENLINEAGE__TRANSPORT__*` variables (http, file,
console or any transport the client has); `OPENLINEAGE_NAMESPACE` names the job namespace.
Unconfigured (or `OPENLINEAGE_DISABLED=true`), there is no observer and nothing of openlineage
is imported. Sending never fails a job: each event has `LOADER_LINEAGE_TIMEOUT_SECONDS`, and
once one is not sent, no other event of the same run (the load and its marts build) is tried.
Every call that sends nothing raises, so the hub says the first as a warning, the rest at debug
level, and "working again" only once an event is sent.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loader.observe.events import Finished, Observer, Started, describe
from loader.settings import Settings

if TYPE_CHECKING:
    from loader.observe.lineage_events import LineageEvents

DEFAULT_NAMESPACE = "csv-migrate"
CONFIG_FILE = "openlineage.yml"
SENDER = "openlineage-send"  # the name of the threads that send events


def configured() -> bool:
    """Whether OpenLineage is configured the standard way, and not disabled."""
    if os.environ.get("OPENLINEAGE_DISABLED", "").strip().lower() == "true":
        return False
    if os.environ.get("OPENLINEAGE_URL"):
        return True
    if any(name.startswith("OPENLINEAGE__TRANSPORT__") for name in os.environ):
        return True
    files = [
        os.environ.get("OPENLINEAGE_CONFIG"),
        Path.cwd() / CONFIG_FILE,
        Path.home() / ".openlineage" / CONFIG_FILE,
    ]
    return any(path and Path(path).is_file() for path in files)


class LineageUnavailable(RuntimeError):
    """An event that could not be sent (or made): the rest of its run is not tried."""


class LineageObserver(Observer):
    """Sends every job's events to the configured transport; the client and the database's
    name are resolved at the first event (which may start the embedded server)."""

    name = "lineage"

    def __init__(self, settings: Settings, namespace: str, timeout: float):
        self.settings = settings
        self.namespace = namespace
        self.timeout = timeout
        self._client: Any = None
        self._events: LineageEvents | None = None
        self._given_up: set[str] = set()  # root runs (UUIDs) an event of which was not sent
        self._down = False  # the last event tried was not sent

    @classmethod
    def from_environment(cls, settings: Settings) -> LineageObserver | None:
        if not configured():
            return None
        namespace = os.environ.get("OPENLINEAGE_NAMESPACE") or DEFAULT_NAMESPACE
        return cls(settings, namespace, settings.lineage_timeout_seconds)

    def started(self, started: Started) -> None:
        self._send(started, lambda events: [events.start(started)])

    def finished(self, started: Started, finished: Finished) -> None:
        try:
            self._send(
                started,
                lambda events: [
                    *events.dbt_models(started, finished),
                    events.end(started, finished),
                ],
            )
        finally:
            if started.parent is None:
                self._given_up.discard(started.uuid)

    def close(self) -> None:
        if self._down:  # not "working again" to the hub: nothing was sent since
            raise LineageUnavailable("closed with the last events not sent")
        if self._client is not None:
            self._bounded(lambda: self._client.close(self.timeout))

    def _send(self, started: Started, made: Callable[[LineageEvents], list]) -> None:
        from loader.observe.lineage_events import root_of

        root = root_of(started).uuid
        if root in self._given_up:
            raise LineageUnavailable(f"{started.job} {started.run_id}: not sent (given up)")
        try:
            for event in made(self._builder()):
                self._emit(event)
        except Exception as error:  # noqa: BLE001 - lineage never fails the job
            self._given_up.add(root)
            self._down = True
            raise LineageUnavailable(
                f"{started.job} {started.run_id}: events not sent, none more for this run "
                f"({describe(error)})"
            ) from None
        self._down = False

    def _builder(self) -> LineageEvents:
        if self._events is None:
            from loader.db.connect import database_url
            from loader.observe.lineage_events import LineageEvents

            self._events = LineageEvents(self.namespace, database_url(self.settings))
        return self._events

    def _emit(self, event: Any) -> None:
        if self._client is None:
            from openlineage.client import OpenLineageClient

            _quiet_retries()
            self._client = OpenLineageClient()
        self._bounded(lambda: self._client.emit(event))

    def _bounded(self, call: Callable[[], object]) -> None:
        """`call` on a thread of its own, given up after the timeout (the thread is left to
        end on its own: a daemon, it does not keep the process alive)."""
        failure: list[BaseException] = []

        def attempt() -> None:
            try:
                call()
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                failure.append(error)

        sender = threading.Thread(target=attempt, name=SENDER, daemon=True)
        sender.start()
        sender.join(self.timeout)
        if sender.is_alive():
            raise TimeoutError(f"no answer within {self.timeout:g} s")
        if failure:
            raise failure[0]


class _NotFromSenders(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != SENDER


def _quiet_retries() -> None:
    """urllib3 warns of each retry of the HTTP transport (where a library has configured the
    root logger, on stderr): the one warning of a failed send is the hub's, so records from
    the sending threads are dropped."""
    logger = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(each, _NotFromSenders) for each in logger.filters):
        logger.addFilter(_NotFromSenders())
