"""Metrics without a database: names and labels as Prometheus's conventions want them (bounded
label values only), the textfile written atomically, a Pushgateway that does not answer."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from loader.api.metrics import REFUSED, ApiMetrics
from loader.flow.model import BatchState
from loader.flow.summary import RunSummary, Stage, TableSummary
from loader.observe import metrics_publish
from loader.observe.events import Ending, Finished, Job, Observers, Started
from loader.observe.metrics import (
    DATABASE_RULES,
    OTHER,
    STATES,
    TABLE_NAMES,
    MetricsObserver,
    rule_labels,
    rule_vocabulary,
    stage_label,
)
from loader.observe.setup import Process
from loader.settings import Settings
from loader.tables import TABLES

RUN_ID = "20240101T000000Z-secret"  # must never become a label value
LABELS = {"table", "state", "field", "rule", "loader_job", "stage", "handler", "status", "reason"}
NAME = re.compile(r"^csv_migrate_[a-z][a-z0-9_]*[a-z0-9]$")


def run_summary(run_id: str = RUN_ID) -> RunSummary:
    summary = RunSummary(run_id, "in", 1000, "reject_batch")
    summary.seconds = {stage.value: 0.5 for stage in Stage}
    for table in TABLES:
        counts = {f"batches_{state}": 1 for state in STATES}
        reasons = {
            f"{table.primary_key}: required: present and non-empty": 2,
            f"{table.columns[-1].name}: refused by PostgreSQL: invalid input {run_id}": 1,
            f"{run_id}: {run_id}": 1,  # anything else is `other`
        }
        summary.tables.append(
            TableSummary(
                table.name, "x", rows_promoted=10, rows_held_back=3, reasons=reasons, **counts
            )
        )
    summary.tables.append(TableSummary("not_a_table", "x", rows_promoted=1))
    return summary


def every_job(observers: Observers) -> None:
    """One of each job the loader has, ended each way it can end."""
    backup = SimpleNamespace(
        bytes=300, tables={t.name: {"rows": 5, "bytes": 100} for t in TABLES} | {"x": {}}
    )
    for job in Job:
        for ending in Ending:
            started = observers.start(job, RUN_ID, inputs=[f"/in/{RUN_ID}"])
            summary = run_summary() if job.value.endswith("_run") else None
            finished = Finished(ending, seconds=1.5, summary=summary)
            finished.backup = backup if job in (Job.BACKUP, Job.VERIFY) else None
            observers.finished(started, finished)


@pytest.fixture()
def served(tmp_path):
    """A server's registry fed every job, refused and routed requests and a marts refresh."""
    settings = Settings(metrics_port=9999, state_dir=tmp_path)
    observer = MetricsObserver.for_settings(settings, Process.SERVE)
    metrics = ApiMetrics(observer, "127.0.0.1", 9999)
    app = FastAPI()

    @app.post("/tables/{table}/batches", status_code=201)
    def insert(table: str, body: list[int]) -> dict:
        return {}

    services = SimpleNamespace(
        idempotency=SimpleNamespace(replays=2),
        settler=SimpleNamespace(gate=SimpleNamespace(gate=SimpleNamespace(restarts=1))),
        pool=SimpleNamespace(usage=lambda: (3, 1), size=10),
    )
    metrics.instrument(app, services)
    client = TestClient(app)
    client.post(f"/tables/{RUN_ID}/batches", json=[1])
    client.post("/tables/jobs/batches", content=b"{")
    client.get(f"/runs/{RUN_ID}")
    every_job(Observers([observer]))
    metrics.marts_refreshed(2.0, True)
    metrics.marts_refreshed(3.0, False)
    return observer


def test_every_name_follows_the_conventions_and_every_label_value_is_bounded(served):
    text = _exposition(served)
    families = list(text_string_to_metric_families(text))
    assert len(families) > 20
    allowed = {
        "table": set(TABLE_NAMES),
        "state": {state.value for state in BatchState},
        "loader_job": {job.value for job in Job},
        "stage": {stage_label(stage) for stage in Stage},
        "handler": {"/tables/{table}/batches", "none"},
        "reason": set(REFUSED.values()),
        "status": {"completed", "failed", "aborted", "201", "422", "404"},
        "rule": {rule for pairs in rule_vocabulary().values() for _, rule in pairs}
        | set(DATABASE_RULES)
        | {OTHER},
        "field": {c.name for t in TABLES for c in t.columns} | {"*", OTHER},
    }
    for family in families:
        assert NAME.match(family.name), family.name
        assert "milli" not in family.name and not family.name.endswith("_ms")
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created")), sample.name
            labels = {k: v for k, v in sample.labels.items() if k != "le"}
            assert set(labels) <= LABELS, sample.name  # never `job` or `instance` of its own
            for label, found in labels.items():
                assert found in allowed[label], (sample.name, label, found)
    assert RUN_ID not in text
    assert "not_a_table" not in text


def test_the_states_are_the_ledgers_and_every_rule_is_named_by_the_rules():
    assert STATES == tuple(state.value for state in BatchState)
    assert rule_labels("jobs", "job: required: present and non-empty") == (
        "job",
        "required: present and non-empty",
    )
    assert rule_labels("hired_employees", "department_id: exists in departments") == (
        "department_id",
        "exists in departments",
    )
    refused = "datetime: refused by PostgreSQL: date/time field value out of range: 2021-02-30"
    assert rule_labels("hired_employees", refused) == ("datetime", "refused by PostgreSQL")
    assert rule_labels("jobs", "job: something new") == ("job", OTHER)
    assert rule_labels("jobs", "nope: required: present and non-empty") == (OTHER, OTHER)


