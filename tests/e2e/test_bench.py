"""`python -m loader bench` as a user runs it: every step measured against its reference, in
scratch databases dropped at the end, and a refusal (exit 2) beside someone's data."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from loader.cli import ExitCode
from loader.db.schema import ensure_schemas

REPO = Path(__file__).resolve().parents[2]
NAMES = [
    "reference",
    "pgloader",
    "loader",
    "loader_quarantine",
    "loader_wall",
    "loader_rerun",
    "loader_rerun_wall",
    "loader_workers_2",
    "dbt",
    "backup",
    "pg_dump",
    "restore",
    "pg_restore",
    "api",
    "loader_same_rows",
    "api_latency_p95",
    "watch_latency",
    "cli_help",
]
KEYS = {"name", "seconds", "rows_per_s", "peak_rss_mb", "peak_pss_mb", "ratio_to_reference"}
# Steps whose target is a number of seconds (a latency, a start-up), not a ratio.
ABSOLUTE = ("api_latency_p95", "watch_latency", "cli_help")


def bench(url: str, tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "DATABASE_URL": url, "LOADER_STATE_DIR": str(tmp_path / "state")}
    return subprocess.run(
        [sys.executable, "-m", "loader", "bench", *arguments],
        env=environment,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def databases_named(url: str, prefix: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "select datname from pg_database where datname like %s", (f"{prefix}%",)
        ).fetchall()
    return [row[0] for row in rows]


def loader_schemas(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "select nspname from pg_namespace where nspname in ('core', 'raw', 'audit')"
        ).fetchall()
    return [row[0] for row in rows]


@pytest.mark.database
def test_every_step_is_measured_against_its_reference(database_url, tmp_path):
    results_file = tmp_path / "bench.json"
    done = bench(
        database_url, tmp_path, "--rows", "2000", "--repeat", "1", "--json", str(results_file)
    )
    assert done.returncode == ExitCode.OK, done.stderr

    report = json.loads(results_file.read_text())
    assert report["rows"] == 2000
    assert [result["name"] for result in report["results"]] == NAMES
    assert all(set(result) == KEYS for result in report["results"])
    results = {result["name"]: result for result in report["results"]}
    measured = [name for name in NAMES if name != "pgloader" or shutil.which("pgloader")]
    for name in measured:
        assert results[name]["seconds"] > 0, name
        assert name == "cli_help" or results[name]["rows_per_s"] > 0, name
        assert results[name]["peak_rss_mb"] > 1, name
    # Pss is sampled every 50 ms: a program that ends sooner (psql on 2,000 rows) may be
    # missed, but a run, its gate process and a server are there to be seen
    for name in ("loader", "loader_quarantine", "loader_workers_2", "api", "loader_same_rows"):
        assert results[name]["peak_pss_mb"] > 1, name
    if not shutil.which("pgloader"):
        assert set(results["pgloader"].values()) == {"pgloader", None}
        assert re.search(r"pgloader .*skipped .*not installed", done.stdout)

    def ratio(name: str, reference: str) -> float:
        return results[name]["seconds"] / results[reference]["seconds"]

    for name, reference in [
        ("loader", "reference"),
        ("loader_quarantine", "reference"),
        ("loader_wall", "reference"),
        ("loader_rerun", "loader"),
        ("loader_rerun_wall", "loader_wall"),
        ("loader_workers_2", "loader"),
        ("backup", "pg_dump"),
        ("restore", "pg_restore"),
    ]:
        assert results[name]["ratio_to_reference"] == pytest.approx(
            ratio(name, reference), rel=0.02
        )
    # the API's ratio is one of throughputs (rows/s), as its target is stated
    api, same_rows = results["api"], results["loader_same_rows"]
    assert api["ratio_to_reference"] == pytest.approx(
        api["rows_per_s"] / same_rows["rows_per_s"], rel=0.02
    )
    for reference in ("reference", "pg_dump", "pg_restore", "loader_same_rows"):
        assert results[reference]["ratio_to_reference"] == 1
    for name in ("dbt", *ABSOLUTE):
        assert results[name]["ratio_to_reference"] is None, name
    # the workers step's peak is its driver's plus each worker's, every one of them importing
    # GX and dlt: more than the in-process run's alone
    assert results["loader_workers_2"]["peak_rss_mb"] > results["loader"]["peak_rss_mb"]

    # the same results as a table on stdout; its scratch databases are gone, its own untouched
    number = r"[\d.,]+\s+"  # seconds, rows/s, peak RSS, peak Pss, ratio
    assert re.search(rf"loader\s+2,000\s+{number * 5}reference", done.stdout)
    assert re.search(r"loader_workers_2\s+2,000\s+[\d.]+\s+.*\s+loader \(seconds\)", done.stdout)
    prefix = re.search(r"working in databases (bench_[0-9a-f]+)_", done.stderr).group(1)
    assert databases_named(database_url, prefix) == []
    assert loader_schemas(database_url) == []


@pytest.mark.database
def test_bench_refuses_a_database_holding_loader_rows(database_url, tmp_path):
    with psycopg.connect(database_url, autocommit=True) as conn:
        ensure_schemas(conn)
        conn.execute(
            "insert into core.departments (id, department, _batch_id, _promoted_at) "
            "values (1, 'Staff', 'someone else', now())"
        )
    try:
        results_file = tmp_path / "bench.json"
        done = bench(database_url, tmp_path, "--rows", "2000", "--json", str(results_file))
        assert done.returncode == ExitCode.USAGE, done.stderr
        assert "refuses to run beside data it did not write" in done.stderr
        assert "core.departments" in done.stderr
        assert "working in databases" not in done.stderr  # refused before making any
        assert not results_file.exists()
        with psycopg.connect(database_url) as conn:
            assert conn.execute("select count(*) from core.departments").fetchone()[0] == 1
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            for schema in ("core", "audit", "raw"):
                conn.execute(f"drop schema if exists {schema} cascade")


def test_a_bench_of_no_rows_is_a_usage_error(tmp_path):
    done = bench("postgresql://nobody@127.0.0.1:1/none", tmp_path, "--rows", "0")
    assert done.returncode == ExitCode.USAGE
    assert done.stderr.count("\n") == 1 and "--rows: must be a whole number >= 1" in done.stderr
