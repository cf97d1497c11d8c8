"""`--log-format json` / LOADER_LOG_FORMAT=json as a log shipper reads it: every line on stderr one
JSON object with time, level, event and message; a job's start and end with its run id and
counts; failures as error lines, never a traceback; stdout left to the data asked for."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime

import httpx
import psycopg
import pytest

from loader.cli import ExitCode
from loader.sample import write_sample
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.database

KEYS = {"time", "level", "event", "message"}


def command(module: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=REPO,
        timeout=600,
        check=False,
    )


def json_lines(stream: str) -> list[dict]:
    """Every line parsed (a line that is not one JSON object fails the test), each checked
    for the keys every line has."""
    lines = [json.loads(line) for line in stream.splitlines()]
    for line in lines:
        assert KEYS <= set(line), line
        datetime.fromisoformat(line["time"])
    return lines


def events(lines: list[dict], name: str) -> list[dict]:
    return [line for line in lines if line["event"] == name]


@pytest.fixture()
def env(database_url, tmp_path) -> dict:
    with psycopg.connect(database_url, autocommit=True) as conn:
        for schema in ("core", "audit", "raw"):
            conn.execute(f"drop schema if exists {schema} cascade")
    folder = tmp_path / "in"
    write_sample(folder, rows=300)
    return {
        "DATABASE_URL": database_url,
        "LOADER_STATE_DIR": str(tmp_path / "state"),
        "LOADER_INPUT_DIR": str(folder),
        "BACKUP_DIR": str(tmp_path / "backups"),
    }


def test_a_run_and_its_marts_build_log_one_json_object_a_line(env):
    result = command("loader", "run", "--log-format", "json", env=env)
    assert result.returncode == ExitCode.OK, result.stderr
    assert result.stdout == "", "the summary is the log's own line, not a table on stdout"
    lines = json_lines(result.stderr)
    (started,) = events(lines, "file_run.started")
    (finished,) = events(lines, "file_run.finished")
    assert started["run_id"] == finished["run_id"]
    assert len(started["inputs"]) == 3
    assert finished["status"] == "complete" and finished["duration_seconds"] > 0
    assert finished["rows_read"] == finished["rows_promoted"] + finished["rows_held_back"]
    assert finished["rows_held_back"] > 0, "the sample breaks rows on purpose"
    tables = {line["table"]: line for line in events(lines, "table.settled")}
    assert set(tables) == {"departments", "jobs", "hired_employees"}
    assert tables["hired_employees"]["reasons"], "the rules that held rows back"
    (build,) = events(lines, "marts_build.finished")
    assert build["status"] == "complete" and set(build["mart_rows"]) == {
        "hires_by_quarter",
        "departments_above_mean",
    }
    (build_started,) = events(lines, "marts_build.started")
    assert build_started["parent_run_id"] == started["run_id"]


def test_a_failing_run_is_an_error_line_and_the_environment_variable_works(env, tmp_path):
    (tmp_path / "in" / "hired_employees.csv").write_text('1,"Unclosed,2021-01-01T00:00:00Z,1,1\n')
    result = command("loader", "run", env={**env, "LOADER_LOG_FORMAT": "json"})
    assert result.returncode == ExitCode.INPUT
    assert "Traceback" not in result.stderr
    lines = json_lines(result.stderr)
    (finished,) = events(lines, "file_run.finished")
    assert finished["status"] == "fail" and finished["level"] == "error"
    assert "hired_employees.csv" in finished["error"]
    errors = [line for line in events(lines, "message") if line["level"] == "error"]
    assert len(errors) == 1 and "hired_employees.csv" in errors[0]["message"]


def test_backups_log_json_lines_with_their_counts(env):
    assert command("loader", "run", "--skip-marts", env=env).returncode == ExitCode.OK
    made = command("backup", "--log-format", "json", "create", env=env)
    assert made.returncode == 0, made.stderr
    stamp = made.stdout.strip()
    (finished,) = events(json_lines(made.stderr), "backup.finished")
    assert finished["run_id"] == stamp and finished["status"] == "complete"
    assert finished["table_rows"]["departments"] > 0 and finished["bytes"] > 0
    restored = command(
        "backup", "restore", "--table", "jobs", env={**env, "LOADER_LOG_FORMAT": "json"}
    )
    assert restored.returncode == 0, restored.stderr
    (finished,) = events(json_lines(restored.stderr), "restore.finished")
    assert finished["run_id"] == stamp and finished["table_rows"]["jobs"] > 0


def test_watch_logs_each_run_and_its_stop_as_json(env):
    watch = subprocess.Popen(
        [sys.executable, "-m", "loader", "watch", "--every", "0.2", "--skip-marts"],
        env={**os.environ, **env, "LOADER_LOG_FORMAT": "json"},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = []
        for line in watch.stderr:  # a log shipper's view: line by line, as they come
            seen.append(json.loads(line))
            if seen[-1]["event"] == "watch_run.finished":
                break
        watch.send_signal(signal.SIGTERM)
        _, rest = watch.communicate(timeout=120)
    finally:
        if watch.poll() is None:
            watch.kill()
    assert watch.returncode == 0
    lines = seen + json_lines(rest)
    (finished,) = events(lines, "watch_run.finished")
    assert finished["rows_promoted"] > 0 and finished["files_read"] == 3
    assert any("stopping after the current run" in line["message"] for line in lines)


def test_the_server_logs_json_lines_from_start_to_stop(env, tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "loader", "serve", "--port", str(port), "--log-format", "json"],
        env={**os.environ, **env, "LOADER_API_TOKENS": "write:w-token"},
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = json.loads(server.stderr.readline())  # said once the settings are checked
        assert first["message"].startswith("serving ") and first["level"] == "info"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # uvicorn listens a moment after that line
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/tables/departments/batches",
            json=[{"id": 1, "department": "Supply Chain"}],
            headers={"Authorization": "Bearer w-token"},
            timeout=120,
        )
        assert answer.status_code == 201, answer.text
    finally:
        server.terminate()
        _, rest = server.communicate(timeout=60)
    lines = [first, *json_lines(rest)]
    (finished,) = events(lines, "api_run.finished")
    assert finished["rows_promoted"] == 1 and finished["status"] == "complete"
