"""The long-lived processes send lineage too: the API server for each gathered run of batch
requests, `watch` for each run over what arrived; every event valid against the spec."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import psycopg
import pytest

from loader.sample import write_sample
from tests.conftest import REPO, running_server
from tests.ops.lineage_schema import validate
from tests.ops.test_lineage import Receiver, dataset, of_job, types

pytestmark = pytest.mark.database
DEADLINE_SECONDS = 120


@pytest.fixture()
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.stop()


@pytest.fixture()
def database(database_url) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        for schema in ("core", "audit", "raw"):
            conn.execute(f"drop schema if exists {schema} cascade")
    return database_url


def heard(receiver: Receiver, job: str, count: int) -> list[dict]:
    """The first `count` events of `job`, waited for."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while len(of_job(receiver.events, job)) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"{job}: {types(of_job(receiver.events, job))}")
        time.sleep(0.05)
    return of_job(receiver.events, job)[:count]


def test_an_api_batch_is_a_gathered_run_with_its_start_and_complete(database, tmp_path, receiver):
    state = tmp_path / "state"
    with running_server(database, state, "write:w-token", OPENLINEAGE_URL=receiver.url) as base:
        answer = httpx.post(
            f"{base}/tables/departments/batches",
            json=[{"id": 1, "department": "Supply Chain"}, {"id": 2, "department": ""}],
            headers={"Authorization": "Bearer w-token"},
            timeout=120,
        )
        assert answer.json()["status"] == "rejected", answer.text
        start, complete = heard(receiver, "csv_migrate.api_run", 2)
    for event in (start, complete):
        validate(event)
    assert types([start, complete]) == ["START", "COMPLETE"]
    assert start["run"]["runId"] == complete["run"]["runId"]
    (body,) = complete["inputs"]
    assert body["name"] == "api.departments"
    assertions = body["inputFacets"]["dataQualityAssertions"]["assertions"]
    assert any(not each["success"] and each.get("column") == "department" for each in assertions)
    core = dataset(complete["outputs"], f"{database.rsplit('/', 1)[1]}.core.departments")
    assert core["namespace"].startswith("postgres://127.0.0.1:")


def test_watch_sends_a_run_for_what_arrived(database, tmp_path, receiver):
    folder = tmp_path / "in"
    write_sample(folder, rows=200)
    watch = subprocess.Popen(
        [sys.executable, "-m", "loader", "watch", "--every", "0.2", "--skip-marts"],
        env={
            **os.environ,
            "DATABASE_URL": database,
            "LOADER_STATE_DIR": str(tmp_path / "state"),
            "LOADER_INPUT_DIR": str(folder),
            "OPENLINEAGE_URL": receiver.url,
        },
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        start, complete = heard(receiver, "csv_migrate.watch_run", 2)
    finally:
        watch.send_signal(signal.SIGTERM)
        _, errors = watch.communicate(timeout=120)
    assert watch.returncode == 0, errors
    for event in (start, complete):
        validate(event)
    assert types([start, complete]) == ["START", "COMPLETE"]
    files = {each["name"] for each in complete["inputs"]}
    assert files == {
        str(folder / f"{name}.csv") for name in ("departments", "jobs", "hired_employees")
    }
    assert {each["namespace"] for each in complete["inputs"]} == {"file"}
