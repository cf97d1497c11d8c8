"""Load test: concurrent 1000-row inserts through the API next to the CSV loader, same rows.

    python benchmarks/api_load.py [--requests 20] [--clients 4]

Bounded and loopback only: it starts `python -m loader serve` on 127.0.0.1, sends REQUESTS
batches of 1000 hires from CLIENTS threads, then checks that core holds every row exactly once
and that no answer was a 5xx. The same rows are then loaded from CSV by the loader into a fresh
database, and both rates are printed with their ratio.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg

from loader.db.connect import database_url
from loader.flow.run import run_files
from loader.sample import write_sample
from loader.settings import Settings

TOKEN = "bench-write"


def fresh_database(server: str, name: str) -> str:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"')
    return server.rsplit("/", 1)[0] + f"/{name}"


def batch(number: int) -> list[dict]:
    return [
        {
            "id": 1_000_000 + number * 1000 + i,
            "name": f"Load {number}-{i}",
            "datetime": "2021-06-01T12:00:00Z",
            "department_id": 1 + i % 12,
            "job_id": 1 + i % 120,
        }
        for i in range(1000)
    ]


def start_server(url: str, state: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "LOADER_STATE_DIR": str(state),
        "LOADER_API_TOKENS": f"write:{TOKEN}",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "loader", "serve", "--port", str(port)], env=env
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return server, base
        except httpx.TransportError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the API server did not start")


def run(requests: int, clients: int) -> None:
    server_url = database_url(Settings())
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    write_sample(work / "parents", rows=0)
    api_db = fresh_database(server_url, "bench_api")
    run_files(
        Settings(
            database_url=api_db,
            state_dir=work / "state-api",
            input_dir=work / "parents",
            build_marts=False,
        )
    )
    server, base = start_server(api_db, work / "state-api")
    statuses = []
    try:
        with httpx.Client(
            base_url=base, timeout=600, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as client:

            def send(number: int) -> None:
                statuses.append(
                    client.post("/tables/hired_employees/batches", json=batch(number)).status_code
                )

            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(send, range(requests)))
            api_seconds = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=60)
    with psycopg.connect(api_db) as conn:
        stored, distinct = conn.execute(
            "select count(*), count(distinct id) from core.hired_employees"
        ).fetchone()
    rows = requests * 1000
    csv_dir = work / "csv"
    write_sample(csv_dir, rows=0)
    with (csv_dir / "hired_employees.csv").open("w") as handle:
        for number in range(requests):
            handle.writelines(
                f"{r['id']},{r['name']},{r['datetime']},{r['department_id']},{r['job_id']}\n"
                for r in batch(number)
            )
    csv_db = fresh_database(server_url, "bench_api_csv")
    started = time.perf_counter()
    run_files(
        Settings(
            database_url=csv_db, state_dir=work / "state-csv", input_dir=csv_dir, build_marts=False
        )
    )
    csv_seconds = time.perf_counter() - started
    print(
        f"API: {requests} requests x 1000 rows from {clients} clients in {api_seconds:.1f} s: "
        f"{rows / api_seconds:,.0f} rows/s; answers {sorted(set(statuses))}; "
        f"core holds {stored} rows, {distinct} distinct (expected {rows})"
    )
    print(f"CSV loader, same rows: {csv_seconds:.1f} s: {rows / csv_seconds:,.0f} rows/s")
    print(f"ratio API / CSV loader throughput: {(rows / api_seconds) / (rows / csv_seconds):.2f}")
    if stored != rows or distinct != rows or any(code >= 500 for code in statuses):
        raise SystemExit("lost, duplicated or failed rows")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    arguments = parser.parse_args()
    run(arguments.requests, arguments.clients)
