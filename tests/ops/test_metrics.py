"""Prometheus metrics as an operator's tools see them: a real Prometheus scraping the API's
/metrics with its read token, a real Pushgateway receiving a file run's, a watch's and a
backup's, node_exporter's textfile, and a Pushgateway that is not there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loader.flow.file_run import run_files
from loader.sample import write_sample
from tests.conftest import REPO, free_port, running_server, settings_for
from tests.ops.conftest import NEEDS_PROMETHEUS, poll, prometheus_scraping, query

pytestmark = pytest.mark.database

READ, WRITE = "r-token", "w-token"
TOKENS = f"read:{READ},write:{WRITE}"
KNOWN_TABLES = {"departments", "jobs", "hired_employees"}


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition as (name, labels) → value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float | None:
    """The sample `name` whose labels include `labels` (None if there is none)."""
    wanted = set(labels.items())
    matching = [v for (n, have), v in found.items() if n == name and wanted <= have]
    return matching[0] if matching else None


def loader(*arguments: str, env: dict, module: str = "loader") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *arguments],
        env={**os.environ, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_env(url: str, state: Path, **variables: str) -> dict:
    return {"DATABASE_URL": url, "LOADER_STATE_DIR": str(state), **variables}


def promoted_by_table(summary: dict) -> dict[str, int]:
    return {table["table"]: table["rows_promoted"] for table in summary["tables"]}


@NEEDS_PROMETHEUS
def test_prometheus_scrapes_the_api_with_its_read_token_and_sees_the_posted_rows(clean, tmp_path):
    port = free_port()
    with (
        running_server(clean, tmp_path / "state", TOKENS, LOADER_METRICS_PORT=str(port)) as base,
        prometheus_scraping(f"127.0.0.1:{port}", READ, tmp_path / "prometheus") as prometheus,
    ):
        client = httpx.Client(base_url=base, timeout=60)
        departments = [{"id": i, "department": f"D{i}"} for i in (1, 2, 3)]
        answer = client.post("/tables/departments/batches", json=departments, headers=auth(WRITE))
        assert answer.status_code == 201
        broken = [{"id": 1, "job": "J1"}, {"id": 2, "job": ""}]  # "" breaks `required`
        answer = client.post("/tables/jobs/batches", json=broken, headers=auth(WRITE))
        assert answer.json()["status"] == "rejected"
        keyed = {**auth(WRITE), "Idempotency-Key": "metrics-1"}
        for _ in range(2):
            answer = client.post(
                "/tables/jobs/batches", json=[{"id": 5, "job": "J"}], headers=keyed
            )
        assert answer.json()["replayed"] is True
        too_big = b"[" + b" " * (2 * 1024 * 1024) + b"]"
        assert (
            client.post("/tables/jobs/batches", content=too_big, headers=auth(WRITE)).status_code
            == 413
        )
        malformed = client.post("/tables/jobs/batches", content=b"{", headers=auth(WRITE))
        assert malformed.status_code == 422
        assert client.post("/tables/nope/batches", json=[], headers=auth(WRITE)).status_code == 404

        def scraped(promql: str) -> float | None:
            result = query(prometheus, promql)
            return float(result[0]["value"][1]) if result else None

        expected = {
            'csv_migrate_rows_promoted_total{table="departments"}': 3,
            'csv_migrate_rows_promoted_total{table="jobs"}': 1,
            'csv_migrate_rows_held_back_total{table="jobs"}': 2,
            'csv_migrate_batches_settled_total{table="jobs",state="rejected"}': 1,
            'csv_migrate_rule_failing_rows_total{table="jobs",field="job",'
            'rule="required: present and non-empty"}': 1,
            "csv_migrate_idempotent_replays_total": 1,
            'csv_migrate_http_requests_refused_total{reason="body_too_large"}': 1,
            'csv_migrate_http_requests_refused_total{reason="malformed"}': 1,
            'csv_migrate_jobs_total{loader_job="api_run",status="completed"}': 3,
            'csv_migrate_http_requests_total{handler="/tables/{table}/batches",status="404"}': 1,
        }
        for promql, wanted in expected.items():
            poll(lambda p=promql, w=wanted: scraped(p) == w, 30, f"{promql} == {wanted}")
        handlers = {
            s["metric"]["handler"] for s in query(prometheus, "csv_migrate_http_requests_total")
        }
        assert "/tables/{table}/batches" in handlers
        assert not any("nope" in handler or "departments" in handler for handler in handlers)
        tables = {s["metric"]["table"] for s in query(prometheus, '{table!=""}')}
        assert tables <= KNOWN_TABLES
        assert query(prometheus, 'up{job="csv_migrate_api"}')[0]["value"][1] == "1"

        metrics_url = f"http://127.0.0.1:{port}/metrics"
        for headers in ({}, auth("wrong"), {"Authorization": READ}):
            refused = httpx.get(metrics_url, headers=headers)
            assert refused.status_code == 401
            assert "csv_migrate" not in refused.text
        assert "csv_migrate_rows_promoted_total" in httpx.get(metrics_url, headers=auth(READ)).text


def test_a_file_run_pushes_its_counters_and_writes_them_for_node_exporter(
    clean, tmp_path, pushgateway
):
    write_sample(tmp_path / "in", rows=300, seed=7)
    textfile = tmp_path / "textfile" / "csv_migrate.prom"
    variables = {"LOADER_PUSHGATEWAY_URL": pushgateway, "LOADER_METRICS_FILE": str(textfile)}
    env = run_env(clean, tmp_path / "state", **variables)
    result = loader("run", "--input", str(tmp_path / "in"), "--json", "--skip-marts", env=env)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    summary = json.loads(result.stdout)
    held_back = {table["table"]: table["rows_held_back"] for table in summary["tables"]}

    pushed = samples(httpx.get(f"{pushgateway}/metrics").text)
    written = samples(textfile.read_text())
    assert not list(textfile.parent.glob("*.tmp"))  # the temporary file was renamed over it
    for found, group in ((pushed, {"job": "csv_migrate_file_run"}), (written, {})):
        for table, rows in promoted_by_table(summary).items():
            assert value(found, "csv_migrate_rows_promoted_total", table=table, **group) == rows
            wanted = held_back[table]
            assert value(found, "csv_migrate_rows_held_back_total", table=table, **group) == wanted
        ended = value(found, "csv_migrate_jobs_total", loader_job="file_run", status="completed")
        assert ended == 1
        assert value(found, "csv_migrate_run_stage_seconds_count", stage="validate") == 1
        rule_rows = sum(
            v for (n, _), v in found.items() if n == "csv_migrate_rule_failing_rows_total"
        )
        assert rule_rows >= summary["totals"]["rows_failing"] > 0


def test_a_pushgateway_that_is_down_is_one_warning_and_the_run_completes(clean, tmp_path):
    write_sample(tmp_path / "in", rows=100, seed=7)
    closed = f"http://127.0.0.1:{free_port()}"
    env = run_env(clean, tmp_path / "state", LOADER_PUSHGATEWAY_URL=closed)
    result = loader("run", "--input", str(tmp_path / "in"), "--json", "--skip-marts", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["totals"]["rows_promoted"] > 0
    warnings = [line for line in result.stderr.splitlines() if "metrics" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: metrics:"), result.stderr


def test_watch_serves_metrics_with_a_token_and_pushes_after_each_run(clean, tmp_path, pushgateway):
    write_sample(tmp_path / "in", rows=100, seed=7)
    port = free_port()
    variables = {"LOADER_PUSHGATEWAY_URL": pushgateway, "LOADER_API_TOKENS": TOKENS}
    env = {**os.environ, **run_env(clean, tmp_path / "state", **variables)}
    command = [sys.executable, "-m", "loader", "watch", "--input", str(tmp_path / "in")]
    command += ["--every", "0.3", "--skip-marts", "--metrics-port", str(port)]
    watch = subprocess.Popen(command, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/metrics"
    try:

        def served() -> dict | None:
            try:
                answer = httpx.get(url, headers=auth(READ), timeout=2)
            except httpx.TransportError:
                return None
            found = samples(answer.text)
            return found if value(found, "csv_migrate_rows_promoted_total") else None

        found = poll(served, 60, "the watch's first run in its /metrics")
        assert value(found, "csv_migrate_jobs_total", loader_job="watch_run") == 1
        assert httpx.get(url).status_code == 401
        pushed = samples(httpx.get(f"{pushgateway}/metrics").text)
        for table in KNOWN_TABLES:
            rows = value(found, "csv_migrate_rows_promoted_total", table=table)
            assert value(pushed, "csv_migrate_rows_promoted_total", table=table) == rows
        assert value(pushed, "csv_migrate_jobs_total", job="csv_migrate_watch_run") == 1
    finally:
        watch.send_signal(signal.SIGTERM)
        _, stderr = watch.communicate(timeout=60)
    assert watch.returncode == 0, stderr
    assert "warning" not in stderr


def test_a_backup_says_when_it_was_made_its_size_and_rows_and_a_verify_its_result(
    clean, tmp_path, pushgateway
):
    write_sample(tmp_path / "in", rows=100, seed=7, broken_share=0)
    run_files(settings_for(clean, tmp_path / "state", tmp_path / "in", build_marts=False))
    textfile = tmp_path / "backup.prom"
    variables = {"LOADER_PUSHGATEWAY_URL": pushgateway, "LOADER_METRICS_FILE": str(textfile)}
    env = run_env(clean, tmp_path / "state", BACKUP_DIR=str(tmp_path / "backups"), **variables)
    created = loader("create", env=env, module="backup")
    assert created.returncode == 0, created.stderr
    verified = loader("verify", env=env, module="backup")
    assert verified.returncode == 0, verified.stderr
    listed = json.loads(loader("list", "--json", env=env, module="backup").stdout)

    written = samples(textfile.read_text())  # the verify's write kept the backup's gauges
    pushed = samples(httpx.get(f"{pushgateway}/metrics").text)
    for found in (written, pushed):
        made = value(found, "csv_migrate_job_last_success_timestamp_seconds", loader_job="backup")
        assert made is not None and made > 0
        assert value(found, "csv_migrate_backup_verify_success") == 1
        assert value(found, "csv_migrate_backup_size_bytes") > 0
        for table in KNOWN_TABLES:
            rows = value(found, "csv_migrate_backup_table_rows", table=table)
            assert rows == listed[-1]["tables"][table] > 0
