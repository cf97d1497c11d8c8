"""Runs that overlap on one database: the run lock makes the later ones wait (or, with
`--no-wait`, exit 7 at once) and then skip what the first settled; nothing is done twice."""

from __future__ import annotations

import socket

import psycopg
import pytest

from loader.cli import ExitCode
from loader.db.schema import ensure_schemas
from tests.faults.accounting import assert_every_promise
from tests.faults.conftest import (
    assert_clean_stderr,
    loader_environment,
    paused_settlement,
    query,
    run_id_of,
    wait_for,
)

pytestmark = [pytest.mark.database, pytest.mark.faults]


def assert_one_worked_and_the_others_waited(runs) -> None:
    """One run settled everything; every other one printed once whom it waited for and then
    read no file: each was loaded, unchanged, by the one that worked."""
    assert [run.finish() for run in runs] == [ExitCode.OK] * len(runs), [run.stderr for run in runs]
    waiters = [run for run in runs if "waiting for" in run.stderr]
    workers = [run for run in runs if run not in waiters]
    assert len(workers) == 1, "exactly one run did the work, the others waited for it"
    worker = workers[0].summary()
    assert worker["totals"]["batches_skipped"] == 0 and worker["totals"]["rows_promoted"] > 0
    assert_clean_stderr(workers[0], 0)
    holder = f"waiting for run {worker['run_id']} (host {socket.gethostname()}, pid "
    for waiter in waiters:
        assert_clean_stderr(waiter, 1)
        assert holder in waiter.stderr, waiter.stderr
        totals = waiter.summary()["totals"]
        assert totals["rows_promoted"] == totals["rows_held_back"] == totals["batches_read"] == 0
        assert totals["rows_read"] == 0 and worker["totals"]["rows_read"] > 0
        assert waiter.summary()["files_skipped"] == [entry["url"] for entry in worker["files"]]


def start_at_once(start_run, names, url, input_dir, env):
    """Start the runs together; whichever takes the run lock is paused in its settlement until
    every other one says it waits, so that they surely overlap however fast the machine."""
    with paused_settlement(url, "departments"):
        runs = [start_run(name, input_dir, env) for name in names]
        wait_for(
            lambda: sum("waiting for" in run.stderr for run in runs) == len(runs) - 1,
            120,
            "all runs but one to wait",
        )
    return runs


def test_two_runs_at_once_one_waits_and_every_row_lands_once(
    fresh_database, small_sample, tmp_path, start_run
):
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        ensure_schemas(conn)  # a database set up earlier; a fresh one is the three-run test's
    env = loader_environment(fresh_database, tmp_path / "state")
    runs = start_at_once(start_run, ("first", "second"), fresh_database, small_sample, env)
    assert_one_worked_and_the_others_waited(runs)
    assert_every_promise(fresh_database, small_sample)


def test_three_first_runs_at_once_on_a_fresh_database_set_it_up_once_and_load_once(
    fresh_database, small_sample, tmp_path, start_run
):
    env = loader_environment(fresh_database, tmp_path / "state")
    names = ("first", "second", "third")
    runs = start_at_once(start_run, names, fresh_database, small_sample, env)
    assert_one_worked_and_the_others_waited(runs)
    assert len(query(fresh_database, "select run_id from audit.runs")) == 3
    assert_every_promise(fresh_database, small_sample)


def test_no_wait_exits_7_at_once_naming_the_holder_and_writes_nothing(
    fresh_database, small_sample, tmp_path, start_run
):
    state = tmp_path / "state"
    env = loader_environment(fresh_database, state)
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        ensure_schemas(conn)
        # The holder, paused inside its run, surely holds the run lock while the second starts.
        with paused_settlement(fresh_database, "departments"):
            holder = start_run("holder", small_sample, env)
            holder_id = wait_for(
                lambda: run_id_of(fresh_database, holder), 120, "the holder's audit.runs row"
            )
            impatient = start_run("impatient", small_sample, env, "--no-wait")
            assert impatient.finish() == ExitCode.BUSY
            assert holder.process.poll() is None, "the holder was still running"
    assert_clean_stderr(impatient, 1)
    message = impatient.stderr
    assert f"run {holder_id} (host {socket.gethostname()}, pid {holder.pid}" in message
    assert "--no-wait" in message and fresh_database in message
    assert impatient.stdout_path.read_text() == ""

    assert holder.finish() == ExitCode.OK, holder.stderr
    assert query(fresh_database, "select run_id from audit.runs") == [(holder_id,)]
    assert query(fresh_database, "select distinct _run_id from raw.hired_employees") == [
        (holder_id,)
    ]
    assert sorted(path.name for path in (state / "logs").iterdir()) == [holder_id]
    assert_every_promise(fresh_database, small_sample)
