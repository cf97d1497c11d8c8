"""POST /tables/{table}/batches (1 to 1000 rows, JSON or header-less CSV) and GET /batches/{id}."""

from __future__ import annotations

import hashlib
import io
from typing import Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter, ValidationError

from loader.api.deps import Database, Read, Write
from loader.api.schemas import MAX_ROWS, ROW_MODELS, BatchAnswer, RowFailure
from loader.flow.read import InputError, RawBatch, batch_id, read_stream
from loader.flow.settle import FAILED, PARTIAL, PROMOTED
from loader.tables import TABLES_BY_NAME, Table

router = APIRouter(tags=["batches"])


def table_or_404(name: str) -> Table:
    if name not in TABLES_BY_NAME:
        raise HTTPException(404, f"unknown table {name!r}; known: {', '.join(TABLES_BY_NAME)}")
    return TABLES_BY_NAME[name]


def api_batch_id(table: Table, policy: str, body: bytes) -> str:
    """The same rows sent again under the same policy are the same batch (a retry)."""
    return batch_id(f"api:{table.name}:{policy}", 1, body)


def batch_from_json(table: Table, body: bytes, source: str) -> RawBatch:
    """Validate the JSON shape strictly, then lay the rows out as the CSV reader does."""
    try:
        rows = TypeAdapter(list[ROW_MODELS[table.name]]).validate_json(body)
    except ValidationError as error:
        raise HTTPException(
            422,
            [
                {"loc": e["loc"], "msg": e["msg"]}
                for e in error.errors(include_url=False, include_context=False, include_input=False)
            ],
        ) from None
    check_row_count(len(rows))
    values = [[_text(getattr(row, column.name)) for row in rows] for column in table.columns]
    return RawBatch(
        table.name, source, 1, "", list(range(1, len(rows) + 1)), values, [None] * len(rows)
    )


def batch_from_csv(table: Table, body: bytes, source: str) -> RawBatch:
    try:
        batches = list(read_stream(io.BytesIO(body), source, table, MAX_ROWS + 1))
    except InputError as error:
        raise HTTPException(422, str(error)) from None
    check_row_count(sum(batch.rows for batch in batches))
    (batch,) = batches
    return batch


def _text(value) -> str | None:
    text = None if value is None else str(value).strip()
    return text or None


def check_row_count(rows: int) -> None:
    if rows == 0:
        raise HTTPException(422, "a batch needs 1 to 1000 rows; this one has none")
    if rows > MAX_ROWS:
        raise HTTPException(413, f"a batch holds at most {MAX_ROWS} rows; this one has {rows}")


def answer(
    batch: RawBatch,
    status: str,
    rows_promoted: int,
    failing: list[dict],
    reasons: list[dict],
    replayed: bool = False,
) -> JSONResponse:
    line_to_index = {line: index for index, line in enumerate(batch.line_numbers)}
    failures = [
        RowFailure(
            index=line_to_index.get(row["line"], row["line"] - 1), field=f["field"], rule=f["rule"]
        )
        for row in failing
        for f in row["failures"]
    ]
    body = BatchAnswer(
        batch_id=batch.batch_id,
        status=status,
        rows=batch.rows,
        rows_promoted=rows_promoted,
        rows_rejected=batch.rows - rows_promoted,
        failures=failures,
        reasons=reasons,
        replayed=replayed,
    )
    if status == FAILED:
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "5"})
    return JSONResponse(
        body.model_dump(), status_code=201 if status in (PROMOTED, PARTIAL) else 422
    )


@router.post(
    "/tables/{table}/batches",
    dependencies=[Write],
    response_model=BatchAnswer,
    status_code=201,
    responses={
        422: {"description": "rejected: each failing row's index, field, rule"},
        413: {"description": "more than 1000 rows, or body too large"},
        503: {"description": "a transient database error outlasted the retries; retry later"},
    },
)
async def insert_batch(
    table: str,
    request: Request,
    policy: Literal["reject_batch", "quarantine_rows"] | None = Query(None),
):
    """Insert 1 to 1000 rows through the loader's path: raw, GX checkpoint, promotion, audit.

    Body: a JSON array of row objects, or header-less CSV with `Content-Type: text/csv`.
    A retried request (same `Idempotency-Key`, or the same body) gets the first answer back
    with `replayed: true`; identical requests sent at once are settled once and the others
    wait for that settlement and get it replayed. Status: 201 promoted (wholly or in part),
    422 held back (rejected, or waiting for a department or job that does not exist yet:
    sending it again after that arrives re-judges it).
    """
    described = table_or_404(table)
    body = await request.body()
    state = request.app.state
    key = request.headers.get("idempotency-key")
    digest = hashlib.sha256(body).hexdigest()
    owner = False
    if key is not None:
        owner, replay = state.idempotency.claim(key, digest)
        if replay is not None:
            return replay
    try:
        response = await _settle(request, described, body, policy or state.settings.policy)
    except BaseException:
        if owner:
            state.idempotency.release(key)
        raise
    if owner:
        state.idempotency.store(key, response)
    return response


async def _settle(request: Request, table: Table, body: bytes, policy: str) -> JSONResponse:
    from starlette.concurrency import run_in_threadpool

    state = request.app.state
    source = f"api:POST /tables/{table.name}/batches"
    if request.headers.get("content-type", "").split(";")[0].strip() == "text/csv":
        batch = batch_from_csv(table, body, source)
    else:
        batch = batch_from_json(table, body, source)
    batch.batch_id = api_batch_id(table, policy, body)
    settlement = await run_in_threadpool(state.settler.settle, table, batch, policy)
    if settlement.rows_promoted and not settlement.replayed:
        state.refresher.request()
    failing = [
        {"line": row["line"], "failures": row["failures"]} for row in settlement.rejected_rows
    ]
    return answer(
        batch,
        settlement.status,
        settlement.rows_promoted,
        failing,
        settlement.reasons,
        replayed=settlement.replayed,
    )


@router.get("/batches/{batch_id}", dependencies=[Read])
def get_batch(batch_id: str, conn: Database) -> dict:
    """A batch's verdict from audit.batches, with its failing rows."""
    found = conn.execute(
        "select row_to_json(b) from audit.batches b where batch_id = %s", (batch_id,)
    ).fetchone()
    if found is None:
        raise HTTPException(404, f"no batch {batch_id}")
    rows = conn.execute(
        "select line_number, raw_values, failures from audit.rejected_rows where batch_id = %s "
        "order by line_number",
        (batch_id,),
    ).fetchall()
    return {
        **found[0],
        "failing_rows": [
            {"line": line, "values": values, "failures": failures}
            for line, values, failures in rows
        ],
    }


@router.get("/runs/{run_id}", dependencies=[Read], tags=["runs"])
def get_run(run_id: str, conn: Database) -> dict:
    """A run's row in audit.runs, with its summary."""
    found = conn.execute(
        "select row_to_json(r) from audit.runs r where run_id = %s", (run_id,)
    ).fetchone()
    if found is None:
        raise HTTPException(404, f"no run {run_id}")
    return found[0]
