"""Settlement beside reading: landed batches are settled by a thread of their own, on
connections of their own, while the run's thread reads and judges the next chunk.

Judging is Python's work and settling is PostgreSQL's, which is another process: on two cores
they overlap, and once the run's thread has judged everything the settling still has cores to
use. So each land is settled on `settle_connections` connections at once, cut into lanes by
`lanes.lanes` (batches that may share a key on one connection, in file order), one table after
another: departments and jobs are in core before a hire that references them is settled. A land
is settled whole before the next one starts, so the lanes of two lands never overlap either.
Runs of a lane's batches whose every row passed settle in one transaction (`together`,
`Settler.settle_together`), any other batch in one of its own; each batch is whole or not at all
either way, and the line adds no state of its own, so a crash anywhere leaves what the ledger
says and nothing else.

A failure on the line (the database gone, a bug) is raised in the run's thread at its next
`put` or at `close`; once one happened nothing more is settled (the other lanes stop after
their current batch). A failure in the run's thread stops the line after the batches being
settled.

The line holds at most QUEUED_LANDS lands waiting: settling is the slower side on two cores,
and the run's thread waits for room rather than holding the verdicts of everything it judged
ahead.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from itertools import groupby
from types import TracebackType

from loader.db.connect import connect
from loader.flow.model import BatchInfo, Settlement, Verdict
from loader.flow.runtime.kill_points import KillPoints
from loader.flow.settle.engine import Settler
from loader.flow.settle.lanes import Keys, lanes
from loader.settings import Policy
from loader.tables import Table

Item = tuple[Table, BatchInfo, Verdict, Keys]
Settled = Callable[[Table, Settlement], None]
DONE = None
QUEUED_LANDS = 2
# Clean batches settled in one transaction, at most (`together`): enough that a group's round
# trips and locks are a small share of its upsert, few enough that a conflict settled again one
# by one or a crash loses little.
GROUP_BATCHES = 20
OFFER_SECONDS = 0.1


class SettleLine:
    """Settles the batches `put` to it, land after land, on `connections` connections to `url`
    in threads of its own."""

    def __init__(
        self,
        url: str,
        connections: int,
        run_id: str,
        policy: Policy,
        kill: KillPoints,
        settled: Settled,
    ):
        self.conns = [connect(url, autocommit=True) for _ in range(connections)]
        self.settlers = [Settler(conn, run_id, policy, kill) for conn in self.conns]
        self.settled = settled
        self.seconds = 0.0  # settling, for the summary's "promote"
        self._lanes = ThreadPoolExecutor(max(1, connections - 1), thread_name_prefix="settle-lane")
        self._queue: queue.Queue[list[Item] | None] = queue.Queue(QUEUED_LANDS)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._settle_all, name="settle-line", daemon=True)
        self._thread.start()

    def put(self, items: list[Item]) -> None:
        """Queue one land's batches for settlement, waiting while QUEUED_LANDS wait already;
        raises what the line failed with, if it did."""
        self._raise_failure()
        self._offer(items)
        self._raise_failure()

    def close(self) -> None:
        """Wait until every queued batch is settled; raises what the line failed with."""
        self._offer(DONE)
        self._end()
        self._raise_failure()

    def stop(self) -> None:
        """Settle nothing more (the batches being settled finish their transactions) and wait."""
        self._stop.set()
        self._offer(DONE)
        self._end()

    def _offer(self, items: list[Item] | None) -> None:
        """Queue `items` once there is room, unless the line has ended (failed or stopped):
        then nothing will take them, and waiting for room would never end."""
        while self._thread.is_alive():
            try:
                self._queue.put(items, timeout=OFFER_SECONDS)
                return
            except queue.Full:
                continue

    def _end(self) -> None:
        self._thread.join()
        self._lanes.shutdown()
        for conn in self.conns:
            conn.close()

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
                started = time.perf_counter()
                for _, batches in groupby(items, key=lambda item: item[0].name):
                    self._settle_table(list(batches))
                self.seconds += time.perf_counter() - started
        except BaseException as error:  # noqa: BLE001 - handed to the run's thread, raised there
            self._error = error

    def _settle_table(self, items: list[Item]) -> None:
        """One table's batches of a land, its lanes at once; returns when all are settled."""
        split = lanes(
            items, [item[3] for item in items], [item[1].rows for item in items], len(self.settlers)
        )
        others = [
            self._lanes.submit(self._settle_lane, settler, lane)
            for settler, lane in zip(self.settlers[1:], split[1:], strict=False)
        ]
        try:
            if split:
                self._settle_lane(self.settlers[0], split[0])
        finally:
            wait(others)
        for lane in others:
            lane.result()

    def _settle_lane(self, settler: Settler, items: list[Item]) -> None:
        try:
            for group in _until(self._stop, together(items)):
                table = group[0][0]
                passed = [(batch, verdict) for _, batch, verdict, _ in group]
                for settlement in settler.settle_together(table, passed):
                    self.settled(table, settlement)
        except BaseException:
            self._stop.set()  # the other lanes stop after their current group
            raise


def together(items: list[Item]) -> Iterator[list[Item]]:
    """A lane's batches (one table's, in file order) as groups to settle in one transaction
    each: runs of up to GROUP_BATCHES batches whose every row passed, of one raw copy, and
    whose key ranges do not overlap (one upsert may not touch a key twice); any other batch
    alone. The order is kept, so the later of two rows with one key still wins."""
    group: list[Item] = []
    for item in items:
        if group and not _joins(group, item):
            yield group
            group = []
        group.append(item)
        if not item[2].passed:
            yield group
            group = []
    if group:
        yield group


def _joins(group: list[Item], item: Item) -> bool:
    """Whether `item` may settle in the open `group` (whose batches all passed: `together`
    closes a group after any other batch)."""
    _, batch, verdict, keys = item
    first = group[0][1]
    return (
        verdict.passed
        and len(group) < GROUP_BATCHES
        and batch.raw_run_id == first.raw_run_id
        and not any(_overlap(keys, other[3]) for other in group)
    )


def _overlap(one: Keys, other: Keys) -> bool:
    return one is not None and other is not None and one[0] <= other[1] and other[0] <= one[1]


def _until(stop: threading.Event, groups: Iterator[list[Item]]) -> Iterator[list[Item]]:
    for group in groups:
        if stop.is_set():
            return
        yield group