def test_the_api_metrics_count_what_the_services_know(served):
    found = _values(served)
    assert found[("csv_migrate_idempotent_replays_total", ())] == 2
    assert found[("csv_migrate_gate_restarts_total", ())] == 1
    assert found[("csv_migrate_db_pool_connections_in_use", ())] == 3
    assert found[("csv_migrate_db_pool_requests_waiting", ())] == 1
    assert found[("csv_migrate_http_requests_refused_total", (("reason", "malformed"),))] == 1
    marts = (("loader_job", "marts_build"), ("status", "failed"))
    assert found[("csv_migrate_jobs_total", marts)] == 1 + 1  # one of every_job's, one refresh
    assert 0 <= found[("csv_migrate_marts_age_seconds", ())] < 60
    rows = found[("csv_migrate_rows_promoted_total", (("table", "jobs"),))]
    assert rows == 10 * 3 * 3  # three run jobs, each ended three ways


def test_nothing_untouched_is_shown_a_verify_never_ran_is_no_failed_verify(tmp_path):
    observer = MetricsObserver.for_settings(Settings(metrics_port=9999), Process.SERVE)
    assert "verify_success" not in _exposition(observer)
    assert "backup_size_bytes" not in _exposition(observer)


def test_only_a_process_with_somewhere_to_send_or_serve_has_the_observer(tmp_path):
    nothing = Settings()
    assert all(MetricsObserver.for_settings(nothing, process) is None for process in Process)
    pushes = Settings(pushgateway_url="http://127.0.0.1:1")
    assert MetricsObserver.for_settings(pushes, Process.SERVE) is None  # a server is scraped
    for process in (Process.RUN, Process.BACKUP, Process.WATCH):
        assert MetricsObserver.for_settings(pushes, process) is not None
        writes = Settings(metrics_file=tmp_path / "m.prom")
        assert MetricsObserver.for_settings(writes, process) is not None
    assert MetricsObserver.for_settings(Settings(metrics_port=9999), Process.RUN) is None


def test_the_textfile_is_replaced_whole_by_a_rename_and_keeps_other_commands_series(
    tmp_path, monkeypatch
):
    path = tmp_path / "csv_migrate.prom"
    backup = _ran(Job.BACKUP, path)
    renamed = []
    real_replace = os.replace

    def replace(source, target):
        # Until the rename, the file has the old text whole, the new one is complete beside it.
        renamed.append(
            (path.read_text(), list(text_string_to_metric_families(open(source).read())))
        )
        real_replace(source, target)

    monkeypatch.setattr(metrics_publish.os, "replace", replace)
    _ran(Job.VERIFY, path)
    before, written = renamed[0]  # the first of the verify's writes (after it, and on close)
    assert before == backup
    assert any(family.name == "csv_migrate_backup_verify_success" for family in written)
    found = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(path.read_text())
        for sample in family.samples
    }
    assert found[("csv_migrate_backup_verify_success", ())] == 1
    assert ("csv_migrate_job_last_success_timestamp_seconds", (("loader_job", "backup"),)) in found
    assert found[("csv_migrate_jobs_total", (("loader_job", "backup"), ("status", "completed")))]
    assert not list(tmp_path.glob("*.tmp"))


def test_a_textfile_that_cannot_be_written_leaves_the_old_one_and_no_temporary(
    tmp_path, monkeypatch
):
    path = tmp_path / "csv_migrate.prom"
    old = _ran(Job.BACKUP, path)

    def broken(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(metrics_publish.os, "replace", broken)
    _ran(Job.VERIFY, path)  # a warning
    assert path.read_text() == old
    assert not list(tmp_path.glob("*.tmp"))


def test_a_pushgateway_that_never_answers_costs_the_timeout_and_one_warning(caplog, tmp_path):
    caplog.set_level(logging.WARNING, logger="loader.observe")
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        settings = Settings(pushgateway_url=url, metrics_timeout_seconds=0.5)
        observers = Observers([MetricsObserver.for_settings(settings, Process.BACKUP)])
        began = time.monotonic()
        for _ in range(3):  # a schedule pushes after each backup
            with observers.job(Job.BACKUP, RUN_ID) as (_, finished):
                finished.backup = SimpleNamespace(bytes=1, tables={})
        observers.close()
        elapsed = time.monotonic() - began
    assert elapsed < 4 * 0.5 + 1.5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].getMessage().startswith("metrics: ")


def _ran(job: Job, path) -> str:
    """A process with a textfile that ran `job` (complete) and closed; the file's text."""
    observer = MetricsObserver.for_settings(Settings(metrics_file=path), Process.BACKUP)
    started = Started(job, RUN_ID)
    observer.started(started)
    finished = Finished(seconds=1.0)
    finished.backup = SimpleNamespace(bytes=10, tables={"jobs": {"rows": 2, "bytes": 10}})
    observer.finished(started, finished)
    observer.close()
    return path.read_text()


def _exposition(observer: MetricsObserver) -> str:
    from prometheus_client import generate_latest

    return generate_latest(observer.registry).decode()


def _values(observer: MetricsObserver) -> dict:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(_exposition(observer))
        for sample in family.samples
    }
