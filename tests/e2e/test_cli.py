"""`python -m loader` as a user drives it: real subprocesses, exit codes, messages, database."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import psycopg
import pytest

from loader.cli import ExitCode
from tests.conftest import REPO, server_folder


def loader(*args, env=None, cwd=None):
    environment = {**os.environ, **(env or {})}
    environment.pop("LOADER_INPUT_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "loader", *args],
        capture_output=True,
        text=True,
        check=False,
        env=environment,
        cwd=cwd or REPO,
        timeout=600,
    )


@pytest.fixture()
def env(database_url, tmp_path):
    with psycopg.connect(database_url, autocommit=True) as conn:
        for schema in ("core", "audit", "raw"):
            conn.execute(f"drop schema if exists {schema} cascade")
    return {"DATABASE_URL": database_url, "LOADER_STATE_DIR": str(tmp_path / "state")}


def assert_one_clean_line(result):
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("size", ["0", "1001", "ten"])
def test_batch_size_outside_1_to_1000_is_refused_with_exit_2(size, tmp_path):
    result = loader("run", "--batch-size", size, env={"LOADER_STATE_DIR": str(tmp_path)})
    assert result.returncode == ExitCode.USAGE
    assert "--batch-size" in result.stderr
    assert not (tmp_path / "pgdata").exists(), "nothing started, nothing written"


@pytest.mark.database
def test_run_loads_the_bundled_sample_and_prints_the_summary(env):
    result = loader("run", env=env)
    assert result.returncode == ExitCode.OK, result.stderr
    assert "hired_employees" in result.stdout and "total" in result.stdout
    assert "data docs:" in result.stdout
    assert "marts: rebuilt: marts.hires_by_quarter" in result.stdout
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        assert conn.execute("select count(*) from core.departments").fetchone()[0] == 12


@pytest.mark.database
def test_json_summary_and_max_rejected_rows_give_a_distinct_exit_status(env):
    result = loader("run", "--json", "--max-rejected-rows", "0", env=env)
    assert result.returncode == ExitCode.REJECTED
    summary = json.loads(result.stdout)
    assert summary["totals"]["rows_held_back"] > 0
    assert "more than --max-rejected-rows 0" in result.stderr
    again = loader("run", "--json", "--max-rejected-rows", "100000", env=env)
    assert again.returncode == ExitCode.OK
    assert len(json.loads(again.stdout)["files_skipped"]) == 3, "loaded before, not read again"


@pytest.mark.database
def test_a_folder_without_exports_is_one_clear_line_and_exit_3(env, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "notes.txt").write_text("1,Sales\n")
    result = loader("run", "--input", str(folder), env=env)
    assert result.returncode == ExitCode.INPUT
    assert_one_clean_line(result)
    assert f"{folder}: no export file found" in result.stderr


@pytest.mark.database
def test_four_columns_on_one_line_names_file_and_line_and_writes_nothing(env, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(REPO / "loader" / "sample_data", folder)
    lines = (folder / "hired_employees.csv").read_bytes().split(b"\r\n")
    lines[41] = b"42,Ann,2021-01-01T00:00:00Z,1"
    (folder / "hired_employees.csv").write_bytes(b"\r\n".join(lines))
    result = loader("run", "--input", str(folder), env=env)
    assert result.returncode == ExitCode.INPUT
    assert_one_clean_line(result)
    assert "hired_employees.csv, line 42: expected 5 fields" in result.stderr
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        assert conn.execute("select count(*) from core.departments").fetchone()[0] == 0
        assert conn.execute("select to_regclass('raw.departments')").fetchone()[0] is None


def test_unreachable_database_is_one_line_with_the_password_hidden(tmp_path):
    url = "postgresql://someone:s3cret@127.0.0.1:9/nowhere"
    result = loader("run", env={"DATABASE_URL": url, "LOADER_STATE_DIR": str(tmp_path)})
    assert result.returncode == ExitCode.DATABASE
    assert_one_clean_line(result)
    assert "someone:***@127.0.0.1:9/nowhere" in result.stderr
    assert "s3cret" not in result.stderr


def test_sample_with_a_seed_is_reproducible_and_without_one_is_fresh_and_says_its_seed(tmp_path):
    files = ("departments.csv", "jobs.csv", "hired_employees.csv")
    for name in ("a", "b"):
        made = loader("sample", "--rows", "500", "--seed", "11", "--out", str(tmp_path / name))
        assert made.returncode == ExitCode.OK and "seed 11" in made.stderr
    for file in files:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()

    fresh = loader("sample", "--rows", "5000", "--out", str(tmp_path / "fresh"))
    seed = re.search(r"seed (\d+)", fresh.stderr).group(1)
    bundled = REPO / "loader" / "sample_data" / "hired_employees.csv"
    assert (tmp_path / "fresh" / "hired_employees.csv").read_bytes() != bundled.read_bytes()
    again = loader("sample", "--rows", "5000", "--seed", seed, "--out", str(tmp_path / "again"))
    assert again.returncode == ExitCode.OK
    for file in files:
        assert (tmp_path / "fresh" / file).read_bytes() == (tmp_path / "again" / file).read_bytes()

    documented = loader("sample", "--rows", "5000", "--seed", "7", "--out", str(tmp_path / "b7"))
    assert documented.returncode == ExitCode.OK
    assert (tmp_path / "b7" / "hired_employees.csv").read_bytes() == bundled.read_bytes()


@pytest.mark.database  # the embedded server: PostgreSQL all the same
def test_embedded_default_runs_stays_up_for_other_tools_and_stops():
    with server_folder() as folder:
        env = {"LOADER_STATE_DIR": str(folder / "state"), "DATABASE_URL": ""}
        try:
            result = loader("run", env=env, cwd=folder)
            assert result.returncode == ExitCode.OK, result.stderr
            url = loader("db", "url", env=env).stdout.strip()
            assert url.startswith("postgresql://postgres@127.0.0.1:")
            with psycopg.connect(url) as conn:
                assert conn.execute("select count(*) from core.jobs").fetchone()[0] == 120
        finally:
            stopped = loader("db", "stop", env=env)
        assert stopped.returncode == ExitCode.OK and "stopped" in stopped.stderr
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(url, connect_timeout=3)


@pytest.mark.database
def test_dbt_build_and_docs_work_from_the_repo_root_with_db_env(env, tmp_path):
    assert loader("run", "--skip-marts", env=env).returncode == ExitCode.OK
    target = tmp_path / "target"
    script = (
        'eval "$(python -m loader db env)" && '
        f"dbt build --target-path {target} --log-path {tmp_path} && "
        f"dbt docs generate --target-path {target} --log-path {tmp_path}"
    )
    environment = {
        **os.environ,
        **env,
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
    }
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env=environment,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Completed successfully" in result.stdout
    assert (target / "index.html").exists() and (target / "catalog.json").exists()


@pytest.mark.database
def test_a_failing_dbt_build_fails_the_run_with_exit_6(env, tmp_path):
    assert loader("run", env=env).returncode == ExitCode.OK
    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("alter table core.jobs rename column job to title")
    folder = tmp_path / "in"
    shutil.copytree(REPO / "loader" / "sample_data", folder)
    (folder / "departments_2.csv").write_text("99,New Department\n")  # something new to load
    result = loader("run", "--input", str(folder), env=env)
    assert result.returncode == ExitCode.DBT
    assert "error: dbt build failed" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.database
def test_report_html_is_one_self_contained_file_with_the_marts(env, tmp_path):
    assert loader("run", env=env).returncode == ExitCode.OK
    out = tmp_path / "report.html"
    result = loader("report", "--html", str(out), env=env)
    assert result.returncode == ExitCode.OK, result.stderr
    page = out.read_text(encoding="utf-8")
    external = re.findall(r"<(?:script|link|img)\b[^>]*\b(?:src|href)=\"https?://", page)
    assert external == [], "nothing is fetched from the network"
    assert "Plotly" in page and 'id="heat-table"' in page
    with psycopg.connect(env["DATABASE_URL"]) as conn:
        top = conn.execute(
            "select department, hired from marts.departments_above_mean "
            "where year = 2021 order by hired desc, id limit 1"
        ).fetchone()
    assert f'<th scope="row">{top[0]}</th><td>' in page and f"<td>{top[1]}</td>" in page


@pytest.mark.database
def test_runs_lists_each_run_with_its_status_counts_and_duration(env):
    assert loader("run", "--skip-marts", env=env).returncode == ExitCode.OK
    assert loader("run", "--skip-marts", env=env).returncode == ExitCode.OK
    result = loader("runs", "--json", "--limit", "5", env=env)
    assert result.returncode == ExitCode.OK, result.stderr
    runs = json.loads(result.stdout)
    assert [run["status"] for run in runs] == ["completed", "completed"]
    latest, first = runs
    assert first["rows_promoted"] > 0 and first["files_read"] == 3
    assert latest["files_read"] == 0 and latest["files_skipped"] == 3, "loaded before"
    assert latest["rows_read"] == latest["rows_promoted"] == 0
    assert all(run["seconds"] > 0 and run["pid"] for run in runs)
    table = loader("runs", env=env)
    assert latest["run_id"] in table.stdout and "completed" in table.stdout
