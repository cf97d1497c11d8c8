"""The REST API over real HTTP against `python -m loader serve` on loopback."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import httpx
import psycopg
import pytest

from loader.api.idempotency import CLAIM_ATTEMPTS, IdempotencyKeys, KeyContended
from loader.flow.file_run import run_files
from loader.flow.ledger import recent_runs
from loader.sample import write_sample
from tests.conftest import REPO, running_server, settings_for

pytestmark = pytest.mark.database

READ, WRITE, ADMIN = "read-token", "write-token", "admin-token"


@pytest.fixture(scope="module")
def api(database_url, tmp_path_factory):
    """A loaded database (12 departments, 120 jobs) and a running server on it."""
    folder = tmp_path_factory.mktemp("in")
    write_sample(folder, rows=500, broken_share=0)
    state = tmp_path_factory.mktemp("state")
    run_files(settings_for(database_url, state, folder))
    admin_digest = hashlib.sha256(ADMIN.encode()).hexdigest()
    tokens = f"read:{READ},write:{WRITE},admin:sha256:{admin_digest}"
    with running_server(database_url, state, tokens) as base:
        yield httpx.Client(base_url=base, timeout=120), database_url


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def hires(first_id: int, count: int, department=1, when="2021-05-05T10:00:00Z") -> list[dict]:
    return [
        {
            "id": first_id + i,
            "name": f"API {first_id + i}",
            "datetime": when,
            "department_id": department,
            "job_id": 1 + i % 100,
        }
        for i in range(count)
    ]


def count(url: str, query: str, *args):
    with psycopg.connect(url) as conn:
        return conn.execute(query, args).fetchone()[0]


def test_one_and_a_thousand_rows_are_promoted_and_1001_refused(api):
    client, url = api
    one = client.post("/tables/hired_employees/batches", json=hires(10_000, 1), headers=auth(WRITE))
    assert one.status_code == 201 and one.json()["rows_promoted"] == 1
    full = client.post(
        "/tables/hired_employees/batches", json=hires(20_000, 1000), headers=auth(WRITE)
    )
    assert full.status_code == 201 and full.json()["rows_promoted"] == 1000
    assert (
        count(url, "select count(*) from core.hired_employees where id between 20000 and 20999")
        == 1000
    )
    over = client.post(
        "/tables/hired_employees/batches", json=hires(30_000, 1001), headers=auth(WRITE)
    )
    assert over.status_code == 413
    assert count(url, "select count(*) from core.hired_employees where id >= 30000") == 0


def test_csv_body_goes_through_the_same_path(api):
    client, url = api
    body = "40001,Csv Person,2021-02-02T02:02:02Z,2,3\n40002,,2021-02-02T02:02:02Z,2,3\n"
    answer = client.post(
        "/tables/hired_employees/batches?policy=quarantine_rows",
        content=body,
        headers={**auth(WRITE), "Content-Type": "text/csv"},
    )
    assert answer.status_code == 201
    assert answer.json()["failures"] == [
        {"index": 1, "field": "name", "rule": "required: present and non-empty"}
    ]
    assert count(url, "select count(*) from core.hired_employees where id in (40001, 40002)") == 1


def test_one_bad_row_rejects_the_batch_or_only_itself_by_policy(api):
    client, url = api
    rows = hires(50_000, 5)
    rows[3]["datetime"] = "2021-02-30T00:00:00Z"
    rejected = client.post("/tables/hired_employees/batches", json=rows, headers=auth(WRITE))
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    assert rejected.json()["failures"] == [
        {"index": 3, "field": "datetime", "rule": "a real instant (the day and time exist)"}
    ]
    assert (
        count(url, "select count(*) from core.hired_employees where id >= 50000 and id < 50005")
        == 0
    )
    batch = rejected.json()["batch_id"]
    assert count(url, "select status from audit.batches where batch_id = %s", batch) == "rejected"
    assert count(url, "select line_number from audit.rejected_rows where batch_id = %s", batch) == 4
    partial = client.post(
        "/tables/hired_employees/batches?policy=quarantine_rows", json=rows, headers=auth(WRITE)
    )
    assert partial.status_code == 201 and partial.json()["status"] == "partially_promoted"
    assert (
        count(url, "select count(*) from core.hired_employees where id >= 50000 and id < 50005")
        == 4
    )
    details = client.get(f"/batches/{partial.json()['batch_id']}", headers=auth(READ)).json()
    assert details["rows_rejected"] == 1 and details["failing_rows"][0]["line"] == 4
    run = client.get(f"/runs/{details['run_id']}", headers=auth(READ)).json()
    assert run["status"] == "completed" and run["input"] == "api:hired_employees"


def test_unknown_department_is_held_back_waiting_with_its_rule(api):
    client, _ = api
    answer = client.post(
        "/tables/hired_employees/batches",
        json=hires(60_000, 2, department=999),
        headers=auth(WRITE),
    )
    assert answer.status_code == 200 and answer.json()["status"] == "waiting"
    assert {f["rule"] for f in answer.json()["failures"]} == {"exists in departments"}


def dashboard_data(client: httpx.Client) -> dict:
    """The numbers the dashboard page was drawn from (its embedded JSON)."""
    page = client.get("/dashboard", headers=auth(READ))
    assert page.status_code == 200
    found = re.search(
        r'<script type="application/json" id="dashboard-data">(.*?)</script>', page.text
    )
    return json.loads(found.group(1))


def test_the_dashboard_counts_a_run_by_its_summary_after_another_run_settles_its_batch(api):
    client, url = api
    body = hires(65_000, 2, department=997)
    batches = "/tables/hired_employees/batches"
    waiting = client.post(batches, json=body, headers=auth(WRITE))
    assert waiting.status_code == 200 and waiting.json()["status"] == "waiting"
    batch = f"/batches/{waiting.json()['batch_id']}"
    first_run = client.get(batch, headers=auth(READ)).json()["run_id"]
    department = [{"id": 997, "department": "Came Later"}]
    assert (
        client.post("/tables/departments/batches", json=department, headers=auth(WRITE)).status_code
        == 201
    )
    promoted = client.post(batches, json=body, headers=auth(WRITE))
    assert promoted.status_code == 201 and not promoted.json()["replayed"]
    second_run = client.get(batch, headers=auth(READ)).json()["run_id"]
    assert second_run != first_run, "the ledger's batch now names the run that promoted it"

    shown = {run["run_id"]: run for run in dashboard_data(client)["runs"]}
    with psycopg.connect(url) as conn:
        listed = {run["run_id"]: run for run in recent_runs(conn, 20)}
    for run_id, held_back, verdicts in ((first_run, 2, (0, 0, 0)), (second_run, 0, (1, 0, 0))):
        page, cli = shown[run_id], listed[run_id]
        rows = (page["rows_read"], page["rows_held_back"])
        assert rows == (cli["rows_read"], cli["rows_held_back"]) == (2, held_back), run_id
        assert (page["promoted"], page["partial"], page["rejected"]) == verdicts, run_id
    totals = client.get(f"/runs/{first_run}", headers=auth(READ)).json()["summary"]["totals"]
    assert (totals["rows_read"], totals["rows_held_back"], totals["batches_waiting"]) == (2, 2, 1)


def test_a_retry_with_the_same_idempotency_key_gets_the_first_answer_without_writing(api):
    client, url = api
    headers = {**auth(WRITE), "Idempotency-Key": "retry-1"}
    first = client.post("/tables/hired_employees/batches", json=hires(70_000, 3), headers=headers)
    runs = count(url, "select count(*) from audit.runs")
    again = client.post("/tables/hired_employees/batches", json=hires(70_000, 3), headers=headers)
    assert again.status_code == first.status_code == 201
    assert again.json()["batch_id"] == first.json()["batch_id"] and again.json()["replayed"]
    assert count(url, "select count(*) from audit.runs") == runs
    other = client.post("/tables/hired_employees/batches", json=hires(71_000, 3), headers=headers)
    assert other.status_code == 422 and "another body" in other.json()["detail"]


class VanishingKey:
    """A pool whose key is never claimable, yet gone each time it is looked up: as if other
    requests kept taking it and letting it go between a claim's two statements."""

    def __init__(self):
        self.statements = 0

    @contextmanager
    def connection(self, overflow: bool = False):
        yield self

    def execute(self, query: str, parameters=None):
        self.statements += 1
        return self

    def fetchone(self):
        return None


