"""Failures outside the data, as a user meets them: a state folder that is full or read-only,
and a DATABASE_URL in libpq's unix-socket form. One line, the documented exit status, and a
database left as it was (or loaded, for the socket URL)."""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from loader.cli import ExitCode
from loader.sample import write_sample
from tests.e2e.test_cli import assert_one_clean_line, loader

pytestmark = pytest.mark.database


@contextmanager
def small_filesystem(folder: Path, size: str, read_only: bool = False):
    """A tmpfs of `size` at `folder` (root only: skipped, saying why, elsewhere)."""
    folder.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {
            table: conn.execute(f"select count(*) from {table}").fetchone()[0]
            for table in ("core.hired_employees", "audit.batches", "raw.hired_employees")
            if conn.execute("select to_regclass(%s)", (table,)).fetchone()[0]
        }


@pytest.fixture()
def url(clean) -> str:
    return clean


@pytest.mark.parametrize(
    ("size", "read_only", "reason"),
    [("64k", False, "No space left on device"), ("1m", True, "Read-only file system")],
    ids=["full", "read-only"],
)
def test_an_unwritable_state_folder_is_one_line_naming_it_with_exit_8_before_any_write(
    url, tmp_path, size, read_only, reason
):
    with small_filesystem(tmp_path / "state", size, read_only) as state:
        result = loader("run", env={"DATABASE_URL": url, "LOADER_STATE_DIR": str(state)})
    assert result.returncode == ExitCode.STATE, result.stderr
    assert_one_clean_line(result)
    assert str(state) in result.stderr and reason in result.stderr
    assert counts(url) == {}, "the database was not touched"


def test_a_state_folder_filling_up_mid_run_is_one_line_and_nothing_is_promoted(url, tmp_path):
    write_sample(tmp_path / "in", rows=200_000)
    with small_filesystem(tmp_path / "state", "4m") as state:
        result = loader(
            "run",
            "--input",
            str(tmp_path / "in"),
            "--skip-marts",
            env={"DATABASE_URL": url, "LOADER_STATE_DIR": str(state)},
        )
    assert result.returncode == ExitCode.STATE, result.stderr
    assert_one_clean_line(result)
    assert str(state) in result.stderr
    assert counts(url).get("core.hired_employees", 0) == 0
    assert counts(url).get("audit.batches", 0) == 0
    with psycopg.connect(url) as conn:
        assert conn.execute("select status from audit.runs").fetchall() == [("failed",)]


def socket_url(url: str) -> str | None:
    """The same database reached over the server's unix socket, in libpq's host-less form."""
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    for folder in ("/var/run/postgresql", "/tmp"):
        candidate = f"postgresql://postgres@/{name}?host={folder}"
        try:
            with psycopg.connect(candidate, connect_timeout=3) as conn:
                conn.execute("select 1")
        except psycopg.Error:
            continue
        return candidate
    return None


def test_a_unix_socket_database_url_loads_and_builds_the_marts(url, tmp_path):
    found = socket_url(url)
    if found is None:
        pytest.skip("this server has no unix socket in /var/run/postgresql or /tmp")
    result = loader("run", env={"DATABASE_URL": found, "LOADER_STATE_DIR": str(tmp_path / "s")})
    assert result.returncode == ExitCode.OK, result.stderr
    assert "marts: rebuilt" in result.stdout
    assert counts(url)["core.hired_employees"] > 0
