"""How soon an upload is settled: `python -m loader watch --every 1` on a bucket of an
S3-compatible server (moto's, started on loopback), a 1000-row hired_employees export put in
the bucket, and the seconds from the end of the upload until every row of it is settled in
the ledger (`audit.batches`), as a user of `watch` waits for it.

Untimed before: the server and the bucket, the parents uploaded and settled by the watch (its
first run, marts and all, over before the clock starts). The watch runs as users start it, marts
on: they are built after the ledger is written, so they do not delay the figure. Its peak RSS is
the watch's; its Pss sum counts moto's server too (a child of the step, like the watch). Needs
s3fs and moto (the `dev` extra); without them the step is skipped, saying so.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from loader.bench.api import free_port
from loader.bench.measure import PROGRAMS, Work, record_peak

BUCKET = "exports"
PREFIX = f"{BUCKET}/arrivals"
EVERY_SECONDS = 1
START_SECONDS = 60
SETTLE_SECONDS = 120
POLL_SECONDS = 0.01
SETTLED = ("promoted", "partially_promoted", "rejected")
NEEDS = ("moto", "s3fs")


def missing() -> list[str]:
    """The packages the step needs that are not installed."""
    return [name for name in NEEDS if importlib.util.find_spec(name) is None]


def settled_rows(url: str, source: str) -> int:
    """The rows of `source` settled in the ledger (0 before the watch has made the ledger)."""
    with psycopg.connect(url) as conn:
        if conn.execute("select to_regclass('audit.batches')").fetchone()[0] is None:
            return 0
        found = conn.execute(
            "select coalesce(sum(rows_read), 0) from audit.batches "
            "where source = %s and status = any(%s)",
            (source, list(SETTLED)),
        ).fetchone()
    return found[0]


def wait_for(check, seconds: float, what: str, process: subprocess.Popen, log: Path) -> None:
    """Poll `check()` until true; RuntimeError naming `what` if `process` dies or time runs out."""
    deadline = time.monotonic() + seconds
    while not check():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{what} did not happen: {' | '.join(tail) or 'no output'}")
        time.sleep(POLL_SECONDS)


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as output:
        return subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def upload_settled(job: dict) -> Work:
    """Prepare: moto's server, a watch on its bucket, the parents settled; the work: upload
    job["export"] and wait until its rows are settled."""
    import httpx
    import s3fs

    work_dir = Path(job["work_dir"])
    work_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    aws = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    kept = {key: value for key, value in os.environ.items() if not key.startswith("LOADER_")}
    env = {**kept, **aws, "DATABASE_URL": job["url"], "LOADER_STATE_DIR": job["state_dir"]}
    server_log, watch_log = work_dir / "moto.log", work_dir / "watch.log"
    moto = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    server = start(moto, env, server_log)
    processes = [server]

    def answering() -> bool:
        try:
            httpx.get(endpoint, timeout=2)
            return True
        except httpx.TransportError:
            return False

    def finish() -> None:
        for process in reversed(processes):
            stop(process)

    try:
        wait_for(answering, START_SECONDS, "moto's server starting", server, server_log)
        bucket = s3fs.S3FileSystem(
            key="bench", secret="bench", endpoint_url=endpoint, skip_instance_cache=True
        )
        bucket.mkdir(BUCKET)
        for parent in job["parents"]:
            bucket.put_file(parent, f"{PREFIX}/{Path(parent).name}")
        command = [
            sys.executable, "-m", "loader", "watch", "--input", f"s3://{PREFIX}/",
            "--every", str(EVERY_SECONDS),
        ]  # fmt: skip
        watch = start(command, env, watch_log)
        processes.append(watch)
        parents_done = [f"s3://{PREFIX}/{Path(parent).name}" for parent in job["parents"]]

        def parents_settled() -> bool:
            # The first run's stdout line comes once its marts are built: the watch is idle.
            return all(settled_rows(job["url"], source) for source in parents_done) and (
                " completed: " in watch_log.read_text(errors="replace")
            )

        wait_for(parents_settled, SETTLE_SECONDS, "the parents settling", watch, watch_log)
    except BaseException:
        finish()
        raise
    export = Path(job["export"])
    source = f"s3://{PREFIX}/{export.name}"
    rows = sum(1 for line in export.read_bytes().splitlines() if line.strip())

    def run() -> float:
        bucket.put_file(str(export), f"{PREFIX}/{export.name}")
        uploaded = time.perf_counter()
        wait_for(
            lambda: settled_rows(job["url"], source) >= rows,
            SETTLE_SECONDS,
            f"{export.name} settling",
            watch,
            watch_log,
        )
        seconds = time.perf_counter() - uploaded
        record_peak(watch.pid)
        return seconds

    return Work(run, PROGRAMS, finish)
