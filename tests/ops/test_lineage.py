"""OpenLineage events as a lineage backend receives them: the CLI runs as real processes, sending
to an HTTP receiver on a loopback port (or to a file, configured by OPENLINEAGE_CONFIG), and every
event received is validated against the spec's own JSON schemas (tests/ops/openlineage_spec)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import psycopg
import pytest

from loader.cli.exit_codes import ExitCode
from loader.sample import write_sample
from tests.conftest import REPO, free_port
from tests.ops.lineage_schema import validate

OUR_NAMESPACE = "csv-migrate"


class Receiver:
    """A lineage backend on a free loopback port: it keeps every event POSTed to it, and (with
    `stop_after`) stops listening once it has that many."""

    def __init__(self, stop_after: int | None = None, answers: bool = True):
        self.events: list[dict] = []
        self.stop_after = stop_after
        self.released = threading.Event()  # a receiver that `answers=False` waits for it
        if answers:
            self.released.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.events.append(json.loads(body))
                receiver.released.wait()
                self.send_response(201)
                self.end_headers()
                if receiver.stop_after and len(receiver.events) >= receiver.stop_after:
                    threading.Thread(target=receiver.stop).start()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self._stopped = threading.Lock()

    def stop(self) -> None:
        self.released.set()
        if self._stopped.acquire(blocking=False):
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture()
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.stop()


def cli(module: str, *args: str, env: dict, lineage: dict) -> subprocess.CompletedProcess:
    """`python -m module args` with only the given OpenLineage configuration (none inherited),
    in a working directory without an openlineage.yml."""
    clean = {key: value for key, value in os.environ.items() if "OPENLINEAGE" not in key}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        check=False,
        env={**clean, **env, **lineage},
        cwd=REPO,
        timeout=300,
    )


def of_job(events: list[dict], name: str) -> list[dict]:
    return [event for event in events if event["job"]["name"] == name]


def types(events: list[dict]) -> list[str]:
    return [event["eventType"] for event in events]


def dataset(datasets: list[dict], name: str) -> dict:
    return next(each for each in datasets if each["name"] == name)


@pytest.fixture(scope="module")
def place(database_url, tmp_path_factory) -> dict:
    """The module's database, loaded once from the sample (broken rows included), its
    variables, and what lineage endpoints heard of that load."""
    folder = tmp_path_factory.mktemp("in")
    write_sample(folder, rows=1500)
    parts = urlsplit(database_url)
    env = {
        "DATABASE_URL": database_url,
        "LOADER_STATE_DIR": str(tmp_path_factory.mktemp("state")),
        "LOADER_INPUT_DIR": str(folder),
        "LOADER_LINEAGE_TIMEOUT_SECONDS": "3",
    }
    receiver = Receiver()
    try:
        run = cli("loader", "run", "--json", env=env, lineage={"OPENLINEAGE_URL": receiver.url})
    finally:
        receiver.stop()
    assert run.returncode == ExitCode.OK, run.stderr
    for event in receiver.events:
        validate(event)
    return {
        "env": env,
        "folder": folder,
        "summary": json.loads(run.stdout),
        "events": receiver.events,
        "namespace": f"postgres://{parts.hostname}:{parts.port or 5432}",
        "database": parts.path.lstrip("/"),
        "stderr": run.stderr,
    }


@pytest.mark.database
def test_a_file_run_reads_its_files_and_writes_raw_core_and_the_ledger(place):
    run = of_job(place["events"], "csv_migrate.file_run")
    assert types(run) == ["START", "COMPLETE"]
    start, complete = run
    assert start["job"]["namespace"] == OUR_NAMESPACE
    assert start["run"]["runId"] == complete["run"]["runId"]
    tags = {tag["key"]: tag["value"] for tag in complete["run"]["facets"]["tags"]["tags"]}
    assert tags["run_id"] == place["summary"]["run_id"], "joins audit.runs"
    assert complete["run"]["facets"]["processing_engine"]["name"] == "csv-migrate"
    assert complete["job"]["facets"]["jobType"]["processingType"] == "BATCH"
    assert "lineage" not in place["stderr"]

    names = {(each["namespace"], each["name"]) for each in complete["inputs"]}
    files = {("file", str((place["folder"] / f"{t}.csv").resolve())) for t in TABLE_NAMES}
    assert names == files
    database, namespace = place["database"], place["namespace"]
    expected = {f"{database}.{schema}.{t}" for t in TABLE_NAMES for schema in ("raw", "core")}
    expected |= {f"{database}.audit.{t}" for t in ("runs", "batches", "rejected_rows", "files")}
    assert {each["name"] for each in complete["outputs"]} == expected
    assert {each["namespace"] for each in complete["outputs"]} == {namespace}
    assert {each["name"] for each in start["outputs"]} == expected, "known at the start too"

    raw = dataset(complete["outputs"], f"{database}.raw.hired_employees")["facets"]["schema"]
    assert [(f["name"], f["type"]) for f in raw["fields"]] == [
        ("id", "text"),
        ("name", "text"),
        ("datetime", "text"),
        ("department_id", "text"),
        ("job_id", "text"),
        ("_source_file", "text"),
        ("_line_number", "bigint"),
        ("_batch_id", "text"),
        ("_run_id", "text"),
        ("_decode_error", "text"),
    ]
    core = dataset(complete["outputs"], f"{database}.core.hired_employees")
    fields = [(f["name"], f["type"]) for f in core["facets"]["schema"]["fields"]]
    assert fields[:3] == [("id", "integer"), ("name", "text"), ("datetime", "timestamptz")]
    hired = next(t for t in place["summary"]["tables"] if t["table"] == "hired_employees")
    assert core["outputFacets"]["outputStatistics"]["rowCount"] == hired["rows_promoted"]


TABLE_NAMES = ("departments", "jobs", "hired_employees")


@pytest.mark.database
def test_the_inputs_carry_what_the_expectations_found(place):
    complete = of_job(place["events"], "csv_migrate.file_run")[-1]
    hired_file = str((place["folder"] / "hired_employees.csv").resolve())
    hired = dataset(complete["inputs"], hired_file)
    summary = next(t for t in place["summary"]["tables"] if t["table"] == "hired_employees")
    metrics = hired["inputFacets"]["dataQualityMetrics"]
    assert metrics["rowCount"] == 1500
    assert metrics["rowsHeldBack"] == summary["rows_held_back"] > 0
    required = summary["reasons"]["name: required: present and non-empty"]
    assert metrics["columnMetrics"]["name"]["nullCount"] == required > 0
    assert [f["name"] for f in hired["facets"]["schema"]["fields"]] == [
        "id",
        "name",
        "datetime",
        "department_id",
        "job_id",
    ]

    assertions = hired["inputFacets"]["dataQualityAssertions"]["assertions"]
    suite = json.loads((REPO / "expectations/expectations/hired_employees.json").read_text())
    assert len(assertions) == len(suite["expectations"]), "one per expectation"
    failed = {(a.get("column"), a["description"]) for a in assertions if not a["success"]}
    assert ("name", "required: present and non-empty") in failed
    assert ("id", "an integer written in plain ASCII digits") in failed
    passed = {a.get("column") for a in assertions if a["success"]}
    assert None in passed, "a batch has at least one row: whole-table rules pass"
    departments = dataset(complete["inputs"], hired_file.replace("hired_employees", "departments"))
    department_assertions = departments["inputFacets"]["dataQualityAssertions"]["assertions"]
    assert all(a["success"] for a in department_assertions)
    assert departments["inputFacets"]["dataQualityMetrics"]["rowsHeldBack"] == 0


@pytest.mark.database
def test_the_marts_build_is_a_child_of_its_load_and_dbt_models_of_the_build(place):
    load = of_job(place["events"], "csv_migrate.file_run")[0]["run"]["runId"]
    build = of_job(place["events"], "csv_migrate.marts_build")
    assert types(build) == ["START", "COMPLETE"]
    parent = build[0]["run"]["facets"]["parent"]
    assert parent["run"]["runId"] == load
    assert (parent["job"]["namespace"], parent["job"]["name"]) == (
        OUR_NAMESPACE,
        "csv_migrate.file_run",
    )
    assert build[1]["run"]["facets"]["parent"]["run"]["runId"] == load
    database, namespace = place["database"], place["namespace"]
    assert {each["name"] for each in build[1]["inputs"]} == {
        f"{database}.core.{t}" for t in TABLE_NAMES
    }
    marts = {f"{database}.marts.hires_by_quarter", f"{database}.marts.departments_above_mean"}
    assert marts <= {each["name"] for each in build[1]["outputs"]}

    model = of_job(place["events"], f"{database}.marts.csv_migrate.hires_by_quarter.build.run")
    assert types(model) == ["START", "COMPLETE"]
    facets = model[1]["run"]["facets"]
    assert facets["parent"]["run"]["runId"] == build[0]["run"]["runId"]
    assert facets["parent"]["root"]["run"]["runId"] == load
    # dbt's output is the very dataset the build names: the two producers' events join.
    output = model[1]["outputs"][0]
    assert (output["namespace"], output["name"]) == (
        namespace,
        f"{database}.marts.hires_by_quarter",
    )
    staged = of_job(place["events"], f"{database}.staging.csv_migrate.stg_core__jobs.build.run")
    assert staged[1]["inputs"][0]["name"] == f"{database}.core.jobs"
    # every event of the run arrives before its COMPLETE
    assert place["events"][-1]["job"]["name"] == "csv_migrate.file_run"


@pytest.mark.database
def test_a_malformed_file_fails_the_load_and_its_event_says_why(place, receiver, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(place["folder"], folder)
    lines = (folder / "hired_employees.csv").read_bytes().split(b"\r\n")
    lines[41] = b'42,"Ann,2021-01-01T00:00:00Z,1,1'
    (folder / "hired_employees.csv").write_bytes(b"\r\n".join(lines))
    env = {**place["env"], "LOADER_INPUT_DIR": str(folder)}
    result = cli("loader", "run", env=env, lineage={"OPENLINEAGE_URL": receiver.url})
    assert result.returncode == ExitCode.INPUT, result.stderr
    for event in receiver.events:
        validate(event)
    run = of_job(receiver.events, "csv_migrate.file_run")
    assert types(run) == ["START", "FAIL"]
    error = run[1]["run"]["facets"]["errorMessage"]
    assert error["programmingLanguage"] == "python"
    assert "hired_employees.csv, line 42" in error["message"]
    assert "errorMessage" not in run[0]["run"]["facets"]


@pytest.mark.database
def test_backup_and_restore_read_and_write_the_backup_folder(place, receiver, tmp_path):
    backups = tmp_path / "backups"
    events_file = tmp_path / "events.jsonl"
    config = tmp_path / "lineage.yml"
    config.write_text(f"transport:\n  type: file\n  log_file_path: {events_file}\n  append: true\n")
    env = {**place["env"], "BACKUP_DIR": str(backups)}
    made = cli("backup", "create", env=env, lineage={"OPENLINEAGE_CONFIG": str(config)})
    assert made.returncode == 0, made.stderr
    stamp = made.stdout.strip()
    created = [json.loads(line) for line in events_file.read_text().splitlines()]
    for event in created:
        validate(event)
    assert types(created) == ["START", "COMPLETE"]
    assert created[0]["job"]["name"] == "csv_migrate.backup"
    database, namespace = place["database"], place["namespace"]
    folder = ("file", str((backups / stamp).resolve()))
    for event in created:
        assert [(o["namespace"], o["name"]) for o in event["outputs"]] == [folder]
        assert {(i["namespace"], i["name"]) for i in event["inputs"]} == {
            (namespace, f"{database}.{schema}.{table}")
            for schema, table in [("core", t) for t in TABLE_NAMES]
            + [("audit", a) for a in ("runs", "batches", "rejected_rows")]
        }
    statistics = created[1]["outputs"][0]["outputFacets"]["outputStatistics"]
    promoted = sum(table["rows_promoted"] for table in place["summary"]["tables"])
    assert statistics["rowCount"] > promoted, "core's rows and their ledger's"
    assert statistics["size"] > 0

    restored = cli(
        "backup",
        "restore",
        "--table",
        "departments",
        env=env,
        lineage={"OPENLINEAGE_URL": receiver.url},
    )
    assert restored.returncode == 0, restored.stderr
    for event in receiver.events:
        validate(event)
    restore = of_job(receiver.events, "csv_migrate.restore")
    assert types(restore) == ["START", "COMPLETE"]
    assert [(i["namespace"], i["name"]) for i in restore[1]["inputs"]] == [folder]
    outputs = {o["name"] for o in restore[1]["outputs"]}
    assert f"{database}.core.departments" in outputs
    assert f"{database}.audit.batches" in outputs
    assert f"{database}.core.hired_employees" not in outputs


@pytest.mark.database
def test_an_unreachable_endpoint_is_one_warning_and_changes_nothing(place):
    closed = f"http://127.0.0.1:{free_port()}"
    result = cli("loader", "marts", env=place["env"], lineage={"OPENLINEAGE_URL": closed})
    assert result.returncode == ExitCode.OK, result.stderr
    assert_one_lineage_warning(result.stderr)


@pytest.mark.database
def test_a_receiver_that_stops_mid_run_is_one_warning_and_changes_nothing(place):
    receiver = Receiver(stop_after=2)
    try:
        result = cli("loader", "marts", env=place["env"], lineage={"OPENLINEAGE_URL": receiver.url})
    finally:
        receiver.stop()
    assert result.returncode == ExitCode.OK, result.stderr
    assert len(receiver.events) == 2, "heard the build start and a dbt model start, then stopped"
    assert_one_lineage_warning(result.stderr)


@pytest.mark.database
def test_an_endpoint_that_never_answers_costs_one_timeout_per_run(place, tmp_path):
    """The HTTP transport would wait a minute; each event is given up after a second, and
    after the first, the rest of the run's events are not tried at all."""
    receiver = Receiver(answers=False)
    config = tmp_path / "lineage.yml"
    config.write_text(f"transport:\n  type: http\n  url: {receiver.url}\n  timeout: 60\n")
    env = {**place["env"], "LOADER_LINEAGE_TIMEOUT_SECONDS": "1"}
    try:
        result = cli("loader", "marts", env=env, lineage={"OPENLINEAGE_CONFIG": str(config)})
    finally:
        receiver.stop()
    assert result.returncode == ExitCode.OK, result.stderr
    assert types(receiver.events) == ["START"], "the build's start, then nothing of its run"
    assert_one_lineage_warning(result.stderr)
    assert "no answer within 1 s" in result.stderr


