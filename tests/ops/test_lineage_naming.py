"""Dataset names by OpenLineage's naming spec, and an API run's and a bucket run's events as the
spec's schemas accept them: no database, no endpoint (the events are built, not sent)."""

from __future__ import annotations

import json

import pytest
from openlineage.client.serde import Serde

from loader.flow.summary import RunSummary, TableSummary
from loader.observe.events import Finished, Job, Started
from loader.observe.lineage_datasets import Database, located
from loader.observe.lineage_events import LineageEvents
from tests.ops.lineage_schema import validate


@pytest.mark.parametrize(
    ("where", "namespace", "name"),
    [
        ("s3://exports/2026/jobs.csv", "s3://exports", "2026/jobs.csv"),
        ("s3://***@exports/jobs.csv.gz?versionId=***", "s3://exports", "jobs.csv.gz"),
        ("gs://exports/jobs.csv", "gs://exports", "jobs.csv"),
        ("gcs://exports/jobs.csv", "gs://exports", "jobs.csv"),
        ("az://container/in/jobs.csv", "az://container", "in/jobs.csv"),
        ("s3://backups/nightly/20260101T000000Z", "s3://backups", "nightly/20260101T000000Z"),
        ("/data/in/jobs.csv", "file", "/data/in/jobs.csv"),
        ("file:///data/in/jobs.csv", "file", "/data/in/jobs.csv"),
    ],
)
def test_exports_and_backups_are_named_as_the_spec_names_files_and_objects(where, namespace, name):
    assert located(where) == (namespace, name)


def test_a_relative_path_is_named_by_its_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert located("in/jobs.csv") == ("file", str(tmp_path / "in" / "jobs.csv"))


@pytest.mark.parametrize(
    ("url", "namespace", "name"),
    [
        (
            "postgresql://loader:secret@db.example:6543/warehouse",
            "postgres://db.example:6543",
            "warehouse",
        ),
        ("postgresql://postgres@127.0.0.1:54329/loader", "postgres://127.0.0.1:54329", "loader"),
        ("host=db.example dbname=warehouse user=loader", "postgres://db.example:5432", "warehouse"),
        (
            "postgresql://loader@/warehouse?host=/run/postgresql",
            "postgres://localhost:5432",
            "warehouse",
        ),
    ],
)
def test_the_database_is_named_by_its_server_and_name_without_credentials(url, namespace, name):
    assert Database.of(url) == Database(namespace, name)


def test_an_api_run_reads_its_request_bodies_and_says_what_they_held():
    events = LineageEvents("csv-migrate", "postgresql://loader:secret@db.example:6543/warehouse")
    started = Started(Job.API_RUN, "run-1", inputs=["api:jobs"], tables=["jobs"])
    summary = RunSummary("run-1", "api:jobs", 10, "reject_batch")
    summary.tables = [TableSummary("jobs", "api:jobs", rows_read=10, rows_held_back=2)]
    summary.tables[0].reasons = {"job: required: present and non-empty": 2}
    end = json.loads(Serde.to_json(events.end(started, Finished(summary=summary))))
    validate(end)
    assert "secret" not in json.dumps(end)
    (body,) = end["inputs"]
    assert (body["namespace"], body["name"]) == ("csv-migrate", "api.jobs")
    metrics = body["inputFacets"]["dataQualityMetrics"]
    assert (metrics["rowCount"], metrics["rowsHeldBack"]) == (10, 2)
    assert metrics["columnMetrics"]["job"]["nullCount"] == 2
    assert {o["name"] for o in end["outputs"]} == {
        "warehouse.raw.jobs",
        "warehouse.core.jobs",
        "warehouse.audit.runs",
        "warehouse.audit.batches",
        "warehouse.audit.rejected_rows",
        "warehouse.audit.api_requests",
    }
    assert {o["namespace"] for o in end["outputs"]} == {"postgres://db.example:6543"}


def test_a_bucket_run_reads_objects_and_its_start_knows_each_export_s_schema():
    events = LineageEvents("csv-migrate", "postgresql://postgres@127.0.0.1:5432/loader")
    exports = ["s3://exports/in/hired_employees_2026.csv.gz", "s3://exports/in/jobs.csv"]
    started = Started(Job.WATCH_RUN, "run-2", inputs=exports, tables=["hired_employees", "jobs"])
    start = json.loads(Serde.to_json(events.start(started)))
    validate(start)
    assert start["job"]["name"] == "csv_migrate.watch_run"
    assert [(i["namespace"], i["name"]) for i in start["inputs"]] == [
        ("s3://exports", "in/hired_employees_2026.csv.gz"),
        ("s3://exports", "in/jobs.csv"),
    ]
    schema = start["inputs"][1]["facets"]["schema"]["fields"]
    assert [field["name"] for field in schema] == ["id", "job"]
