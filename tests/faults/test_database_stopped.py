"""The database stops under a run, at every stage, sessions told to end (`fast`) or cut as by a
crash (`immediate`): exit 4 with one line naming the database (password hidden), whatever the
run's threads, its gate process and dlt's load threads met; once it is back, a re-run marks the
cut-off run abandoned and settles every row once."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import pgserver
import pytest

from loader.cli import ExitCode
from loader.db.embedded import SYSTEM_USER, EmbeddedServer
from tests.conftest import free_port, server_folder
from tests.faults.accounting import assert_every_promise
from tests.faults.conftest import (
    MOMENTS,
    assert_abandoned,
    assert_clean_stderr,
    create_database,
    drop_database,
    ledger_rows_of,
    loader_environment,
    wait_until,
)

pytestmark = [pytest.mark.database, pytest.mark.faults]
PASSWORD = "s3cret-never-shown"


@pytest.fixture(scope="module")
def own_server():
    """A PostgreSQL of this module's own (pgserver's), which the tests stop and start."""
    with server_folder() as folder:
        server = EmbeddedServer(folder / "pgdata", free_port())
        server.start()
        yield server
        server.stop()


def stop(server: EmbeddedServer, mode: str) -> None:
    """`pg_ctl stop -m fast` (sessions told to end) or `-m immediate` (as a crash would)."""
    user = SYSTEM_USER if os.geteuid() == 0 else None
    pgserver.pg_ctl(["-w", "-m", mode, "stop"], pgdata=server.pgdata, user=user, timeout=90)


def with_password(url: str) -> str:
    """The same URL with a password, which the server's trust auth ignores."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.replace("@", f":{PASSWORD}@", 1)))


@pytest.mark.parametrize("mode", ["fast", "immediate"])
@pytest.mark.parametrize("moment", MOMENTS)
def test_a_database_stopped_mid_run_gives_exit_4_and_a_rerun_settles_every_row_once(
    mode, moment, own_server, large_sample, tmp_path, start_run
):
    url = with_password(create_database(own_server.url))
    shown = url.replace(PASSWORD, "***")
    env = loader_environment(url, tmp_path / "state")
    try:
        cut_off = start_run("cut-off", large_sample, env)
        run_id = wait_until(moment, url, cut_off)
        stop(own_server, mode)
        try:
            assert cut_off.finish() == ExitCode.DATABASE, cut_off.stderr
        finally:
            own_server.start()
        assert_clean_stderr(cut_off, 1)
        assert shown in cut_off.stderr and PASSWORD not in cut_off.stderr

        rerun = start_run("rerun", large_sample, env)
        assert rerun.finish() == ExitCode.OK, rerun.stderr
        assert_clean_stderr(rerun, 0)
        assert_abandoned(url, run_id)
        totals = rerun.summary()["totals"]
        assert totals["batches_skipped"] == ledger_rows_of(url, run_id), "kept, not redone"
        assert totals["batches_failed"] == 0
        assert_every_promise(url, large_sample)
    finally:
        own_server.start()
        drop_database(url)
