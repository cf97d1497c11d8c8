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
from hypothesis.configuration import set_hypothesis_home_dir

from loader.db.embedded import EmbeddedServer
from loader.sample import write_sample
from loader.settings import Settings

REPO = Path(__file__).resolve().parent.parent
# Hypothesis keeps its examples and caches in the temporary folder, not in `.hypothesis/` of
# the working directory: a test run writes nothing into the repository.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "csv-migrate-hypothesis")


def missing_marks(item: pytest.Item) -> list[str]:
    """The marks `item` lacks: `database` when it reaches the server through these fixtures
    (a test that starts a server of its own, embedded or pgserver's, is marked by hand), and
    its folder's mark with `database` in tests/faults and tests/cluster."""
    needed = ["database"] if "server_url" in getattr(item, "fixturenames", ()) else []
    for folder in ("faults", "cluster"):
        if item.path.is_relative_to(REPO / "tests" / folder):
            needed += [folder, "database"]
    return [mark for mark in dict.fromkeys(needed) if item.get_closest_marker(mark) is None]


def pytest_collection_modifyitems(config, items):
    """Refuse a test without the marks it needs, so that `-m "not database"` leaves no test
    that needs PostgreSQL and `-m "not faults and not cluster"` none of the slow ones."""
    unmarked = [
        f"{item.nodeid} ({', '.join(lacks)})" for item in items if (lacks := missing_marks(item))
    ]
    if unmarked:
        raise pytest.UsageError("tests without the marks they need: " + "; ".join(unmarked))


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
