"""A run SIGKILLed at each named kill point (loader/flow/kill_points.py), then run again: every
row ends exactly once, the killed run is marked abandoned, and what it committed is kept."""

from __future__ import annotations

import signal

import pytest

from loader.cli import ExitCode
from tests.faults.accounting import assert_every_promise
from tests.faults.conftest import (
    assert_abandoned,
    assert_clean_stderr,
    ledger_rows_of,
    loader_environment,
    processes_left,
    run_id_of,
)

pytestmark = [pytest.mark.database, pytest.mark.faults]

# (kill point, pass at which to die, batches the killed run leaves settled). The small sample
# is 1 + 1 + 30 batches (departments, jobs, hires), judged in three chunks, one per table. Its
# 19th hire batch holds the broken rows: hires 1-18 pass and settle in one transaction
# (`settle.line.together`), then 19 alone, then 20-30; the kill points are passed per batch.
KILLS = [
    ("after_verdict", 3, 0),  # the hires judged, nothing settled
    ("after_raw_load", 1, 0),  # everything landed in raw, nothing settled
    ("before_commit", 20, 2),  # the 20th settlement written: hires 1-18 not committed
    ("after_commit", 20, 20),  # hires 1-18 committed, the 19th not begun
]


@pytest.mark.parametrize(("point", "passes", "settled"), KILLS, ids=[k[0] for k in KILLS])
def test_a_run_killed_at_a_kill_point_loses_and_doubles_nothing_on_the_rerun(
    point, passes, settled, fresh_database, small_sample, tmp_path, start_run
):
    url = fresh_database
    env = loader_environment(url, tmp_path / "state")
    # One settling connection: with two, the other lane may commit between the n-th pass and
    # the kill, and "settled when killed" would be n or n + 1.
    kill = {"LOADER_KILL_AT": f"{point}:{passes}", "LOADER_SETTLE_CONNECTIONS": "1"}
    victim = start_run("killed", small_sample, {**env, **kill})
    assert victim.finish() == -signal.SIGKILL, victim.stderr
    assert not processes_left("loader", "run", str(small_sample)), "its gate process died too"
    victim_id = run_id_of(url, victim)
    assert ledger_rows_of(url, victim_id) == settled

    rerun = start_run("rerun", small_sample, env)
    assert rerun.finish() == ExitCode.OK, rerun.stderr
    assert_clean_stderr(rerun, 0)
    assert_abandoned(url, victim_id)
    totals = rerun.summary()["totals"]
    assert totals["batches_skipped"] == settled, "what the killed run committed is kept"
    assert totals["batches_read"] == 32 - settled
    assert_every_promise(url, small_sample)
