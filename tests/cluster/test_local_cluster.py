"""`--workers N`: a LocalCluster's run equals the sequential run of the same input, under both
policies; a malformed line anywhere stops it with exit 3 and nothing promoted."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest
from distributed import LocalCluster

from loader.cli import ExitCode
from loader.flow.file_run import run_files
from tests.cluster.conftest import (
    REPEATED_ID,
    REPEATED_NAME,
    TASK_ROWS,
    counts,
    settings,
    snapshot,
)
from tests.conftest import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.database]


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes, shared by this module's runs (a cluster takes
    seconds to start); the CLI test starts its own with --workers."""
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as local:
        yield local.scheduler_address


@pytest.mark.parametrize("policy", ["reject_batch", "quarantine_rows"])
def test_a_cluster_run_equals_the_sequential_run(
    cluster, cluster_sample, sequential_result, new_database, tmp_path, policy
):
    expected = sequential_result(policy)
    url = new_database()
    summary = run_files(
        settings(url, tmp_path / "cluster", cluster_sample, policy, scheduler=cluster)
    )
    assert snapshot(url) == expected["database"]
    assert counts(summary.as_dict()) == expected["summary"]
    with psycopg.connect(url) as conn:
        (name,) = conn.execute(
            "select name from core.hired_employees where id = %s", (REPEATED_ID,)
        ).fetchone()
    assert name == REPEATED_NAME, "of two rows with one id, the later one in the file won"
    assert len(summary.workers) == 2, "both workers judged shares"
    assert sum(work["tasks"] for work in summary.workers.values()) > 2


def test_a_malformed_last_line_exits_3_with_nothing_promoted(
    cluster_sample, new_database, tmp_path
):
    broken = tmp_path / "input"
    broken.mkdir()
    for source in cluster_sample.iterdir():
        (broken / source.name).write_bytes(source.read_bytes())
    last = len((broken / "hired_employees.csv").read_bytes().splitlines()) + 1
    with (broken / "hired_employees.csv").open("ab") as handle:
        handle.write(b"9999,only three,fields\r\n")
    url = new_database()
    done = subprocess.run(
        [sys.executable, "-m", "loader", "run", "--input", str(broken), "--workers", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **{key: value for key, value in os.environ.items() if not key.startswith("LOADER_")},
            "DATABASE_URL": url,
            "LOADER_STATE_DIR": str(tmp_path / "state"),
            "LOADER_BATCH_SIZE": "100",
            "LOADER_TASK_ROWS": str(TASK_ROWS),
            "LOADER_BUILD_MARTS": "false",
        },
    )
    assert done.returncode == ExitCode.INPUT, done.stderr
    assert f"hired_employees.csv, line {last}: expected 5 fields" in done.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute("select count(*) from audit.batches").fetchone()[0] == 0
        for table in ("departments", "jobs", "hired_employees"):
            promoted = conn.execute(f"select count(*) from core.{table}").fetchone()[0]
            assert promoted == 0, table
