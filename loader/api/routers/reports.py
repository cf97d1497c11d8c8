"""The two stakeholder reports, read from the dbt marts, as JSON or CSV (`Accept: text/csv`)."""

from __future__ import annotations

import csv
import io

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from loader.api.deps import Database, ReadOrQueryToken
from loader.marts.queries import REPORTS, marts_as_of

router = APIRouter(prefix="/reports", tags=["reports"])


def report(name: str, year: int, request: Request, conn) -> Response:
    columns, query = REPORTS[name]
    rows = conn.execute(query, (year,)).fetchall()
    as_of = marts_as_of(conn)
    headers = {"X-Data-As-Of": as_of or "never built"}
    if "text/csv" in request.headers.get("accept", ""):
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        return Response(buffer.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)
    return JSONResponse(
        {
            "report": name,
            "year": year,
            "as_of": as_of,
            "columns": columns,
            "rows": [dict(zip(columns, row)) for row in rows],
        },
        headers=headers,
    )


@router.get("/hires-by-quarter", dependencies=[ReadOrQueryToken])
def hires_by_quarter(request: Request, conn: Database, year: int = Query(2021, ge=1, le=9999)):
    """Employees hired per department and job in `year`, by quarter, ordered by department
    and job (code-point order). `as_of` says when the marts were last rebuilt."""
    return report("hires-by-quarter", year, request, conn)


@router.get("/departments-above-mean", dependencies=[ReadOrQueryToken])
def departments_above_mean(
    request: Request, conn: Database, year: int = Query(2021, ge=1, le=9999)
):
    """Departments that hired more than the mean of hires per department in `year`, most
    hires first (ties: lower id first)."""
    return report("departments-above-mean", year, request, conn)
