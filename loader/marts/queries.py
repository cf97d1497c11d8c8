"""Reading the marts: when they were built (their `as_of`) and the two reports."""

from __future__ import annotations

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


def marts_as_of(conn) -> str | None:
    """When the marts were last rebuilt (ISO 8601, UTC), or None if never."""
    row = conn.execute("select max(built_at) from audit.mart_builds").fetchone()
    return row[0].isoformat() if row and row[0] else None
