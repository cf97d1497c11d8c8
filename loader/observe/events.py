"""The events every observer hears, and the hub that hands them out.

A job (a file run, a watch run, an API run, a marts build, a backup, a restore, a verify) is
`Started`, then `Finished` once: completed, failed with its error, or aborted (interrupted).
The flow calls the hub, never an observer: which observers listen is the command's choice
(`loader.observe.setup`). An observer that fails (a lineage endpoint down, a Pushgateway that
refuses) is one warning in the log, never a reason for the job to fail.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loader.flow.summary import RunSummary
    from loader.marts.build import MartsBuild

log = logging.getLogger("loader.observe")


class Job(StrEnum):
    """What ran: OpenLineage's job names and the metrics' `loader_job` label are these values."""

    FILE_RUN = "file_run"
    WATCH_RUN = "watch_run"
    API_RUN = "api_run"
    MARTS_BUILD = "marts_build"
    BACKUP = "backup"
    RESTORE = "restore"
    VERIFY = "verify"


class Ending(StrEnum):
    """How a job ended, in OpenLineage's words."""

    COMPLETE = "COMPLETE"
    FAIL = "FAIL"
    ABORT = "ABORT"


@dataclass
class Started:
    """A job that started: its id in the loader (run id, backup stamp), a UUID for lineage,
    the job that triggered it (a marts build's load), and what it reads.

    `inputs` are the URLs or paths of the exports a run reads, or of the backup a restore or
    verify reads; `outputs` those a job writes outside the database (a backup's folder); both
    as shown: secrets hidden. `tables` are the loader's tables it touches.
    """

    job: Job
    run_id: str
    inputs: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    parent: Started | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    clock: float = field(default_factory=time.perf_counter)


@dataclass
class Finished:
    """How a job ended, and what it did: the run's summary, the marts build (and where dbt
    wrote its manifest and run results), the backup made, the tables restored, the backup
    verified."""

    ending: Ending = Ending.COMPLETE
    error: str | None = None
    seconds: float = 0.0
    summary: RunSummary | None = None
    marts: MartsBuild | None = None
    dbt_target: Path | None = None
    backup: Any = None  # backup.store.BackupInfo: `backup` knows no flow, so no import here
    restored: list[Any] = field(default_factory=list)  # backup.restore.Restored
    verified: dict[str, int] = field(default_factory=dict)
    finished_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class Observer:
    """Hears jobs start and finish; every method may be left as it is (nothing)."""

    name = "observer"

    def started(self, started: Started) -> None:
        """A job started."""

    def finished(self, started: Started, finished: Finished) -> None:
        """A job ended (once per `started`)."""

    def close(self) -> None:
        """The process is done with this observer: flush, push, stop serving."""


class Observers:
    """The hub: every event to every observer; an observer's failure is one warning line."""

    def __init__(self, observers: list[Observer] | None = None):
        self.observers = list(observers or [])
        self._lock = threading.Lock()
        self._failing: set[str] = set()  # observers whose last call failed

    def add(self, observer: Observer) -> None:
        self.observers.append(observer)

    def started(self, started: Started) -> Started:
        self._each("started", started)
        return started

    def finished(self, started: Started, finished: Finished) -> None:
        finished.seconds = finished.seconds or time.perf_counter() - started.clock
        self._each("finished", started, finished)

    def start(self, job: Job, run_id: str, **details: Any) -> Started:
        """A job `Started` and told."""
        return self.started(Started(job, run_id, **details))

    @contextmanager
    def job(self, job: Job, run_id: str, **details: Any) -> Iterator[tuple[Started, Finished]]:
        """Tell `job` started, and on leaving how it ended: complete, failed with its error,
        or aborted on an interrupt. The caller fills the `Finished` it is handed."""
        started = self.start(job, run_id, **details)
        finished = Finished()
        try:
            yield started, finished
        except BaseException as error:
            finished.ending = ending_of(error)
            finished.error = finished.error or describe(error)
            self.finished(started, finished)
            raise
        self.finished(started, finished)

    def close(self) -> None:
        self._each("close")

    def _each(self, method: str, *args: Any) -> None:
        """Call `method` of every observer. An observer's failure is said once, until a call to
        it succeeds again: an endpoint down for a day is one warning, not one per event."""
        with self._lock:  # settle lines and the API's threads finish runs concurrently
            for observer in self.observers:
                try:
                    getattr(observer, method)(*args)
                except Exception as error:  # noqa: BLE001 - watching never fails the work
                    level = logging.DEBUG if observer.name in self._failing else logging.WARNING
                    self._failing.add(observer.name)
                    log.log(
                        level,
                        "%s: %s",
                        observer.name,
                        describe(error),
                        extra={"event": "observer.failed"},
                    )
                else:
                    if observer.name in self._failing:
                        self._failing.discard(observer.name)
                        log.info(
                            "%s: working again", observer.name, extra={"event": "observer.back"}
                        )


def ending_of(error: BaseException | None) -> Ending:
    if error is None:
        return Ending.COMPLETE
    if isinstance(error, KeyboardInterrupt | SystemExit):
        return Ending.ABORT
    return Ending.FAIL


def describe(error: BaseException) -> str:
    """An error in one line: its type's name and its message."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:500] if text else type(error).__name__
