"""A run SIGKILLed while it works: its audit.runs row is marked `abandoned` by the next run,
which settles what the killed one left and skips what it had settled."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loader.cli import ExitCode
from tests.conftest import REPO
from tests.faults.accounting import assert_every_promise
from tests.faults.conftest import (
    MOMENTS,
    assert_abandoned,
    assert_clean_stderr,
    batches_settled_by,
    ledger_rows_of,
    loader_environment,
    paused_settlement,
    run_id_of,
    wait_for,
    wait_until,
)

pytestmark = [pytest.mark.database, pytest.mark.faults]


@pytest.mark.parametrize("moment", MOMENTS)
def test_a_run_killed_midway_is_marked_abandoned_and_a_rerun_settles_every_row_once(
    moment, fresh_database, large_sample, tmp_path, start_run
):
    url = fresh_database
    env = loader_environment(url, tmp_path / "state")
    victim = start_run("killed", large_sample, env)
    victim_id = wait_until(moment, url, victim)
    victim.kill()

    rerun = start_run("rerun", large_sample, env)
    assert rerun.finish() == ExitCode.OK, rerun.stderr
    assert_clean_stderr(rerun, 0)
    assert_abandoned(url, victim_id)
    left_settled = ledger_rows_of(url, victim_id)
    if moment == "while settling":
        assert left_settled >= 60
    totals = rerun.summary()["totals"]
    assert totals["batches_skipped"] == left_settled, "what the killed run settled is skipped"
    assert totals["batches_failed"] == 0
    assert_every_promise(url, large_sample)


def test_a_run_waiting_behind_a_killed_run_marks_it_abandoned_and_does_its_work(
    fresh_database, small_sample, tmp_path, start_run
):
    url = fresh_database
    env = loader_environment(url, tmp_path / "state")
    # Pause the first run inside its settlement, with a second run waiting for it, then kill
    # the first.
    with paused_settlement(url, "hired_employees"):
        victim = start_run("killed", small_sample, env)
        victim_id = wait_for(lambda: run_id_of(url, victim), 120, "the run's audit.runs row")
        wait_for(lambda: batches_settled_by(url, victim_id, "jobs"), 120, "jobs settled")
        waiter = start_run("waiter", small_sample, env)
        wait_for(lambda: "waiting for" in waiter.stderr, 120, "the second run to wait")
        victim.kill()
    # The killed run's session ends once its lock wait does, and frees the run lock.
    assert waiter.finish() == ExitCode.OK, waiter.stderr
    assert_clean_stderr(waiter, 1)
    assert f"waiting for run {victim_id} (host " in waiter.stderr
    assert_abandoned(url, victim_id)
    totals = waiter.summary()["totals"]
    assert totals["batches_skipped"] == 2, "departments and jobs, settled by the killed run"
    assert_every_promise(url, small_sample)
    listed = subprocess.run(
        [sys.executable, "-m", "loader", "runs", "--json"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert listed.returncode == ExitCode.OK, listed.stderr
    statuses = {run["run_id"]: run["status"] for run in json.loads(listed.stdout)}
    assert statuses == {victim_id: "abandoned", waiter.summary()["run_id"]: "completed"}
