"""The REST API against abuse, over real HTTP (OWASP API Security Top 10 as the checklist):
body limits however the body arrives, timeouts that keep an Idempotency-Key bound to the work,
status codes that tell a malformed request from a rejected batch, response models everywhere,
throttled token guessing, tokens in URLs, and a bounded connection pool."""

from __future__ import annotations

import hashlib
import http.client
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

READ, WRITE, ADMIN = "abuse-read", "abuse-write", "abuse-admin"
TOKENS = f"read:{READ},write:{WRITE},admin:{ADMIN}"
BATCHES = "/tables/hired_employees/batches"


@pytest.fixture(scope="module")
def loaded(database_url, tmp_path_factory) -> str:
    """The module's database with departments, jobs and some hires (marts not built)."""
    folder = tmp_path_factory.mktemp("in")
    write_sample(folder, rows=200, broken_share=0)
    run_files(settings_for(database_url, tmp_path_factory.mktemp("run"), folder, build_marts=False))
    return database_url


@pytest.fixture(scope="module")
def api(loaded, tmp_path_factory):
    """A server with the default settings."""
    with running_server(loaded, tmp_path_factory.mktemp("state"), TOKENS) as base:
        yield httpx.Client(base_url=base, timeout=120)


@pytest.fixture()
def server(loaded, tmp_path):
    """Start a server of the test's own with some settings changed: `server(**variables)`."""
    started = []

    def start(**variables: str) -> httpx.Client:
        context = running_server(loaded, tmp_path / f"state{len(started)}", TOKENS, **variables)
        started.append(context)
        return httpx.Client(base_url=context.__enter__(), timeout=120)

    yield start
    for context in reversed(started):
        context.__exit__(None, None, None)


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def hires(first_id: int, count: int, department: int = 1) -> list[dict]:
    return [
        {
            "id": first_id + i,
            "name": f"Abuse {first_id + i}",
            "datetime": "2021-05-05T10:00:00Z",
            "department_id": department,
            "job_id": 1 + i % 20,
        }
        for i in range(count)
    ]


def one(url: str, query: str, *args):
    with psycopg.connect(url) as conn:
        return conn.execute(query, args).fetchone()[0]


def chunked_post(client: httpx.Client, path: str, chunks, headers: dict) -> tuple[int, bytes]:
    """POST with `Transfer-Encoding: chunked` (no Content-Length), the way http.client sends it."""
    connection = http.client.HTTPConnection(client.base_url.host, client.base_url.port, timeout=60)
    connection.putrequest("POST", path)
    for name, value in {**headers, "Transfer-Encoding": "chunked"}.items():
        connection.putheader(name, value)
    connection.endheaders()
    try:
        for chunk in chunks:
            connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        connection.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered before the client finished sending, and closed
    response = connection.getresponse()
    status, body = response.status, response.read()
    connection.close()
    return status, body


def test_a_chunked_body_over_the_limit_gets_413_like_a_declared_one(api):
    headers = {**auth(WRITE), "Content-Type": "application/json"}
    status, body = chunked_post(api, BATCHES, [b" " * 65536] * 48, headers)  # 3 MiB
    assert status == 413 and b"request body over 2097152 bytes" in body
    declared = api.post(BATCHES, content=b" " * (3 * 1024 * 1024), headers=headers)
    assert declared.status_code == 413 and declared.json() == {
        "detail": "request body over 2097152 bytes"
    }
    rows = httpx.Request("POST", "/", json=hires(300_000, 3)).content
    status, body = chunked_post(api, BATCHES, [rows[:10], rows[10:]], headers)
    assert status == 201, body


