"""Marts rebuilt while core keeps changing: every `dbt build` succeeds, and its marts show one
state that core really was in, not a blend of the moments each model or test happened to read.

A writer thread commits departments, jobs and hires one small transaction at a time and keeps a
log of its commits in order. A snapshot is a prefix of that log, so after each build the marts
must equal the two reports computed in Python from one prefix of it.

The core tables are created here with plain SQL mirroring loader/tables.py, and dbt runs as a
subprocess, so the test depends on the dbt project and the core schema only.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import psycopg
import pytest

pytestmark = pytest.mark.database

REPO = Path(__file__).resolve().parents[2]
BUILDS = 3
HIRES_PER_BUILD_AT_LEAST = 20
# The marts' invariants (named data tests in _marts__models.yml). Before the marts read one
# snapshot they failed under writes; now they must pass.
MART_TESTS = (
    "quarters_add_up_to_the_hires_of_each_year",
    "hires_by_quarter_counts_every_hire_of_the_snapshot",
    "departments_above_mean_hired_more_than_the_mean",
    "departments_above_mean_has_one_mean_per_year",
    "mean_hired_counts_every_department_of_the_snapshot",
    "departments_above_mean_hired_no_more_than_hires_by_quarter",
)

CORE_DDL = """
create schema core;
create table core.departments (
    id integer primary key, department text not null,
    _batch_id text not null, _promoted_at timestamptz not null
);
create table core.jobs (
    id integer primary key, job text not null,
    _batch_id text not null, _promoted_at timestamptz not null
);
create table core.hired_employees (
    id integer primary key, name text not null, datetime timestamptz not null,
    department_id integer not null references core.departments (id),
    job_id integer not null references core.jobs (id),
    _batch_id text not null, _promoted_at timestamptz not null
)
"""


@dataclass
class Core:
    """What the writer has committed, in commit order (`log`), and the rows themselves."""

    departments: dict[int, str] = field(default_factory=dict)
    jobs: dict[int, str] = field(default_factory=dict)
    hires: dict[int, tuple[datetime, int, int]] = field(default_factory=dict)
    log: list[tuple[str, int]] = field(default_factory=list)

    def hires_committed(self) -> int:
        return len(self.hires)


class Writer(threading.Thread):
    """Commits a department, a job or (mostly) a hire per transaction until stopped. Department
    1 never hires: report 2's mean must still count it as 0."""

    def __init__(self, url: str, core: Core):
        super().__init__(name="core-writer", daemon=True)
        self.url, self.core = url, core
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.random = random.Random(9)

    def run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                while not self.stopping.is_set():
                    self.commit_one(conn)
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error

    def commit_one(self, conn: psycopg.Connection) -> None:
        core, pick = self.core, self.random.random()
        if pick < 0.05:
            add_department(conn, core, len(core.departments) + 1)
        elif pick < 0.10:
            add_job(conn, core, len(core.jobs) + 1)
        else:
            hiring = [department for department in core.departments if department != 1]
            add_hire(
                conn,
                core,
                len(core.hires) + 1,
                datetime(2020, 1, 1, tzinfo=UTC)
                + timedelta(seconds=self.random.randrange(3 * 366 * 86400)),
                self.random.choice(hiring),
                self.random.choice(list(core.jobs)),
            )


def add_department(conn, core: Core, key: int) -> None:
    # Names repeat: departments that share a name share a row of report 1.
    name = f"Department {key % 7}"
    conn.execute("insert into core.departments values (%s, %s, 'writer', now())", (key, name))
    core.departments[key] = name
    core.log.append(("departments", key))


def add_job(conn, core: Core, key: int) -> None:
    title = f"Job {key % 5}"
    conn.execute("insert into core.jobs values (%s, %s, 'writer', now())", (key, title))
    core.jobs[key] = title
    core.log.append(("jobs", key))


def add_hire(conn, core: Core, key: int, when: datetime, department: int, job: int) -> None:
    conn.execute(
        "insert into core.hired_employees values (%s, %s, %s, %s, %s, 'writer', now())",
        (key, f"Hire {key}", when, department, job),
    )
    core.hires[key] = (when, department, job)
    core.log.append(("hired_employees", key))


def seed(url: str) -> Core:
    """Core tables with a few rows, department 1 among them with no hire."""
    core = Core()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(CORE_DDL)
        for key in range(1, 5):
            add_department(conn, core, key)
            add_job(conn, core, key)
        for key in range(1, 21):
            when = datetime(2020 + key % 3, 1 + key % 12, 1 + key % 28, tzinfo=UTC)
            add_hire(conn, core, key, when, 2 + key % 3, 1 + key % 4)
    return core


