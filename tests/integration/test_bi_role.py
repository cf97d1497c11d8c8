"""docs/BI.md's "Connect a BI tool", done as written: `db bi-role` with the password it shows, then
real psql with its two connection strings (host, port, database and role name swapped for the
test's), reading both reports equal to the marts and refused everywhere else."""

from __future__ import annotations

import csv
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from pgserver._commands import POSTGRES_BIN_PATH
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from loader.cli import ExitCode, parser
from loader.flow.file_run import run_files
from loader.marts.build import build_marts
from loader.marts.queries import REPORTS
from loader.sample import write_sample
from tests.conftest import REPO, settings_for

pytestmark = pytest.mark.database

# Debian's psql where installed, else the one in the pgserver wheel the project depends on.
PSQL = shutil.which("psql") or str(Path(POSTGRES_BIN_PATH) / "psql")
REFUSED = {
    "core": "select from core.hired_employees",
    "raw": "select from raw.hired_employees",
    "audit": "select from audit.batches",
    "staging": "select from staging.stg_core__jobs",
}


def readme_section() -> str:
    text = (REPO / "docs" / "BI.md").read_text(encoding="utf-8")
    start = text.index("## Connect a BI tool\n")
    return text[start : text.index("\n#", start + 1)]


@pytest.fixture(scope="module")
def readme():
    """The section's `bi-role` password and its two connection strings, URL form first."""
    section = readme_section()
    password = re.search(r"python -m loader db bi-role --password '([^']+)'", section)[1]
    url, key_value = re.findall(r'psql "([^"]+)"', section)
    assert url.startswith("postgresql://") and conninfo_to_dict(url) == conninfo_to_dict(key_value)
    return section, password, url, key_value


@pytest.fixture(scope="module")
def bi_role(database_url, readme, tmp_path_factory):
    """A loaded database, the README's `bi-role` command run on it (under a role name of the
    test's own: roles are shared by the whole server), then the marts rebuilt."""
    _, password, _, _ = readme
    folder = tmp_path_factory.mktemp("in")
    write_sample(folder, rows=1500)
    state = tmp_path_factory.mktemp("state")
    assert run_files(settings_for(database_url, state, folder)).marts_status == "rebuilt"
    role = f"bi_reader_{secrets.token_hex(3)}"
    granted = subprocess.run(
        [sys.executable, "-m", "loader", "db", "bi-role", "--password", password, "--name", role],
        env={**os.environ, "DATABASE_URL": database_url, "LOADER_STATE_DIR": str(state)},
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert granted.returncode == ExitCode.OK, granted.stderr
    assert f"role {role} can read schema marts and nothing else" in granted.stderr
    assert build_marts(database_url, state).success, "dbt recreates the marts the role reads"
    yield role
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'drop owned by "{role}"')
        conn.execute(f'drop role "{role}"')


def connection_strings(readme, database_url: str, role: str) -> list[str]:
    """The README's two strings, pointed at the test's server, database and role; the
    password stays the README's (this server may trust 127.0.0.1 and not check it)."""
    _, password, url, key_value = readme
    ours = conninfo_to_dict(database_url)
    host, port, dbname = ours.get("host", "127.0.0.1"), ours.get("port", "5432"), ours["dbname"]
    readme_password = conninfo_to_dict(url)["password"]
    assert readme_password == password, "the strings use the password given to bi-role"
    url_form = urlunsplit(
        urlsplit(url)._replace(netloc=f"{role}:{password}@{host}:{port}", path=f"/{dbname}")
    )
    key_value_form = make_conninfo(key_value, host=host, port=port, dbname=dbname, user=role)
    return [url_form, key_value_form]


def psql(conninfo: str, query: str) -> subprocess.CompletedProcess:
    # -X: no ~/.psqlrc; PG* variables dropped so that only the connection string speaks.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(
        [PSQL, conninfo, "-X", "--csv", "-v", "ON_ERROR_STOP=1", "-c", query],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_readme_names_the_default_role_and_both_report_queries(readme):
    section, _, url, _ = readme
    assert (
        conninfo_to_dict(url)["user"]
        == parser().parse_args(["db", "bi-role", "--password", "x"]).name
    )
    for _, query in REPORTS.values():
        assert query.replace("%s", "2021") + ";" in section
    for schema in REFUSED:
        assert f"`{schema}`" in section


@pytest.mark.parametrize("form", ["url", "key=value"])
def test_psql_as_the_bi_role_reads_both_reports_equal_to_the_marts(
    readme, database_url, bi_role, form
):
    conninfo = connection_strings(readme, database_url, bi_role)[form != "url"]
    for _, query in REPORTS.values():
        sql = query.replace("%s", "2021")
        answer = psql(conninfo, sql)
        assert answer.returncode == 0, answer.stderr
        header, *rows = csv.reader(answer.stdout.splitlines())
        with psycopg.connect(database_url) as conn:
            marts = conn.execute(query, (2021,))
            expected = [[str(value) for value in row] for row in marts.fetchall()]
            columns = [column.name for column in marts.description]
        assert header == columns
        assert rows == expected and rows, sql
    assert psql(conninfo, "select current_user").stdout.splitlines()[1] == bi_role


def test_psql_as_the_bi_role_is_refused_everything_else(readme, database_url, bi_role):
    conninfo = connection_strings(readme, database_url, bi_role)[0]
    for schema, query in REFUSED.items():
        answer = psql(conninfo, query)
        assert answer.returncode != 0, query
        assert f"permission denied for schema {schema}" in answer.stderr
    for write in (
        "delete from marts.hires_by_quarter",
        "update marts.departments_above_mean set hired = 0",
        "create table marts.mine (x int)",
    ):
        answer = psql(conninfo, write)
        assert answer.returncode != 0 and "permission denied" in answer.stderr, write
