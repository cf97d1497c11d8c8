"""Requests that wait at the same moment are settled as one run, over real HTTP: one GX
checkpoint and one dlt load for all of them, and still one verdict, one settlement and one
answer per request."""

from __future__ import annotations

import threading
import time

import httpx
import psycopg
import pytest

from loader.db.locks import TABLE
from loader.flow.file_run import run_files
from loader.sample import write_sample
from tests.conftest import running_server, settings_for

pytestmark = pytest.mark.database

WRITE, READ = "batching-write", "batching-read"
BATCHES = "/tables/hired_employees/batches"
HEADERS = {"Authorization": f"Bearer {WRITE}"}


@pytest.fixture(scope="module")
def loaded(database_url, tmp_path_factory) -> str:
    """The module's database with departments and jobs (marts not built)."""
    folder = tmp_path_factory.mktemp("in")
    write_sample(folder, rows=50, broken_share=0)
    run_files(settings_for(database_url, tmp_path_factory.mktemp("run"), folder, build_marts=False))
    return database_url


@pytest.fixture(scope="module")
def api(loaded, tmp_path_factory):
    tokens = f"write:{WRITE},read:{READ}"
    with running_server(loaded, tmp_path_factory.mktemp("state"), tokens) as base:
        yield httpx.Client(base_url=base, timeout=120)


def hires(first_id: int, count: int) -> list[dict]:
    return [
        {
            "id": first_id + i,
            "name": f"Batched {first_id + i}",
            "datetime": "2022-03-03T09:00:00Z",
            "department_id": 1,
            "job_id": 1,
        }
        for i in range(count)
    ]


def one(url: str, query: str, *args):
    with psycopg.connect(url) as conn:
        return conn.execute(query, args).fetchone()[0]


def wait_for_lock_waiter(url: str) -> None:
    waiting = (
        "select count(*) from pg_stat_activity "
        "where wait_event_type = 'Lock' and wait_event = 'advisory' "
        "and datname = current_database()"
    )
    deadline = time.monotonic() + 60
    while one(url, waiting) == 0:
        assert time.monotonic() < deadline, "the settlement never reached the table lock"
        time.sleep(0.05)


def post_at_once(client: httpx.Client, bodies: list[list[dict]]):
    """Send every body at once; the answers (filled in as they come) and the senders."""
    answers: list[httpx.Response | None] = [None] * len(bodies)

    def send(index: int) -> None:
        answers[index] = client.post(BATCHES, json=bodies[index], headers=HEADERS)

    senders = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for sender in senders:
        sender.start()
    return answers, senders


def test_requests_waiting_together_are_one_run_and_each_batch_is_settled_on_its_own(api, loaded):
    # Every body numbers its rows from 1: each failing row must still be pinned to its own
    # batch, whatever the order the requests reached the run in.
    bad_time, bad_name = hires(600_300, 20), hires(600_400, 20)
    bad_time[2]["datetime"] = "2022-02-30T09:00:00Z"
    bad_name[5]["name"] = " "
    good = [hires(600_000, 20), hires(600_100, 20), hires(600_200, 20)]
    bodies = [*good, bad_time, good[1], bad_name]  # [4]: the same body as [1], sent at once
    # A restore of hired_employees holds its table lock: the first request's settlement waits
    # behind it, and the others queue up meanwhile.
    with psycopg.connect(loaded) as blocker:
        blocker.execute("select pg_advisory_xact_lock(%s, hashtext('hired_employees'))", (TABLE,))
        first, first_senders = post_at_once(api, [hires(600_900, 5)])
        wait_for_lock_waiter(loaded)
        answers, senders = post_at_once(api, bodies)
        time.sleep(2)  # every request parsed and waiting for the settler
        blocker.rollback()
    for sender in [*first_senders, *senders]:
        sender.join()
    assert first[0].status_code == 201

    statuses = [(answer.status_code, answer.json()["status"]) for answer in answers]
    promoted, rejected = (201, "promoted"), (200, "rejected")
    assert statuses == [promoted, promoted, promoted, rejected, promoted, rejected]
    replayed = [answer.json()["replayed"] for answer in answers]
    assert replayed[0] is replayed[2] is replayed[3] is replayed[5] is False
    assert sorted([replayed[1], replayed[4]]) == [False, True], "one settlement, one replay"
    assert answers[4].json()["batch_id"] == answers[1].json()["batch_id"]
    assert len({answer.json()["batch_id"] for answer in answers}) == 5
    for answer in [*answers[:3], answers[4]]:
        assert answer.json()["rows_promoted"] == 20 and answer.json()["failures"] == []
    assert answers[3].json()["rows_promoted"] == answers[5].json()["rows_promoted"] == 0
    assert answers[3].json()["failures"] == [
        {"index": 2, "field": "datetime", "rule": "a real instant (the day and time exist)"}
    ]
    assert answers[5].json()["failures"] == [
        {"index": 5, "field": "name", "rule": "required: present and non-empty"}
    ]

    batch_ids = [answers[i].json()["batch_id"] for i in (0, 1, 2, 3, 5)]
    with psycopg.connect(loaded) as conn:
        runs = conn.execute(
            "select distinct run_id from audit.batches where batch_id = any(%s)", (batch_ids,)
        ).fetchall()
        assert len(runs) == 1, "the batches waiting together were one run"
        (run_id,) = runs[0]
        assert conn.execute(
            "select input, status from audit.runs where run_id = %s", (run_id,)
        ).fetchone() == ("api:hired_employees", "completed")
        copies = conn.execute(
            "select _batch_id, count(*) from raw.hired_employees where _batch_id = any(%s) "
            "group by _batch_id",
            (batch_ids,),
        ).fetchall()
        assert sorted(n for _, n in copies) == [20] * 5, "each batch landed once"
        promoted = conn.execute(
            "select count(*) from core.hired_employees where id between 600000 and 600499"
        ).fetchone()[0]
        assert promoted == 60, "the good batches whole, nothing of the rejected ones"
    for batch_id, line in ((batch_ids[3], 3), (batch_ids[4], 6)):
        details = api.get(f"/batches/{batch_id}", headers={"Authorization": f"Bearer {READ}"})
        assert [row["line"] for row in details.json()["failing_rows"]] == [line]