def test_held_back_batches_answer_200_and_only_malformed_requests_422(api, loaded):
    rejected_rows = hires(310_000, 3)
    rejected_rows[1]["datetime"] = "2021-02-30T00:00:00Z"
    keyed = {**auth(WRITE), "Idempotency-Key": "held-back-1"}
    rejected = api.post(BATCHES, json=rejected_rows, headers=keyed)
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["status"] == "rejected" and not rejected.json()["replayed"]
    assert rejected.json()["failures"] == [
        {"index": 1, "field": "datetime", "rule": "a real instant (the day and time exist)"}
    ]
    replay = api.post(BATCHES, json=rejected_rows, headers=keyed)
    assert replay.status_code == 200 and replay.json()["replayed"]
    assert replay.json()["batch_id"] == rejected.json()["batch_id"]
    from_ledger = api.post(BATCHES, json=rejected_rows, headers=auth(WRITE))
    assert from_ledger.status_code == 200 and from_ledger.json()["replayed"]

    waiting = api.post(BATCHES, json=hires(320_000, 2, department=999), headers=auth(WRITE))
    assert waiting.status_code == 200 and waiting.json()["status"] == "waiting"
    assert one(loaded, "select count(*) from core.hired_employees where id >= 310000") == 0

    malformed = [
        api.post(BATCHES, json=[{**hires(330_000, 1)[0], "id": "1"}], headers=auth(WRITE)),
        api.post(BATCHES, json={"id": 1}, headers=auth(WRITE)),
        api.post(BATCHES, json=[], headers=auth(WRITE)),
        api.post(BATCHES, content=b"[{", headers=auth(WRITE)),
        api.post(
            BATCHES,
            content=b"330001,Too,2021-01-01T00:00:00Z,1,1,extra\n",
            headers={**auth(WRITE), "Content-Type": "text/csv"},
        ),
        api.post(BATCHES, json=hires(330_000, 1), headers={**keyed, "Idempotency-Key": "k" * 300}),
    ]
    for answer in malformed:
        assert answer.status_code == 422, answer.text
        assert set(answer.json()) == {"detail"}
    assert one(loaded, "select count(*) from core.hired_employees where id >= 330000") == 0


def test_a_nul_in_json_is_a_kept_and_rejected_row_and_a_lone_surrogate_is_malformed(api, loaded):
    row = (
        b'{"id": %d, "name": "%s", "datetime": "2021-01-01T00:00:00Z", '
        b'"department_id": 1, "job_id": 1}'
    )
    body = b"[" + b", ".join([row % (340000, b"A\\u0000B"), row % (340001, b"Fine")]) + b"]"
    headers = {**auth(WRITE), "Content-Type": "application/json"}
    answer = api.post(f"{BATCHES}?policy=quarantine_rows", content=body, headers=headers)
    assert answer.status_code == 201, answer.text
    assert answer.json()["rows_promoted"] == 1
    assert [(f["index"], f["rule"]) for f in answer.json()["failures"]] == [
        (0, "the line is UTF-8 text without NUL bytes")
    ]
    assert one(loaded, "select count(*) from raw.hired_employees where id like '34000%%'") == 2

    surrogate = api.post(BATCHES, content=b"[" + row % (340002, b"\\ud800") + b"]", headers=headers)
    assert surrogate.status_code == 422 and "JSON" in surrogate.text


def test_a_waiting_answer_is_not_final_for_its_idempotency_key(api, loaded):
    body = hires(340_000, 2, department=998)
    headers = {**auth(WRITE), "Idempotency-Key": "waiting-1"}
    first = api.post(BATCHES, json=body, headers=headers)
    assert first.status_code == 200 and first.json()["status"] == "waiting"
    again = api.post(BATCHES, json=body, headers=headers)
    assert again.status_code == 200 and again.json()["status"] == "waiting"
    assert not again.json()["replayed"], "judged again, not replayed"
    department = [{"id": 998, "department": "Arrived Later"}]
    assert (
        api.post("/tables/departments/batches", json=department, headers=auth(WRITE)).status_code
        == 201
    )
    promoted = api.post(BATCHES, json=body, headers=headers)
    assert promoted.status_code == 201 and not promoted.json()["replayed"]
    replay = api.post(BATCHES, json=body, headers=headers)
    assert replay.status_code == 201 and replay.json()["replayed"], "settled: final"
    assert one(loaded, "select count(*) from core.hired_employees where id >= 340000") == 2


