"""/healthz (the process answers) apart from /readyz (it can work now, and if not, why), over
real HTTP against `python -m loader serve`: each failed check named, Retry-After on 503."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from loader.flow.file_run import run_files
from loader.sample import write_sample
from tests.conftest import REPO, running_server, settings_for

pytestmark = pytest.mark.database

TOKENS = "read:r-token,write:w-token,admin:a-token"
WRITE = {"Authorization": "Bearer w-token"}
DEADLINE_SECONDS = 60


@pytest.fixture(scope="module")
def loaded(database_url, tmp_path_factory) -> tuple[str, Path]:
    """A database a file run loaded without building the marts: they miss its rows."""
    folder = tmp_path_factory.mktemp("in")
    write_sample(folder, rows=200, broken_share=0)
    state = tmp_path_factory.mktemp("state")
    run_files(settings_for(database_url, state, folder, build_marts=False))
    return database_url, state


def readiness(client: httpx.Client) -> httpx.Response:
    return client.get("/readyz")


def until(check, what: str):
    """Poll `check` until it returns something truthy, or fail naming `what`."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    pytest.fail(f"never: {what}")


def gate_children(server_pid: int) -> list[int]:
    """The server's child processes (the forked gate; the marts refresher only while it runs)."""
    found = subprocess.run(
        ["pgrep", "-P", str(server_pid)], capture_output=True, text=True, check=False
    )
    return [int(pid) for pid in found.stdout.split()]


def server_pid(port: int) -> int:
    found = subprocess.run(
        ["pgrep", "-f", f"loader serve --port {port}"], capture_output=True, text=True, check=True
    )
    return int(found.stdout.split()[0])


def test_stale_marts_are_not_ready_until_built_and_liveness_stays_ok(loaded):
    url, state = loaded
    with (
        running_server(url, state, TOKENS, LOADER_MARTS_MAX_AGE_SECONDS="0.5") as base,
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        stale = until(
            lambda: (
                (answer := readiness(client)).status_code == 503
                and answer.json()["checks"]["gate"] == "ok"
                and answer
            ),
            "marts stale, the gate warm",
        )
        assert stale.headers["Retry-After"] == "5"
        body = stale.json()
        assert body["status"] == "not ready"
        assert body["checks"]["marts"].startswith("stale: rows promoted")
        assert {key: body["checks"][key] for key in ("database", "migrations", "gate")} == {
            "database": "ok",
            "migrations": "ok",
            "gate": "ok",
        }
        assert client.get("/healthz").json() == {"status": "ok"}, "alive, though not ready"
        built = subprocess.run(
            [sys.executable, "-m", "loader", "marts"],
            env={**os.environ, "DATABASE_URL": url, "LOADER_STATE_DIR": str(state)},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert built.returncode == 0, built.stderr
        ready = readiness(client)
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ready",
            "checks": {"gate": "ok", "database": "ok", "migrations": "ok", "marts": "ok"},
        }


def test_a_dead_gate_and_a_missing_migration_are_named(loaded):
    url, state = loaded
    with (
        running_server(url, state, TOKENS) as base,
        httpx.Client(base_url=base, timeout=60) as client,
    ):
        # Not ready while the gate imports GX ("starting: ..."), then ready.
        until(lambda: readiness(client).status_code == 200, "ready once the gate is warm")
        pid = server_pid(httpx.URL(base).port)
        for child in gate_children(pid):
            os.kill(child, signal.SIGKILL)
        dead = until(
            lambda: (answer := readiness(client)).status_code == 503 and answer, "gate dead"
        )
        assert dead.json()["checks"]["gate"] == "the gate process is not running"
        # The next batch starts a new gate: the request is settled and the server ready again.
        posted = client.post(
            "/tables/departments/batches", json=[{"id": 900, "department": "Probe"}], headers=WRITE
        )
        assert posted.status_code == 201, posted.text
        assert readiness(client).json()["checks"]["gate"] == "ok"

        with psycopg.connect(url, autocommit=True) as conn:
            kept = conn.execute(
                "delete from audit.schema_migrations where version = 3 returning name"
            ).fetchone()[0]
        try:
            pending = readiness(client)
            assert pending.status_code == 503
            assert pending.json()["checks"]["migrations"] == f"not applied: 003_{kept}"
        finally:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(
                    "insert into audit.schema_migrations (version, name) values (3, %s)", (kept,)
                )
