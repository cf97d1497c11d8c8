"""The dbt marts built by a load: equal to answers computed independently from the CSV files,
in UTC whatever the server's TimeZone, and readable by the BI role alone."""

from __future__ import annotations

import csv
import secrets
from collections import Counter, defaultdict
from datetime import UTC, datetime

import psycopg
import pytest

from loader.db.roles import grant_marts_reader
from loader.flow.file_run import run_files
from loader.marts.build import build_marts
from loader.sample import write_sample
from tests.conftest import settings_for, with_database

pytestmark = pytest.mark.database

EDGES = [  # hires at the edges of quarters and years, some with offsets
    "2020-12-31T23:59:59Z",
    "2021-01-01T00:00:00Z",
    "2021-03-31T23:59:59Z",
    "2021-03-31T23:30:00-02:00",
    "2021-04-01T01:00:00+02:00",
    "2021-06-30T23:59:59.999999Z",
    "2021-09-30T20:00:00-05:00",
    "2021-12-31T23:59:59Z",
    "2021-12-31T23:59:59.9999999Z",
    "2022-01-01T00:30:00+01:00",
]


def expected_from_csv(folder):
    """Reports 1 and 2 for every year, computed in Python from the files alone."""

    def read(name):
        return list(csv.reader((folder / name).read_text(encoding="utf-8").splitlines()))

    departments = {int(r[0]): r[1].strip() for r in read("departments.csv") if r}
    jobs = {int(r[0]): r[1].strip() for r in read("jobs.csv") if r}
    quarters = defaultdict(lambda: [0, 0, 0, 0])
    per_department = Counter()
    years = set()
    for row in read("hired_employees.csv"):
        when = datetime.fromisoformat(row[2]).astimezone(UTC)
        department, job = int(row[3]), int(row[4])
        quarters[(when.year, departments[department], jobs[job])][(when.month - 1) // 3] += 1
        per_department[(when.year, department)] += 1
        years.add(when.year)
    report1 = sorted(
        [(y, d, j, *q) for (y, d, j), q in quarters.items()],
        key=lambda r: (r[0], r[1].encode(), r[2].encode()),
    )
    report2 = []
    for year in sorted(years):
        mean = sum(per_department[(year, d)] for d in departments) / len(departments)
        above = [
            (year, d, departments[d], per_department[(year, d)])
            for d in departments
            if per_department[(year, d)] > mean
        ]
        report2 += sorted(above, key=lambda r: (-r[3], r[1]))
    return report1, report2


@pytest.fixture(scope="module")
def loaded(database_url, tmp_path_factory):
    """A clean sample plus hires at quarter edges in their own department, loaded with the
    database's TimeZone far from UTC."""
    folder = tmp_path_factory.mktemp("marts")
    write_sample(folder, rows=4000, broken_share=0)
    with (folder / "departments.csv").open("a") as departments:
        departments.write("13,Edge Cases\r\n")
    with (folder / "hired_employees.csv").open("a") as hired:
        hired.writelines(f"{9000 + i},Edge {i},{when},13,1\r\n" for i, when in enumerate(EDGES))
    with psycopg.connect(database_url, autocommit=True) as conn:
        name = conn.execute("select current_database()").fetchone()[0]
        conn.execute(f"alter database \"{name}\" set timezone to 'Pacific/Kiritimati'")
    state = tmp_path_factory.mktemp("state")
    summary = run_files(settings_for(database_url, state, folder))
    return folder, summary, state


def test_marts_equal_answers_computed_from_the_csv_in_utc(loaded, database_url):
    folder, summary, _ = loaded
    assert summary.marts_status == "rebuilt"
    report1, report2 = expected_from_csv(folder)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("show timezone").fetchone()[0] == "Pacific/Kiritimati"
        got1 = conn.execute(
            "select year, department, job, q1, q2, q3, q4 "
            "from marts.hires_by_quarter "
            'order by year, department collate "C", job collate "C"'
        ).fetchall()
        got2 = conn.execute(
            "select year, id, department, hired from marts.departments_above_mean "
            "order by year, hired desc, id"
        ).fetchall()
    assert got1 == report1
    assert got2 == report2
    assert summary.marts == {
        "hires_by_quarter": len(report1),
        "departments_above_mean": len(report2),
    }


def test_hires_at_quarter_edges_land_in_their_utc_quarter(loaded, database_url):
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "select year, q1, q2, q3, q4 from marts.hires_by_quarter "
            "where department = 'Edge Cases' order by year"
        ).fetchall()
    # 2022-01-01T00:30+01:00 is 2021 in UTC; 2021-04-01T01:00+02:00 is still Q1;
    # 2021-03-31T23:30-02:00 and 2021-09-30T20:00-05:00 are already the next quarter;
    # 23:59:59.9999999 on New Year's Eve stays in 2021 (truncated, not rounded into 2022).
    assert rows == [(2020, 0, 0, 0, 1), (2021, 3, 2, 0, 4)]


def test_bi_role_reads_marts_after_rebuilds_and_is_refused_elsewhere(loaded, database_url):
    role, password = f"bi_{secrets.token_hex(3)}", secrets.token_hex(8)
    with psycopg.connect(database_url, autocommit=True) as conn:
        grant_marts_reader(conn, role, password)
    assert build_marts(database_url, loaded[2]).success, "the marts are recreated by dbt"
    bi_url = psycopg.conninfo.make_conninfo(database_url, user=role, password=password)
    with psycopg.connect(bi_url, autocommit=True) as conn:
        assert conn.execute("select count(*) from marts.hires_by_quarter").fetchone()[0] > 0
        for table in (
            "core.hired_employees",
            "raw.hired_employees",
            "audit.batches",
            "staging.stg_core__jobs",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"select 1 from {table} limit 1")


def test_a_failing_dbt_build_is_reported_not_raised(tmp_path, server_url):
    name = f"test_broken_{secrets.token_hex(3)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    with psycopg.connect(with_database(server_url, name), autocommit=True) as conn:
        # A jobs table someone made by hand, without the column the staging model reads.
        conn.execute("create schema core")
        conn.execute("create table core.jobs (id integer primary key)")
    try:
        build = build_marts(with_database(server_url, name), tmp_path)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'drop database "{name}" with (force)')
    assert not build.success
    assert any('column "job" does not exist' in failure for failure in build.failures)