def assert_one_lineage_warning(stderr: str) -> None:
    """One line says it (no "working again" either), and no traceback."""
    said = [line for line in stderr.splitlines() if "warning" in line or "lineage" in line]
    assert len(said) == 1, stderr
    assert said[0].startswith("warning: lineage: LineageUnavailable: marts_build"), stderr
    assert "Traceback" not in stderr


@pytest.mark.database
def test_a_failing_dbt_build_sends_fail_for_the_build_and_its_model(place, receiver):
    with psycopg.connect(place["env"]["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("alter table core.jobs rename column job to title")
    try:
        result = cli("loader", "marts", env=place["env"], lineage={"OPENLINEAGE_URL": receiver.url})
    finally:
        with psycopg.connect(place["env"]["DATABASE_URL"], autocommit=True) as conn:
            conn.execute("alter table core.jobs rename column title to job")
    assert result.returncode == ExitCode.DBT, result.stderr
    for event in receiver.events:
        validate(event)
    build = of_job(receiver.events, "csv_migrate.marts_build")
    assert types(build) == ["START", "FAIL"]
    assert "parent" not in build[0]["run"]["facets"], "built on its own, by `marts`"
    message = build[1]["run"]["facets"]["errorMessage"]["message"]
    assert message.startswith("dbt build failed: source_not_null_core_jobs_job")
    database = place["database"]
    # dbt's test of the source fails first (its models are then skipped): a job of its own,
    # reading the very core.jobs dataset the loads write.
    tests = of_job(receiver.events, f"{database}.core.source.csv_migrate.core.jobs.build.test")
    assert types(tests) == ["START", "FAIL"]
    assert tests[1]["run"]["facets"]["parent"]["run"]["runId"] == build[0]["run"]["runId"]
    checked = tests[1]["inputs"][0]
    assert (checked["namespace"], checked["name"]) == (place["namespace"], f"{database}.core.jobs")
    assertions = checked["inputFacets"]["dataQualityAssertions"]["assertions"]
    assert {"column": "job", "success": False} in [
        {"column": a.get("column"), "success": a["success"]} for a in assertions
    ]


def test_unconfigured_there_is_no_observer_and_no_openlineage_import(tmp_path):
    script = (
        "import sys\n"
        "from loader.observe.lineage import LineageObserver\n"
        "from loader.settings import Settings\n"
        "print(LineageObserver.from_environment(Settings()),"
        " any(name.startswith('openlineage') for name in sys.modules))\n"
    )
    clean = {key: value for key, value in os.environ.items() if "OPENLINEAGE" not in key}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**clean, "HOME": str(tmp_path), "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
    )
    assert result.stdout.split() == ["None", "False"]