def test_a_key_released_under_every_claim_is_given_up_after_a_few_attempts():
    pool = VanishingKey()
    with pytest.raises(KeyContended, match="send the request again"):
        IdempotencyKeys(pool).claim("contended", "digest")
    assert pool.statements == 2 * CLAIM_ATTEMPTS, "a bounded number of tries, then a clear error"


def test_fifty_identical_requests_at_once_settle_once_and_the_rest_replay_the_first_answer(api):
    client, url = api
    body = hires(80_000, 1000)
    answers: list[httpx.Response] = []

    def send(number: int) -> None:
        # No key, one shared key, and keys of their own: the body decides, not the key.
        headers = auth(WRITE)
        if number % 3 == 1:
            headers = {**headers, "Idempotency-Key": "same-for-all"}
        elif number % 3 == 2:
            headers = {**headers, "Idempotency-Key": f"own-{number}"}
        answers.append(client.post("/tables/hired_employees/batches", json=body, headers=headers))

    senders = [threading.Thread(target=send, args=(n,)) for n in range(50)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()

    assert sorted({answer.status_code for answer in answers}) == [201]
    batch_ids = {answer.json()["batch_id"] for answer in answers}
    assert len(batch_ids) == 1
    assert sum(not answer.json()["replayed"] for answer in answers) == 1
    (batch_id,) = batch_ids
    assert (
        count(url, "select count(*) from raw.hired_employees where _batch_id = %s", batch_id)
        == 1000
    )
    assert count(url, "select count(*) from audit.batches where batch_id = %s", batch_id) == 1
    assert (
        count(url, "select count(*) from core.hired_employees where id between 80000 and 80999")
        == 1000
    )
    assert (
        count(
            url,
            "select count(*) from audit.runs where status <> 'completed' and input like 'api:%%'",
        )
        == 0
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"id": "1"},
        {"id": True},
        {"id": 1.0},
        {"datetime": 1609459200},
        {"id": 2**31},
        {"extra": "x"},
    ],
)
def test_strict_request_models_refuse_loose_values(api, bad):
    client, _ = api
    row = {**hires(90_000, 1)[0], **bad}
    answer = client.post("/tables/hired_employees/batches", json=[row], headers=auth(WRITE))
    assert answer.status_code == 422
    assert "Traceback" not in answer.text


