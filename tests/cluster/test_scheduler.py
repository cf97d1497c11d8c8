"""`--scheduler URL` on a real cluster of separate processes (`dask scheduler`, two `dask
worker --nthreads 1`) on 127.0.0.1: one worker is SIGKILLed while it judges a share, Dask runs
that share again on another worker, and the run still equals the sequential run, every row
once; a scheduler that cannot be reached is one line and exit 9."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from distributed import Client

from loader.cli import ExitCode
from tests.cluster.conftest import BATCH_SIZE, TASK_ROWS, counts, snapshot
from tests.cluster.judging import JUDGED, STARTED, TOPIC, JudgingEvents
from tests.conftest import REPO, free_port

pytestmark = [pytest.mark.cluster, pytest.mark.database]
DASK = str(Path(sys.executable).parent / "dask")
SECONDS = 240


@pytest.fixture()
def scheduler(tmp_path):
    """A scheduler and two single-threaded workers (each under its nanny, which restarts a
    killed worker), as subprocesses; stopped by their handles afterwards. The repository is on
    their path, for the plugin of `tests.cluster.judging`."""
    address = f"tcp://127.0.0.1:{free_port()}"
    port = address.rsplit(":", 1)[1]
    logs = tmp_path / "dask.log"
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    started = []
    with logs.open("w") as log:
        started.append(
            subprocess.Popen(
                [DASK, "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
                stdout=log,
                stderr=log,
                cwd=REPO,
                env=env,
            )
        )
        for name in ("a", "b"):
            started.append(
                subprocess.Popen(
                    [DASK, "worker", address, "--nthreads", "1", "--name", name, "--no-dashboard"],
                    stdout=log,
                    stderr=log,
                    cwd=REPO,
                    env=env,
                )
            )
    try:
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
            yield address, client
    finally:
        for process in reversed(started):
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def next_event(events: queue.Queue, wanted: Callable[[dict], bool], what: str) -> dict:
    """The next event of `events` that is `wanted`, those before it dropped; fails naming
    `what` if none comes within SECONDS."""
    while True:
        try:
            event = events.get(timeout=SECONDS)
        except queue.Empty:
            pytest.fail(f"no event within {SECONDS} s: {what}")
        if wanted(event):
            return event


def test_a_killed_worker_loses_nothing_and_the_run_equals_the_sequential_one(
    scheduler, cluster_sample, sequential_result, new_database, tmp_path
):
    address, client = scheduler
    expected = sequential_result("reject_batch")
    events: queue.Queue[dict] = queue.Queue()
    client.subscribe_topic(TOPIC, lambda event: events.put(event[1]))
    client.register_plugin(JudgingEvents())
    url = new_database()
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOADER_")}
    run = subprocess.Popen(
        [sys.executable, "-m", "loader", "run", "--input", str(cluster_sample), "--json"]
        + ["--scheduler", address, "--batch-size", str(BATCH_SIZE), "--skip-marts"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **env,
            "DATABASE_URL": url,
            "LOADER_STATE_DIR": str(tmp_path / "cluster"),
            "LOADER_TASK_ROWS": str(TASK_ROWS),
        },
    )
    try:
        victim = next_event(events, lambda event: event["state"] == STARTED, "a share judged")
        os.kill(victim["pid"], signal.SIGKILL)
        out, err = run.communicate(timeout=SECONDS)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == ExitCode.OK, err
    summary = json.loads(out)
    assert snapshot(url) == expected["database"]
    assert counts(summary) == expected["summary"]

    key, killed = victim["key"], victim["worker"]
    removals = [
        event for _, event in client.get_events(killed) if event.get("action") == "remove-worker"
    ]
    assert len(removals) == 1, f"{killed}, killed, left the cluster once"
    assert key in removals[0]["processing-tasks"], "it died while its share was unjudged"
    again = next_event(
        events,
        lambda event: (event["key"], event["state"]) == (key, JUDGED) and event["worker"] != killed,
        f"{key}, the killed worker's share, judged again by another worker",
    )
    assert again["pid"] != victim["pid"]


def test_a_scheduler_that_cannot_be_reached_exits_9_in_one_line_with_nothing_written(
    cluster_sample, new_database, tmp_path
):
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    url = new_database()
    done = subprocess.run(
        [sys.executable, "-m", "loader", "run", "--input", str(cluster_sample)]
        + ["--scheduler", address, "--skip-marts"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SECONDS,
        env={
            **{key: value for key, value in os.environ.items() if not key.startswith("LOADER_")},
            "DATABASE_URL": url,
            "LOADER_STATE_DIR": str(tmp_path / "state"),
            "LOADER_SCHEDULER_TIMEOUT_SECONDS": "2",
        },
    )
    assert done.returncode == ExitCode.CLUSTER, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: cannot reach the Dask scheduler {address} (within 2 s: "
        f"Timed out trying to connect to {address} after 2 s)"
    ]
    with psycopg.connect(url) as conn:
        assert conn.execute("select count(*) from audit.batches").fetchone()[0] == 0
        assert conn.execute("select count(*) from core.hired_employees").fetchone()[0] == 0
        assert conn.execute("select status from audit.runs").fetchall() == [("failed",)]
