"""The two stakeholder reports, read from the dbt marts, as JSON or CSV (`Accept: text/csv`)."""

from __future__ import annotations

import csv
import io

import psycopg
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from loader.api.deps import Database, ReadOrQueryToken
from loader.api.schemas import AUTH, DepartmentsAboveMean, HiresByQuarter, errors
from loader.marts.queries import REPORTS, marts_as_of

router = APIRouter(prefix="/reports", tags=["reports"])

RESPONSES = {
    200: {
        "description": "The report as JSON, or as CSV (header row first) with "
        "`Accept: text/csv`. `X-Data-As-Of`: when the marts were last rebuilt.",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    },
    **errors(*AUTH, 422, 503, 504),
}
Year = Query(2021, ge=1, le=9999)


def report(name: str, year: int, request: Request, response: Response, conn) -> dict | Response:
    """The report's rows for `year` (as CSV if asked for); its `as_of` goes in a header too."""
    columns, query = REPORTS[name]
    try:
        rows = conn.execute(query, (year,)).fetchall()
    except psycopg.errors.UndefinedTable:
        rows = []  # no run has built the marts yet: an empty report, `as_of` null
    as_of = marts_as_of(conn)
    headers = {"X-Data-As-Of": as_of or "never built"}
    if "text/csv" in request.headers.get("accept", ""):
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        return Response(buffer.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)
    response.headers.update(headers)
    return {
        "report": name,
        "year": year,
        "as_of": as_of,
        "columns": columns,
        "rows": [dict(zip(columns, row)) for row in rows],
    }


@router.get(
    "/hires-by-quarter",
    dependencies=[ReadOrQueryToken],
    response_model=HiresByQuarter,
    responses=RESPONSES,
)
def hires_by_quarter(request: Request, response: Response, conn: Database, year: int = Year):
    """Employees hired per department and job in `year`, by quarter, ordered by department
    and job (code-point order). `as_of` says when the marts were last rebuilt."""
    return report("hires-by-quarter", year, request, response, conn)


@router.get(
    "/departments-above-mean",
    dependencies=[ReadOrQueryToken],
    response_model=DepartmentsAboveMean,
    responses=RESPONSES,
)
def departments_above_mean(request: Request, response: Response, conn: Database, year: int = Year):
    """Departments that hired more than the mean of hires per department in `year`, most
    hires first (ties: lower id first)."""
    return report("departments-above-mean", year, request, response, conn)
