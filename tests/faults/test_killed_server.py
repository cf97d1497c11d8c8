"""An API server SIGKILLed between landing a request's rows in raw and settling them: its gate
process dies with it, and the same body sent to a new server is settled once, its raw copy
reused rather than landed again. A server whose gate process alone was killed starts another."""

from __future__ import annotations

import httpx
import psutil
import pytest

from loader.flow.runtime.kill_points import AFTER_RAW_LOAD
from tests.conftest import running_server
from tests.faults.conftest import assert_abandoned, processes_left, query

pytestmark = [pytest.mark.database, pytest.mark.faults]

WRITE = "write-token"
HIRES = 1000


def hires_body() -> list[dict]:
    """A full batch with one row that breaks a rule (quarantined under quarantine_rows)."""
    rows = [
        {
            "id": 1 + i,
            "name": f"Person {i}",
            "datetime": "2021-03-04T05:06:07Z",
            "department_id": 1 + i % 2,
            "job_id": 1,
        }
        for i in range(HIRES)
    ]
    rows[7]["datetime"] = "2021-02-30T00:00:00Z"
    return rows


def test_a_server_killed_after_landing_leaves_no_gate_and_the_resent_body_settles_once(
    fresh_database, tmp_path
):
    url, state = fresh_database, tmp_path / "state"
    post = "/tables/{}/batches?policy=quarantine_rows"
    headers = {"Authorization": f"Bearer {WRITE}"}
    with running_server(url, state, f"write:{WRITE}") as base:
        client = httpx.Client(base_url=base, timeout=120, headers=headers)
        departments = [{"id": 1, "department": "Sales"}, {"id": 2, "department": "Legal"}]
        assert client.post(post.format("departments"), json=departments).status_code == 201
        assert client.post(post.format("jobs"), json=[{"id": 1, "job": "Clerk"}]).status_code == 201
    with running_server(url, state, f"write:{WRITE}", LOADER_KILL_AT=AFTER_RAW_LOAD) as base:
        client = httpx.Client(base_url=base, timeout=120, headers=headers)
        with pytest.raises(httpx.TransportError):
            client.post(post.format("hired_employees"), json=hires_body())
        port = int(base.rsplit(":", 1)[1])
        assert not processes_left("loader", "serve", str(port)), "its gate process died too"

    raw_rows = "select count(*) from raw.hired_employees"
    assert query(url, raw_rows) == [(HIRES,)], "the killed server landed the rows in raw"
    assert query(url, "select count(*) from core.hired_employees") == [(0,)]
    (killed_run,) = query(url, "select run_id from audit.runs where status = 'running'")[0]

    with running_server(url, state, f"write:{WRITE}") as base:
        client = httpx.Client(base_url=base, timeout=120, headers=headers)
        again = client.post(post.format("hired_employees"), json=hires_body())
    assert again.status_code == 201, again.text
    answer = again.json()
    assert (answer["rows_promoted"], answer["rows_rejected"]) == (HIRES - 1, 1)
    assert query(url, raw_rows) == [(HIRES,)], "the raw copy was reused, not landed twice"
    assert query(url, "select count(*) from core.hired_employees") == [(HIRES - 1,)]
    assert query(
        url, "select count(*) from audit.batches where table_name = 'hired_employees'"
    ) == [(1,)]
    assert_abandoned(url, killed_run)


def test_a_server_whose_gate_process_was_killed_settles_the_next_request(fresh_database, tmp_path):
    url = fresh_database
    with running_server(url, tmp_path / "state", f"write:{WRITE}") as base:
        port = base.rsplit(":", 1)[1]
        (gate,) = [
            process
            for process in psutil.process_iter(["cmdline"])
            if serves(process, port) and serves(process.parent(), port)
        ]
        gate.kill()
        # Returns once the server has reaped its gate, which its process pool does only after
        # marking itself broken: the next request's submit then starts another gate.
        gate.wait(10)
        client = httpx.Client(
            base_url=base, timeout=120, headers={"Authorization": f"Bearer {WRITE}"}
        )
        answer = client.post("/tables/departments/batches", json=[{"id": 1, "department": "Sales"}])
        assert answer.status_code == 201, answer.text
        assert len(processes_left("loader", "serve", port, patience=0)) == 2, "a new gate runs"
    assert query(url, "select count(*) from core.departments") == [(1,)]


def serves(process: psutil.Process | None, port: str) -> bool:
    """Whether `process` is a `loader serve` on `port` (a server, or its forked gate)."""
    try:
        words = process.cmdline() if process is not None else []
    except psutil.Error:
        return False
    return "serve" in words and port in words