def state_at(core: Core, log: list[tuple[str, int]], hires: int, departments: int):
    """The state core was in after the shortest prefix of `log` holding that many hires and
    departments, as (departments, jobs, hires); None if no prefix holds exactly those."""
    counts = Counter()
    for length, (table, _) in enumerate(log, start=1):
        counts[table] += 1
        if counts["hired_employees"] == hires and counts["departments"] == departments:
            ids = defaultdict(set)
            for name, key in log[:length]:
                ids[name].add(key)
            return (
                {key: core.departments[key] for key in ids["departments"]},
                {key: core.jobs[key] for key in ids["jobs"]},
                {key: core.hires[key] for key in ids["hired_employees"]},
            )
        if counts["hired_employees"] > hires or counts["departments"] > departments:
            return None
    return None


def expected_reports(departments, jobs, hires):
    """Report 1 with its `hired` totals, and report 2 with each year's mean as a fraction."""
    quarters = defaultdict(lambda: [0, 0, 0, 0])
    per_department = Counter()
    for when, department, job in hires.values():
        quarters[(when.year, departments[department], jobs[job])][(when.month - 1) // 3] += 1
        per_department[(when.year, department)] += 1
    report1 = sorted((y, d, j, *q, sum(q)) for (y, d, j), q in quarters.items())
    report2 = []
    for year in sorted({year for year, _ in per_department}):
        mean = Fraction(
            sum(n for (y, _), n in per_department.items() if y == year), len(departments)
        )
        report2 += [
            (year, department, departments[department], per_department[(year, department)], mean)
            for department in sorted(departments)
            if per_department[(year, department)] > mean
        ]
    return report1, report2


def dbt_build(url: str, folder: Path) -> subprocess.CompletedProcess:
    """`dbt build` from the repo root, as a user runs it, on the database at `url`."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    libpq = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "password": "PGPASSWORD"}
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
    environment.update({libpq[key]: str(info[key]) for key in libpq if info.get(key)})
    environment["PGDATABASE"] = str(info["dbname"])
    return subprocess.run(
        [
            str(Path(sys.executable).with_name("dbt")),
            "build",
            "--project-dir", str(REPO),
            "--profiles-dir", str(REPO),
            "--target-path", str(folder / "target"),
            "--log-path", str(folder / "logs"),
        ],
        cwd=REPO,
        check=False,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip


def marts(url: str):
    """Both marts as rows comparable with `expected_reports`, and the snapshot's departments."""
    with psycopg.connect(url) as conn:
        report1 = conn.execute(
            "select year, department, job, q1, q2, q3, q4, hired from marts.hires_by_quarter "
            "order by year, department, job"
        ).fetchall()
        report2 = conn.execute(
            "select year, id, department, hired, mean_hired from marts.departments_above_mean "
            "order by year, id"
        ).fetchall()
        departments = conn.execute(
            "select distinct department_count from staging.int_hires_per_department_job"
        ).fetchall()
    assert len(departments) == 1, "one snapshot has one count of departments"
    return sorted(report1), report2, departments[0][0]


def test_every_marts_rebuild_under_continuous_writes_succeeds_and_shows_one_state_of_core(
    database_url, tmp_path
):
    core = seed(database_url)
    writer = Writer(database_url, core)
    writer.start()
    try:
        for build in range(1, BUILDS + 1):
            hires_before = core.hires_committed()
            result = dbt_build(database_url, tmp_path)
            hires_during = core.hires_committed() - hires_before
            log = list(core.log)  # the writer only appends: a copy is a prefix of the log

            assert result.returncode == 0, f"build {build} failed:\n{result.stdout[-4000:]}"
            assert writer.error is None, writer.error
            assert hires_during >= HIRES_PER_BUILD_AT_LEAST, "the build ran under writes"
            statuses = {
                outcome["unique_id"].split(".")[2]: outcome["status"]
                for outcome in json.loads((tmp_path / "target" / "run_results.json").read_text())[
                    "results"
                ]
            }
            assert {test: statuses.get(test) for test in MART_TESTS} == dict.fromkeys(
                MART_TESTS, "pass"
            )

            report1, report2, departments = marts(database_url)
            assert all(sum(row[3:7]) == row[7] for row in report1), "q1..q4 add up to hired"
            assert all(row[3] > row[4] for row in report2), "report 2 hired more than the mean"
            state = state_at(core, log, sum(row[7] for row in report1), departments)
            assert state is not None, f"build {build} read no state core was ever in"
            expected1, expected2 = expected_reports(*state)
            assert report1 == expected1, f"build {build}: report 1"
            assert [row[:4] for row in report2] == [row[:4] for row in expected2]
            # numeric keeps 16 significant digits or more of a mean like 5/3
            assert all(
                abs(Fraction(got[4]) - want[4]) < Fraction(1, 10**12)
                for got, want in zip(report2, expected2, strict=True)
            ), f"build {build}: each year's mean counts every department of the snapshot"
    finally:
        writer.stopping.set()
        writer.join(timeout=30)
    assert writer.error is None, writer.error