def test_tokens_and_scopes(api):
    client, _ = api
    body = hires(95_000, 1)
    assert client.post("/tables/jobs/batches", json=body).status_code == 401
    assert client.post(f"/tables/jobs/batches?token={WRITE}", json=body).status_code == 401
    assert client.post("/tables/jobs/batches", json=body, headers=auth(READ)).status_code == 403
    assert client.post("/backups", headers=auth(WRITE)).status_code == 403
    assert client.get(f"/reports/hires-by-quarter?token={READ}").status_code == 200
    assert client.get("/reports/hires-by-quarter?token=nope").status_code == 401
    host, port = client.base_url.host, client.base_url.port
    raw = http.client.HTTPConnection(host, port, timeout=30)
    raw.putrequest("GET", "/reports/hires-by-quarter")
    raw.putheader("Authorization", "Bearer ünïcode".encode())
    raw.endheaders()
    assert raw.getresponse().status == 401


def test_unknown_table_oversized_body_and_health(api):
    client, _ = api
    assert client.post("/tables/nope/batches", json=[{}], headers=auth(WRITE)).status_code == 404
    huge = b"[" + b" " * (3 * 1024 * 1024) + b"]"
    assert client.post("/tables/jobs/batches", content=huge, headers=auth(WRITE)).status_code == 413
    assert client.get("/healthz").json() == {"status": "ok"}


def test_reports_equal_the_marts_and_follow_an_accepted_insert(api):
    client, url = api
    before = client.get("/reports/departments-above-mean?year=2021", headers=auth(READ)).json()
    with psycopg.connect(url) as conn:
        marts = conn.execute(
            "select id, department, hired from marts.departments_above_mean "
            "where year = 2021 order by hired desc, id"
        ).fetchall()
        department = conn.execute(
            "select department from core.departments where id = 12"
        ).fetchone()[0]
    assert [tuple(r.values()) for r in before["rows"]] == marts

    def fourth_quarter() -> int:
        report = client.get("/reports/hires-by-quarter?year=2021", headers=auth(READ)).json()
        return sum(row["Q4"] for row in report["rows"] if row["department"] == department)

    q4 = fourth_quarter()
    inserted = client.post(
        "/tables/hired_employees/batches",
        json=hires(200_000, 500, department=12, when="2021-11-11T11:11:11Z"),
        headers=auth(WRITE),
    )
    assert inserted.status_code == 201
    deadline = time.time() + 90
    while time.time() < deadline:
        after = client.get("/reports/departments-above-mean?year=2021", headers=auth(READ))
        if fourth_quarter() == q4 + 500 and after.json()["as_of"] > before["as_of"]:
            break
        time.sleep(1)
    assert fourth_quarter() == q4 + 500, "the insert did not reach the report"
    assert after.json()["as_of"] > before["as_of"], "the answer says its data is newer"
    assert after.headers["X-Data-As-Of"] == after.json()["as_of"]
    csv_answer = client.get(
        "/reports/hires-by-quarter?year=2021", headers={**auth(READ), "Accept": "text/csv"}
    )
    assert csv_answer.text.splitlines()[0] == "department,job,Q1,Q2,Q3,Q4"


def test_backup_and_restore_through_the_api(api):
    client, url = api
    made = client.post("/backups", headers=auth(ADMIN))
    assert made.status_code == 201
    title = count(url, "select job from core.jobs where id = 120")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("update core.jobs set job = 'changed' where id = 120")
    restored = client.post(
        "/tables/jobs/restore", json={"from": made.json()["stamp"]}, headers=auth(ADMIN)
    )
    assert restored.status_code == 200, restored.text
    assert count(url, "select job from core.jobs where id = 120") == title


def test_the_server_refuses_to_start_without_tokens(database_url, tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "LOADER_STATE_DIR": str(tmp_path),
        "LOADER_API_TOKENS": "",
    }
    result = subprocess.run(
        [sys.executable, "-m", "loader", "serve", "--port", "9"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2 and "--insecure-dev" in result.stderr
