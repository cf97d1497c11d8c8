"""Reports: the two stakeholder reports from the dbt marts, as JSON or as CSV (`Accept:
text/csv`), each with when the marts were last rebuilt."""

from __future__ import annotations

import csv
import io
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from loader.api.deps import Conn, ReportReader
from loader.api.schemas import AUTH, DepartmentsAboveMean, HiresByQuarter, Report, errors
from loader.marts.queries import REPORTS, marts_as_of, report_rows

router = APIRouter(prefix="/reports", tags=["reports"])

RESPONSES = {
    200: {
        "description": "The report as JSON, or as CSV (header row first) with "
        "`Accept: text/csv`. `X-Data-As-Of`: when the marts were last rebuilt.",
        "content": {"text/csv": {"schema": {"type": "string"}}},
    },
    **errors(*AUTH, 422, 503, 504),
}
Year = Annotated[int, Query(ge=1, le=9999)]


# Each report's response model, by its name in `REPORTS`.
MODELS: dict[str, type[Report]] = {
    "hires-by-quarter": HiresByQuarter,
    "departments-above-mean": DepartmentsAboveMean,
}


def report(name: str, year: int, request: Request, response: Response, conn) -> Report | Response:
    """The report's rows for `year`, as its model or (asked for) as CSV; its `as_of` goes in
    a header too."""
    columns, _ = REPORTS[name]
    rows = report_rows(conn, name, year)
    as_of = marts_as_of(conn)
    headers = {"X-Data-As-Of": as_of or "never built"}
    if "text/csv" in request.headers.get("accept", ""):
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        return Response(buffer.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)
    response.headers.update(headers)
    return MODELS[name](
        report=name,
        year=year,
        as_of=as_of,
        columns=columns,
        rows=[dict(zip(columns, row)) for row in rows],
    )


@router.get("/hires-by-quarter", response_model=HiresByQuarter, responses=RESPONSES)
def hires_by_quarter(
    scope: ReportReader, request: Request, response: Response, conn: Conn, year: Year = 2021
) -> Report | Response:
    """Employees hired per department and job in `year`, by quarter, ordered by department
    and job (code-point order). `as_of` says when the marts were last rebuilt."""
    return report("hires-by-quarter", year, request, response, conn)


@router.get("/departments-above-mean", response_model=DepartmentsAboveMean, responses=RESPONSES)
def departments_above_mean(
    scope: ReportReader, request: Request, response: Response, conn: Conn, year: Year = 2021
) -> Report | Response:
    """Departments that hired more than the mean of hires per department in `year`, most
    hires first (ties: lower id first)."""
    return report("departments-above-mean", year, request, response, conn)
