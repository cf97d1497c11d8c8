"""`python -m loader watch`: list the input every few seconds and run over the files that are new
or changed since the file ledger saw them, one run at a time under the run lock.

An object listed in a bucket is complete; a local file may still be being written, so it is read
only once its size and modification time are the same in two listings (a name that is no export
yet, such as `hires.csv.part`, is ignored until renamed). A malformed file is recorded as such
and not read again until it changes; the other files still load. A database or storage that
goes away is said once and retried with backoff, never a reason to exit. A stop request lets the
current run finish (a second one abandons it cleanly: its row says `failed`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loader.db.connect import DatabaseUnavailable, connect, database_url
from loader.db.schema import ensure_schemas
from loader.flow.errors import InputError, StorageUnavailable
from loader.flow.file_run import plan_reads, run_files
from loader.flow.source.exports import Export, Listing, list_exports
from loader.flow.summary import RunSummary
from loader.observe.events import Job, Observers
from loader.settings import Settings

if TYPE_CHECKING:
    from loader.flow.judge.gate import Gate

BACKOFF_SECONDS = (1, 2, 5, 10, 30, 60)


@dataclass
class Watch:
    """Watches `settings.input_dir`; `said` takes one line for people (stderr), `ran` each run's
    summary (stdout's one line). `gate`, when given, judges every run and stays warm between
    them: an export that arrives does not wait for a gate process to import GX."""

    settings: Settings
    every: float
    said: Callable[[str], None]
    ran: Callable[[RunSummary], None]
    stop: threading.Event
    observers: Observers = field(default_factory=Observers)
    gate: Gate | None = None

    def __post_init__(self) -> None:
        self._last_listing: dict[str, tuple[int, str | None]] = {}
        self._trouble: str | None = None  # the problem said once, until it clears
        self._failures = 0

    def run(self) -> None:
        """Cycle until `stop` is set."""
        while not self.stop.is_set():
            pause = self.every
            try:
                self.cycle()
                self._clear()
            except (DatabaseUnavailable, StorageUnavailable) as error:
                pause = self._backoff(str(error))
            except InputError as error:
                if error.source is None:  # the input itself (missing, empty): wait for it
                    self._tell(str(error))
                else:  # a malformed file, recorded as such: the others load next cycle
                    self.said(f"malformed, not read again until it changes: {error}")
                    pause = 0
            self.stop.wait(pause)

    def cycle(self) -> RunSummary | None:
        """One listing, and a run over what is ready and new; the run's summary, if any."""
        listing = self._ready(list_exports(self.settings.input_dir))
        if not listing.exports:
            return None
        url = database_url(self.settings)
        with connect(url, autocommit=True) as conn:
            ensure_schemas(conn)  # a database no run has used yet has no file ledger
            # Files waiting for a parent are tried again only with something new beside them.
            reads, _ = plan_reads(conn, listing, skip_malformed=True, skip_partial=True)
        if not reads:
            return None
        summary = run_files(
            self.settings,
            notify=self.said,
            listing=listing,
            skip_malformed=True,
            observers=self.observers,
            job=Job.WATCH_RUN,
            gate=self.gate,
        )
        self.ran(summary)
        return summary

    def _ready(self, listing: Listing) -> Listing:
        """The exports that are complete: every object of a bucket; a local file once two
        listings agree on its size and modification time."""
        seen = {export.url: (export.size, export.version) for export in listing.exports}
        previous, self._last_listing = self._last_listing, seen
        ready = [export for export in listing.exports if _complete(export, previous)]
        return Listing(ready, listing.ignored)

    def _backoff(self, problem: str) -> float:
        self._tell(f"{problem}; retrying")
        self._failures += 1
        return BACKOFF_SECONDS[min(self._failures, len(BACKOFF_SECONDS)) - 1]

    def _tell(self, problem: str) -> None:
        if problem != self._trouble:
            self.said(problem)
            self._trouble = problem

    def _clear(self) -> None:
        if self._trouble is not None:
            self.said("back to normal")
        self._trouble, self._failures = None, 0


def _complete(export: Export, previous: dict[str, tuple[int, str | None]]) -> bool:
    if "://" in export.url:
        return True
    return previous.get(export.url) == (export.size, export.version)


def one_line(summary: RunSummary) -> str:
    """A run in one line: what `watch` prints on stdout after each run."""
    files = ", ".join(f"{read['url']} ({read['state']})" for read in summary.files)
    return (
        f"run {summary.run_id} {summary.status}: {len(summary.files)} files read ({files}); "
        f"rows promoted {summary.total('rows_promoted')}, held back "
        f"{summary.total('rows_held_back')}, skipped {summary.total('rows_skipped')}; "
        f"marts {summary.marts_status}"
    )
