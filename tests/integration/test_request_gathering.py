"""API requests gathered into one run, against a real PostgreSQL with dlt and a forked GX gate:
requests waiting at once are settled by one run (one `audit.runs` row), each caller gets its
own batch's settlement, and identical bodies are one batch, settled once."""

from __future__ import annotations

import io
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from loader.flow.api_run import RequestSettler
from loader.flow.model import BatchState, RawBatch
from loader.flow.source.csv_reader import read_stream
from loader.settings import Policy
from loader.tables import DEPARTMENTS, JOBS, Table
from tests.conftest import settings_for

pytestmark = pytest.mark.database

SECONDS = 120  # a bound on a run with GX and dlt, not a pause

REQUESTS = {
    "two departments": (DEPARTMENTS, b"1,Sales\n2,Legal\n"),
    "the same body again": (DEPARTMENTS, b"1,Sales\n2,Legal\n"),
    "a nameless department": (DEPARTMENTS, b"3,\n"),
    "a job": (JOBS, b"1,Clerk\n"),
}


class Arrivals(queue.Queue):
    """The settler's queue of waiting requests, telling when `expected` of them wait in it:
    started then, the settler finds them all waiting, however slowly the callers came."""

    def __init__(self, expected: int):
        super().__init__()
        self.expected = expected
        self.all_waiting = threading.Event()

    def _put(self, item) -> None:
        super()._put(item)
        if self._qsize() >= self.expected:
            self.all_waiting.set()


def body_batch(table: Table, body: bytes) -> RawBatch:
    """A request body read as the API reads a CSV body: one batch, its id from its bytes."""
    (batch,) = read_stream(io.BytesIO(body), f"api:POST /tables/{table.name}/batches", table, 1000)
    return batch


def test_requests_waiting_together_are_one_run_and_each_caller_gets_its_own_batch(clean, tmp_path):
    settler = RequestSettler(settings_for(clean, tmp_path / "state", tmp_path), clean)
    settler.waiting = Arrivals(len(REQUESTS))

    def call(table: Table, body: bytes):
        return settler.settle(table, body_batch(table, body), Policy.REJECT_BATCH)

    try:
        with ThreadPoolExecutor(len(REQUESTS)) as callers:
            calls = {name: callers.submit(call, *request) for name, request in REQUESTS.items()}
            assert settler.waiting.all_waiting.wait(SECONDS), "every caller is waiting"
            settler.start()
            answers = {name: found.result(timeout=SECONDS) for name, found in calls.items()}
    finally:
        if settler.thread.ident is None:
            settler.start()  # so that `stop` has a thread to stop
        settler.stop()

    with psycopg.connect(clean) as conn:
        runs = conn.execute("select run_id, input, status from audit.runs").fetchall()
        ledger = dict(conn.execute("select batch_id, run_id from audit.batches").fetchall())
        departments = conn.execute("select id from core.departments order by id").fetchall()
    assert len(runs) == 1, f"one run for the requests that waited together, not {runs}"
    ((run_id, label, status),) = runs
    assert (label, status) == ("api:departments,jobs", "completed")

    for name, (table, body) in REQUESTS.items():
        assert answers[name].batch.batch_id == body_batch(table, body).batch_id, name
    assert ledger == dict.fromkeys({answer.batch.batch_id for answer in answers.values()}, run_id)

    rejected = answers["a nameless department"]
    assert (rejected.status, rejected.rows_promoted, rejected.rows_rejected) == (
        BatchState.REJECTED,
        0,
        1,
    )
    assert answers["a job"].status == BatchState.PROMOTED
    same = [answers["two departments"], answers["the same body again"]]
    assert [(answer.status, answer.rows_promoted) for answer in same] == [
        (BatchState.PROMOTED, 2)
    ] * 2
    assert sorted(answer.replayed for answer in same) == [False, True], "settled once, shared"
    assert departments == [(1,), (2,)]
