"""Shared fixtures: a real PostgreSQL (DATABASE_URL, else the embedded server) with a fresh
database per test module, and sample input written by the project's own generator."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest

from loader.db.embedded import EmbeddedServer
from loader.sample import write_sample
from loader.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption(
        "--screenshots",
        action="store_true",
        help="write README's screenshots into docs/screenshots (otherwise a test run writes "
        "nothing tracked)",
    )


@pytest.fixture(scope="session")
def server_url() -> str:
    """URL of a server the tests may create databases on."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    with server_folder() as folder:
        server = EmbeddedServer(folder / "pgdata")
        yield server.start()
        server.stop()


@contextmanager
def server_folder():
    """A folder for an embedded server's files, outside pytest's tmp root: pytest resets that
    root to mode 0700 at start-up, which would lock out the server's own system user."""
    folder = Path(tempfile.mkdtemp(prefix="csv-migrate-test-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@pytest.fixture(scope="module")
def database_url(server_url, request) -> str:
    """A database of this test module's own, dropped afterwards."""
    name = f"test_{request.module.__name__.rsplit('.', 1)[-1]}_{secrets.token_hex(3)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    yield with_database(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


@pytest.fixture()
def clean(database_url) -> str:
    """The module's database with no core, audit or raw schema: a first run's starting point."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for schema in ("core", "audit", "raw"):
            conn.execute(f"drop schema if exists {schema} cascade")
    return database_url


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sample")
    write_sample(folder, rows=3000)
    return folder


def settings_for(url: str, state: Path, input_dir: Path, **overrides) -> Settings:
    return Settings(database_url=url, state_dir=state, input_dir=input_dir, **overrides)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_server(database_url: str, state: Path, tokens: str, **variables: str):
    """`python -m loader serve` on a free loopback port (more settings as `variables`, e.g.
    LOADER_API_REQUEST_SECONDS="2"); yields its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "LOADER_STATE_DIR": str(state),
        "LOADER_API_TOKENS": tokens,
        **variables,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "loader", "serve", "--port", str(port)],
        env=env,
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            server.kill()
            pytest.fail(f"server did not start: {server.stderr.read()}")
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)