def test_openapi_documents_every_answer_with_a_model_and_the_bearer_scheme(api):
    spec = api.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Every endpoint: `Authorization: Bearer <token>`.",
    }
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            for code, response in operation["responses"].items():
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                if code.startswith(("4", "5")) and path != "/dashboard":
                    assert schema is not None, f"{where} {code} has no model"
                if code.startswith("2") and path != "/dashboard":
                    assert schema and ("$ref" in schema or "anyOf" in schema), f"{where} {code}"
            if path not in ("/healthz", "/readyz", "/dashboard"):
                assert {"HTTPBearer": []} in operation["security"], where
    refs = {
        str(code): response["content"]["application/json"]["schema"]
        for code, response in spec["paths"][BATCHES.replace("hired_employees", "{table}")]["post"][
            "responses"
        ].items()
        if "content" in response
    }
    assert refs["422"] == {"$ref": "#/components/schemas/ErrorDetail"}
    assert refs["200"] == refs["201"] == {"$ref": "#/components/schemas/BatchAnswer"}

    def untyped(node, where: str):
        if isinstance(node, dict):
            if node.get("type") == "object" and not (
                node.get("properties") or isinstance(node.get("additionalProperties"), dict)
            ):
                yield where
            for key, value in node.items():
                yield from untyped(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield from untyped(value, f"{where}[{index}]")

    assert list(untyped(spec, "")) == []


def test_a_timed_out_insert_keeps_its_key_and_a_retry_gets_the_real_outcome(server, loaded):
    client = server(LOADER_API_REQUEST_SECONDS="2")
    body = hires(400_000, 50)
    headers = {**auth(WRITE), "Idempotency-Key": "slow-1"}
    api_runs = "select count(*) from audit.runs where input = 'api:hired_employees'"
    runs_before = one(loaded, api_runs)
    # A restore of hired_employees holds its table lock: the settlement waits behind it.
    with psycopg.connect(loaded) as blocker:
        blocker.execute("select pg_advisory_xact_lock(%s, hashtext('hired_employees'))", (TABLE,))
        started = time.monotonic()
        first = client.post(BATCHES, json=body, headers=headers)
        assert first.status_code == 504 and time.monotonic() - started < 10
        assert "same Idempotency-Key" in first.json()["detail"]
        retry = client.post(BATCHES, json=body, headers=headers)
        assert retry.status_code == 504, "the key is still bound to the first request's work"
        assert one(loaded, "select count(*) from core.hired_employees where id >= 400000") == 0
        assert one(loaded, api_runs) == runs_before + 1, "the retry started no settlement"
        blocker.rollback()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # no request needed: the work goes on by itself
        stored = one(
            loaded, "select status_code from audit.api_requests where idempotency_key = 'slow-1'"
        )
        if stored is not None:
            break
        time.sleep(0.2)
    assert stored == 201
    assert one(loaded, "select count(*) from core.hired_employees where id >= 400000") == 50
    outcome = client.post(BATCHES, json=body, headers=headers)
    assert outcome.status_code == 201 and outcome.json()["replayed"]
    assert outcome.json()["status"] == "promoted" and outcome.json()["rows_promoted"] == 50
    batch = outcome.json()["batch_id"]
    assert one(loaded, "select count(*) from audit.batches where batch_id = %s", batch) == 1
    assert one(loaded, "select count(*) from raw.hired_employees where _batch_id = %s", batch) == 50
    assert one(loaded, api_runs) == runs_before + 1, "settled once"


def test_database_work_runs_off_the_event_loop(api, loaded):
    """While an Idempotency-Key claim waits on the database, other requests are served."""
    body = hires(410_000, 2)
    digest = hashlib.sha256(httpx.Request("POST", "/", json=body).content).hexdigest()
    answers = []
    with psycopg.connect(loaded) as holder:
        holder.execute(
            "insert into audit.api_requests (idempotency_key, body_sha256) values ('loop-1', %s)",
            (digest,),
        )
        sender = threading.Thread(
            target=lambda: answers.append(
                api.post(BATCHES, json=body, headers={**auth(WRITE), "Idempotency-Key": "loop-1"})
            )
        )
        sender.start()
        waiting = (
            "select count(*) from pg_stat_activity "
            "where wait_event_type = 'Lock' and query like '%%api_requests%%'"
        )
        deadline = time.monotonic() + 30
        while one(loaded, waiting) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert one(loaded, waiting) == 1, "the claim waits on the uncommitted key"
        # Answered while the claim still waits: a blocked event loop would answer nothing
        # until the key is let go below, and these would run out of time instead.
        with httpx.Client(base_url=api.base_url, timeout=60) as probe:
            try:
                assert probe.get("/healthz").status_code == 200
                assert probe.get("/reports/hires-by-quarter", headers=auth(READ)).status_code == 200
            except httpx.TimeoutException:
                pytest.fail("the event loop was blocked by a claim waiting on the database")
        assert answers == [] and one(loaded, waiting) == 1, "the claim was still waiting"
        holder.rollback()
    sender.join()
    assert answers[0].status_code == 201 and not answers[0].json()["replayed"]


def test_failed_authentication_is_throttled_per_client_address(server):
    # A window no test run outlasts: the failures are all still in it when the server answers.
    # That it ends after Retry-After is tested on a test clock (tests/unit/test_throttle.py).
    client = server(LOADER_API_AUTH_FAILURES="3", LOADER_API_AUTH_WINDOW_SECONDS="3600")
    report = "/reports/departments-above-mean"
    for _ in range(3):
        assert client.get(report, headers=auth("guess")).status_code == 401
    throttled = client.get(report, headers=auth(READ))
    assert throttled.status_code == 429, "even a right guess is refused while throttled"
    wait = int(throttled.headers["Retry-After"])
    assert 1 <= wait <= 3600 and "too many failed authentications" in throttled.json()["detail"]
    assert client.get(f"{report}?token=guess").status_code == 429
    other = httpx.Client(
        base_url=client.base_url,
        transport=httpx.HTTPTransport(local_address="127.0.0.2"),
        timeout=30,
    )
    assert other.get(report, headers=auth(READ)).status_code == 200
    assert other.get(report, headers=auth("guess")).status_code == 401
    assert client.get("/healthz").status_code == 200, "endpoints without a token stay open"


def test_only_read_tokens_are_accepted_in_a_url(api):
    for path in ("/reports/hires-by-quarter", "/reports/departments-above-mean"):
        assert api.get(f"{path}?token={READ}").status_code == 200
        assert api.get(path, headers=auth(WRITE)).status_code == 200, "write covers read"
        for token, scope in ((WRITE, "write"), (ADMIN, "admin")):
            refused = api.get(f"{path}?token={token}")
            assert refused.status_code == 401
            assert refused.json()["detail"].startswith(f"a {scope} token is refused in a URL")
    page = api.get(f"/dashboard?token={ADMIN}", follow_redirects=False)
    assert page.status_code == 401 and "admin token is refused in a URL" in page.text
    assert ADMIN not in page.headers.get("set-cookie", ""), "not kept in a cookie either"
    docs = api.get(f"/data-docs/index.html?token={WRITE}")
    assert docs.status_code == 401 and "refused in a URL" in docs.text
    posted = api.post(f"{BATCHES}?token={WRITE}", json=hires(420_000, 1))
    assert posted.status_code == 401 and "Authorization: Bearer" in posted.json()["detail"]
    moved = api.get(f"/dashboard?token={READ}", follow_redirects=False)
    assert moved.status_code == 303 and "loader_token" in moved.headers["set-cookie"]
    api.cookies.clear()


def test_the_token_prompt_shows_the_header_to_send(api):
    api.cookies.clear()
    prompt = api.get("/dashboard")
    assert prompt.status_code == 401 and prompt.headers["content-type"].startswith("text/html")
    assert "Authorization: Bearer &lt;token&gt;" in prompt.text
    assert "<token>" not in prompt.text


def test_the_api_shares_a_bounded_pool_and_answers_503_when_it_is_exhausted(server, loaded):
    sessions = (
        "select coalesce(array_agg(pid order by pid), '{}') from pg_stat_activity "
        "where application_name = 'loader-api' and datname = current_database()"
    )
    others = set(one(loaded, sessions))  # the module's other server
    client = server(
        LOADER_API_POOL_MIN="1",
        LOADER_API_POOL_MAX="1",
        LOADER_API_POOL_TIMEOUT_SECONDS="0.5",
        LOADER_API_REQUEST_SECONDS="20",
    )
    pooled = set(one(loaded, sessions)) - others
    for _ in range(10):
        assert client.get("/runs/none", headers=auth(READ)).status_code == 404
        assert client.get("/healthz").status_code == 200
    assert set(one(loaded, sessions)) - others == pooled and len(pooled) == 1, "one, reused"
    answers = []
    with psycopg.connect(loaded) as blocker:
        blocker.execute("lock table audit.batches in access exclusive mode")
        holder = threading.Thread(
            target=lambda: answers.append(client.get("/batches/none", headers=auth(READ)))
        )
        holder.start()
        deadline = time.monotonic() + 30
        waiting = (
            "select count(*) from pg_stat_activity "
            "where application_name = 'loader-api' and wait_event_type = 'Lock'"
        )
        while one(loaded, waiting) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        busy = client.get("/runs/none", headers=auth(READ))
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "2"
        assert busy.json()["detail"].startswith("the server is busy: no database connection")
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["Retry-After"] == "5"
        assert ready.json()["checks"]["database"] == "busy: no free connection"
        assert client.get("/healthz").status_code == 200, "busy, but alive"
        blocker.rollback()
    holder.join()
    assert answers[0].status_code == 404
    assert client.get("/runs/none", headers=auth(READ)).status_code == 404
