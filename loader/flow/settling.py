"""Settlement beside reading: landed batches are settled in order by a thread of its own, on a
connection of its own, while the run's thread reads and judges the next chunk.

Judging is Python's work and settling is PostgreSQL's, which is another process: on two cores
they overlap almost fully (issue 12's profile: read + validate + raw load about as long as
promotion). Order is kept (one thread, first in first out), so departments and jobs are settled
before the hires that reference them. Each batch is still its own transaction through
`Settler.settle`; the line adds no state of its own, so a crash anywhere leaves what the ledger
says and nothing else.

A failure on the line (the database gone, a bug) is raised in the run's thread at its next
`put` or at `close`; once one happened nothing more is settled. A failure in the run's thread
stops the line after the batch it is settling.

The line holds at most QUEUED_LANDS lands waiting: where settling is slower than judging (it is,
on two cores), an unbounded queue would hold the verdicts of every batch judged ahead, and a
10M-row run's peak grew to 580 MB with them; bounded, the run's thread waits instead and its
memory stays flat.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from types import TracebackType

import psycopg

from loader.flow.gate import Verdict
from loader.flow.kill_points import KillPoints
from loader.flow.settle import BatchInfo, Settlement, Settler
from loader.tables import Table

Item = tuple[Table, BatchInfo, Verdict]
Settled = Callable[[Table, Settlement], None]
DONE = None
QUEUED_LANDS = 2
OFFER_SECONDS = 0.1


class SettleLine:
    """Settles the batches `put` to it, in order, on `conn` in a thread of its own."""

    def __init__(
        self,
        conn: psycopg.Connection,
        run_id: str,
        policy: str,
        kill: KillPoints,
        settled: Settled,
    ):
        self.conn = conn
        self.settler = Settler(conn, run_id, policy, kill)
        self.settled = settled
        self.seconds = 0.0  # busy settling, for the summary's "promote"
        self._queue: queue.Queue[list[Item] | None] = queue.Queue(QUEUED_LANDS)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._settle_all, name="settle-line", daemon=True)
        self._thread.start()

    def put(self, items: list[Item]) -> None:
        """Queue landed batches for settlement, waiting while QUEUED_LANDS wait already;
        raises what the line failed with, if it did."""
        self._raise_failure()
        self._offer(items)
        self._raise_failure()

    def close(self) -> None:
        """Wait until every queued batch is settled; raises what the line failed with."""
        self._offer(DONE)
        self._thread.join()
        self._raise_failure()

    def stop(self) -> None:
        """Settle nothing more (the batch being settled finishes its transaction) and wait."""
        self._stop.set()
        self._offer(DONE)
        self._thread.join()

    def _offer(self, items: list[Item] | None) -> None:
        """Queue `items` once there is room, unless the line has ended (failed or stopped):
        then nothing will take them, and waiting for room would never end."""
        while self._thread.is_alive():
            try:
                self._queue.put(items, timeout=OFFER_SECONDS)
                return
            except queue.Full:
                continue

    def __enter__(self) -> SettleLine:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if error is not None:
            self.stop()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _settle_all(self) -> None:
        try:
            while (items := self._queue.get()) is not DONE:
                for table, batch, verdict in items:
                    if self._stop.is_set():
                        return
                    started = time.perf_counter()
                    settlement = self.settler.settle(table, batch, verdict)
                    self.seconds += time.perf_counter() - started
                    self.settled(table, settlement)
        except BaseException as error:  # noqa: BLE001 - handed to the run's thread, raised there
            self._error = error
