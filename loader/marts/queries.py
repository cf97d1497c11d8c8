"""Reading the marts: when they were built (their `as_of`), and the two reports, each written
once, here, for the API and the dashboard."""

from __future__ import annotations

import psycopg

# Each report: its column headers, and its query on the marts for one year (%s).
REPORTS = {
    "hires-by-quarter": (
        ["department", "job", "Q1", "Q2", "Q3", "Q4"],
        (
            "select department, job, q1, q2, q3, q4 from marts.hires_by_quarter where year = %s "
            'order by department collate "C", job collate "C"'
        ),
    ),
    "departments-above-mean": (
        ["id", "department", "hired"],
        (
            "select id, department, hired from marts.departments_above_mean where year = %s "
            "order by hired desc, id"
        ),
    ),
}


def marts_as_of(conn: psycopg.Connection) -> str | None:
    """When the marts were last rebuilt (ISO 8601, UTC), or None if never."""
    row = conn.execute("select max(built_at) from audit.mart_builds").fetchone()
    return row[0].isoformat() if row and row[0] else None


def marts_built(conn: psycopg.Connection) -> bool:
    """Whether a build has made both marts (before the first, there is nothing to report)."""
    return conn.execute(
        "select to_regclass('marts.hires_by_quarter') is not null "
        "and to_regclass('marts.departments_above_mean') is not null"
    ).fetchone()[0]


def report_rows(conn: psycopg.Connection, name: str, year: int) -> list[tuple]:
    """The report's rows for `year`, in its order; none before the marts were first built."""
    if not marts_built(conn):
        return []
    _, query = REPORTS[name]
    return conn.execute(query, (year,)).fetchall()


def report_by_year(conn: psycopg.Connection, name: str) -> list[dict]:
    """The report's rows of every year, by year, each a dict by the query's column names with
    its `year` first. Call only once the marts are built."""
    _, query = REPORTS[name]
    years = [
        year
        for (year,) in conn.execute(
            "select year from marts.hires_by_quarter union "
            "select year from marts.departments_above_mean order by year"
        )
    ]
    rows = []
    for year in years:
        cursor = conn.execute(query, (year,))
        names = [column.name for column in cursor.description]
        rows.extend({"year": year, **dict(zip(names, row))} for row in cursor.fetchall())
    return rows


def mean_hires(conn: psycopg.Connection) -> dict[int, float]:
    """Year → the mean of hires per department that report 2 compares with, computed from the
    same snapshot the marts were built from, not from core today."""
    return {
        year: float(mean)
        for year, mean in conn.execute(
            "select year, sum(hired)::numeric / max(department_count) as mean "
            "from staging.int_hires_per_department_job group by year"
        )
    }
