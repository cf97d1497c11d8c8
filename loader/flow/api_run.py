"""API requests settled together: every request waiting at a moment goes through one `Run`.

A run's fixed costs are most of the time of a 1000-row request (profiled on two cores: about
0.8 s in the GX checkpoint and 0.6 s in the dlt run of each 1.5 s request). So one settling
thread takes every request that waits (after a short gather, up to MOST_BATCHES) and runs them
as one run: one checkpoint over all their rows, one dlt load, then one settlement transaction
per batch, as a file run does. Each request gets its own batch's settlement back through a
future; one batch held back changes nothing for the others. `audit.runs` gets one row per such
run, labelled by its tables.

Identical bodies are one batch id. The settling thread holds each batch's request lock (taken in
batch id order, so two servers on one database cannot deadlock) while it reads the ledger and
settles, on the run's own connection, so a batch is judged and loaded once: a request for a
batch the ledger has settled is answered from it (`replayed`), and several requests for one
batch in the same run share its settlement. A request whose caller has given up (504) is
settled all the same.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field, replace

import psycopg

from loader.db.connect import DatabaseUnavailable, connect, database_gone, lost_database
from loader.db.locks import request_lock
from loader.db.schema import ensure_schemas
from loader.flow.judge.gate_process import ForkedGate
from loader.flow.judge.renumbering import RenumberingGate
from loader.flow.land import RawLoader
from loader.flow.ledger import batch_states, mark_abandoned, recorded
from loader.flow.model import SETTLED, BatchInfo, BatchState, RawBatch, ReadCounts, Settlement
from loader.flow.pipeline import Run, Source
from loader.observe.events import Job, Observers
from loader.settings import EXPECTATIONS_DIR, Policy, Settings
from loader.tables import TABLES, Table

MOST_BATCHES = 50  # at most 50,000 rows: one GX pass (Settings.chunk_rows is larger)
# A run saved is worth a wait. The first request waits GATHER_FLOOR for others sent at the same
# moment. Clients answered by a run tend to send their next request at once: the settling
# thread also waits until as many requests have come since the last run's first answer as it
# answered, for up to GATHER_SHARE of that run's time (at most GATHER_SECONDS). On a busy
# machine the clients come back later, and the runs take longer too.
GATHER_FLOOR = 0.02
GATHER_SHARE = 0.25
GATHER_SECONDS = 0.5
STOP = None


@dataclass
class Request:
    """One API batch waiting to be settled, and where its settlement goes."""

    table: Table
    batch: RawBatch
    policy: Policy
    answer: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)

    @property
    def info(self) -> BatchInfo:
        return BatchInfo.of(self.batch)


class RequestSettler:
    """Settles API batches on one thread of its own, the requests waiting at once as one run.

    `settle` blocks its caller until its batch is settled; `start` and `stop` go with the
    server's life (stop once no request is waiting any more).
    """

    def __init__(self, settings: Settings, url: str, observers: Observers | None = None):
        """`observers` hear each gathered run start and end."""
        self.settings = settings
        self.url = url
        self.observers = observers or Observers()
        with connect(url, autocommit=True) as conn:
            ensure_schemas(conn)
            mark_abandoned(conn)
        # Checkpoints run in a process of their own while this one lands the same rows in raw.
        # Forked now: the server has started no thread yet.
        self.gate = RenumberingGate(ForkedGate(EXPECTATIONS_DIR, settings.gx_state_dir))
        self.raw = RawLoader(url, settings.dlt_dir / "api")
        self.gate_lock = threading.Lock()  # one run at a time; the data docs between runs
        self.docs_behind = False  # validations made that the data docs do not show yet
        self.waiting: queue.Queue[Request | None] = queue.Queue()
        # The last run's requests, its time, and when it gave its first answer.
        self.last_answered, self.last_seconds, self.answered_at = 0, 0.0, 0.0
        self.thread = threading.Thread(target=self._settle_waiting, name="requests", daemon=True)

    def gate_state(self) -> str:
        """What /readyz says of the gate: ok once its process runs with GX imported, else what
        it is doing (a dead one is replaced at the next request)."""
        if not self.gate.alive():
            return "the gate process is not running"
        if not self.gate.warm():
            return "starting: the gate process is importing Great Expectations"
        return "ok"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.waiting.put(STOP)
        self.thread.join()
        self.gate.close()

    def settle(self, table: Table, batch: RawBatch, policy: Policy) -> Settlement:
        """The batch's settlement: made now, or the earlier one (`replayed`). Blocks; raises
        DatabaseUnavailable when the database is gone (nothing of the batch was settled)."""
        request = Request(table, batch, policy)
        self.waiting.put(request)
        return request.answer.result()

    def build_docs(self) -> None:
        """Add the validations made since the last call to the GX data docs."""
        with self.gate_lock:
            if self.docs_behind:
                self.gate.build_docs()
                self.docs_behind = False

    def _settle_waiting(self) -> None:
        while True:
            requests = self._gather()
            if requests is None:
                return
            started, self.answered_at = time.monotonic(), math.inf
            for policy in dict.fromkeys(request.policy for request in requests):
                group = [request for request in requests if request.policy == policy]
                try:
                    self._settle_together(group, policy)
                except Exception as error:  # noqa: BLE001 - every caller gets its answer
                    failure = self._unavailable(error)
                    self.answered_at = min(self.answered_at, time.monotonic())
                    for request in group:
                        if not request.answer.done():
                            request.answer.set_exception(failure)
            self.last_answered, self.last_seconds = len(requests), time.monotonic() - started

    def _gather(self) -> list[Request] | None:
        """The requests waiting now and those that come soon after (see GATHER_FLOOR); None
        once told to stop."""
        first = self.waiting.get()
        if first is STOP:
            return None
        requests = [first]
        started = time.monotonic()
        floor = started + GATHER_FLOOR
        deadline = started + min(GATHER_SECONDS, GATHER_SHARE * self.last_seconds)
        while len(requests) < MOST_BATCHES:
            back = sum(request.arrived >= self.answered_at for request in requests)
            until = max(floor, deadline) if back < self.last_answered else floor
            patience = until - time.monotonic()
            try:
                if patience > 0:
                    request = self.waiting.get(timeout=patience)
                else:
                    request = self.waiting.get_nowait()
            except queue.Empty:
                break
            if request is STOP:
                self.waiting.put(STOP)  # after these are settled
                break
            requests.append(request)
        return requests

    def _settle_together(self, requests: list[Request], policy: Policy) -> None:
        """One run over the batches of `requests` the ledger has not settled; each request
        answered as soon as its batch's settlement is known."""
        by_id: dict[str, list[Request]] = {}
        for request in requests:
            by_id.setdefault(request.batch.batch_id, []).append(request)
        with connect(self.url, autocommit=True) as conn, ExitStack() as locks:
            for batch_id in sorted(by_id):
                locks.enter_context(request_lock(conn, batch_id))
            ledger = batch_states(conn, by_id)
            unsettled = [
                same[0] for batch_id, same in by_id.items() if ledger.get(batch_id) not in SETTLED
            ]
            settlements, failure = self._run(conn, unsettled, policy, ledger)
            for settlement in settlements:
                self._answer(by_id.pop(settlement.batch.batch_id), settlement)
            if failure is not None:
                raise failure
            for batch_id, same in by_id.items():
                earlier = recorded(conn, same[0].info)
                if earlier is None:
                    raise RuntimeError(f"batch {batch_id} is neither settled now nor earlier")
                self._answer(same, earlier)

    def _run(
        self,
        conn: psycopg.Connection,
        requests: list[Request],
        policy: Policy,
        ledger: dict[str, BatchState],
    ) -> tuple[list[Settlement], Exception | None]:
        """The batches' settlements from one run on `conn` (none without batches), and the
        error that stopped the run before it settled them all."""
        if not requests:
            return [], None
        tables = [table for table in TABLES if any(r.table == table for r in requests)]
        sources = {
            table: _source([r.batch for r in requests if r.table == table]) for table in tables
        }
        label = "api:" + ",".join(table.name for table in tables)
        batch_size = max(request.batch.rows for request in requests)
        with self.gate_lock:
            self.docs_behind = True
            run = Run(
                self.settings,
                conn,
                self.gate,
                self.raw,
                label,
                policy,
                batch_size,
                observers=self.observers,
                job=Job.API_RUN,
                inputs=[f"api:{table.name}" for table in tables],
                tables=[table.name for table in tables],
            )
            try:
                # Settled on `conn` itself (no settle line): its request locks have the keys of
                # the batch locks settling takes, which another session would wait for forever.
                run.load_and_settle(sources, ledger)
            except Exception as error:  # noqa: BLE001 - the batches settled before it count
                run.finish(error)
                return run.settlements, error
            run.finish()
        return run.settlements, None

    def _answer(self, requests: list[Request], settlement: Settlement) -> None:
        """The first request for a batch gets its settlement; any other for the same batch in
        the same run gets a replay of it, or, when it is not settled (waiting, failed), the same
        judgement."""
        self.answered_at = min(self.answered_at, time.monotonic())
        first, *others = requests
        first.answer.set_result(settlement)
        shared = replace(settlement, replayed=True) if settlement.status in SETTLED else settlement
        for request in others:
            request.answer.set_result(shared)

    def _unavailable(self, error: Exception) -> Exception:
        """DatabaseUnavailable (503) when the database does not answer, else `error` itself."""
        if isinstance(error, DatabaseUnavailable) or not database_gone(self.url):
            return error
        return lost_database(error, self.url, "nothing of the request was settled: send it again")


def _source(batches: list[RawBatch]) -> Source:
    """Batches as a run's source: the requests' bodies, counted as lines read."""

    def read(counts: ReadCounts) -> Iterable[RawBatch]:
        counts.lines = counts.rows = sum(batch.rows for batch in batches)
        return batches

    return batches[0].source, read
