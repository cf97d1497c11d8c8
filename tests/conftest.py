"""Shared fixtures: a real PostgreSQL (DATABASE_URL, else the embedded server) with a fresh
database per test module, and sample input written by the project's own generator."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from loader.embedded import EmbeddedServer
from loader.sample import write_sample
from loader.settings import Settings

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def server_url(tmp_path_factory) -> str:
    """URL of a server the tests may create databases on."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    server = EmbeddedServer(tmp_path_factory.mktemp("embedded") / "pgdata")
    url = server.start()
    yield url
    server.stop()


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


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sample")
    write_sample(folder, rows=3000)
    return folder


def settings_for(url: str, state: Path, input_dir: Path, **overrides) -> Settings:
    return Settings(database_url=url, state_dir=state, input_dir=input_dir, **overrides)
