"""The API under load: `python -m loader serve` on a free loopback port, then batches of up to
1000 hired_employees lines sent as `text/csv` from a few client threads at once.

The server starts, its gate process warm (GX imported: `/readyz` says so), before the clock
does; the clock stops at the last answer. Every answer must be 2xx (201 promoted, 200 judged
and held back), else the step fails. The peak memory is the
server's: it is the process doing the work.

`api_latency_p95` sends the same bodies one at a time, each waiting for the last answer, and
reports the 95th percentile of their latencies: what a client posting a 1000-row batch waits.
"""

from __future__ import annotations

import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from loader.bench.measure import PROGRAMS, Work, record_peak

CLIENTS = 4
START_SECONDS = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request_bodies(csv_file: Path, rows_per_request: int) -> list[bytes]:
    """The file's lines, `rows_per_request` to a body, in file order."""
    lines = csv_file.read_bytes().splitlines(keepends=True)
    return [
        b"".join(lines[start : start + rows_per_request])
        for start in range(0, len(lines), rows_per_request)
    ]


def start_server(url: str, state: Path, token: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    environment = {
        **os.environ,
        "DATABASE_URL": url,
        "LOADER_STATE_DIR": str(state),
        "LOADER_API_TOKENS": f"write:{token}",
    }
    with log.open("wb") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "loader", "serve", "--port", str(port)],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline and server.poll() is None:
        try:
            ready = httpx.get(f"{base}/readyz", timeout=2).json()
            if ready.get("checks", {}).get("gate") == "ok":  # warm: GX imported
                return server, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.kill()
    server.wait()
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    raise RuntimeError(f"the API server did not start: {' | '.join(tail)}")


def percentile_95(values: list[float]) -> float:
    """The 95th percentile (inclusive method: within the values seen; one value is itself)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def send_batches(job: dict) -> Work:
    """Prepare: start the server on job["url"]; the work: post every body, CLIENTS at a time
    (or, with job["one_at_a_time"], one after another: the work's figure is then the 95th
    percentile of the answers' latencies)."""
    bodies = request_bodies(Path(job["csv_file"]), job["rows_per_request"])
    token = secrets.token_urlsafe(16)
    state = Path(job["state_dir"])
    state.mkdir(parents=True, exist_ok=True)
    server, base = start_server(job["url"], state, token, state / "server.log")
    client = httpx.Client(
        base_url=base,
        timeout=600,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "text/csv"},
    )

    latencies: list[float] = []

    def post(body: bytes) -> int:
        started = time.perf_counter()
        status = client.post("/tables/hired_employees/batches", content=body).status_code
        latencies.append(time.perf_counter() - started)
        return status

    def run() -> float | None:
        with ThreadPoolExecutor(1 if job.get("one_at_a_time") else CLIENTS) as pool:
            statuses = list(pool.map(post, bodies))
        refused = sorted({code for code in statuses if not 200 <= code < 300})
        if refused:
            raise RuntimeError(f"the API answered {refused} to some of {len(bodies)} batches")
        return percentile_95(latencies) if job.get("one_at_a_time") else None

    def finish() -> None:
        client.close()
        record_peak(server.pid)
        server.terminate()
        server.wait(timeout=60)

    return Work(run, PROGRAMS, finish)
