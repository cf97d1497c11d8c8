"""POST /tables/{table}/batches (1 to 1000 rows, JSON or header-less CSV) and GET /batches/{id}."""

from __future__ import annotations

import hashlib
import io
from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from loader.api.deps import Database, Read, Write
from loader.api.idempotency import once_per_key
from loader.api.schemas import (
    AUTH,
    MAX_ROWS,
    ROW_MODELS,
    BatchAnswer,
    BatchRecord,
    ErrorDetail,
    FailingRow,
    RowFailure,
    RunRecord,
    errors,
)
from loader.flow.errors import InputError
from loader.flow.model import BatchState, RawBatch
from loader.flow.source.csv_reader import batch_id, escape_text, read_stream
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
    values: list[list[str | None]] = [[] for _ in table.columns]
    problems: list[str | None] = []
    for row in rows:
        found = None
        for column, column_values in zip(table.columns, values, strict=True):
            text, problem = _text(getattr(row, column.name))
            column_values.append(text)
            found = found or problem
        problems.append(found)
    return RawBatch(table.name, source, 1, "", list(range(1, len(rows) + 1)), values, problems)


def batch_from_csv(table: Table, body: bytes, source: str) -> RawBatch:
    try:
        batches = list(read_stream(io.BytesIO(body), source, table, MAX_ROWS + 1))
    except InputError as error:
        raise HTTPException(422, str(error)) from None
    check_row_count(sum(batch.rows for batch in batches))
    (batch,) = batches
    return batch


def _text(value) -> tuple[str | None, str | None]:
    """A field as the CSV reader would give it: trimmed, empty as None, NUL and lone
    surrogates escaped and named (the gate then rejects the row, which raw keeps)."""
    if value is None:
        return None, None
    text, problem = escape_text(str(value).strip())
    return text or None, problem


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
    """201 promoted (wholly or in part); 200 judged and held back (rejected, waiting); 503
    failed (a transient database error outlasted the retries)."""
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
    ).model_dump(mode="json")
    if status == BatchState.FAILED:
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse(
        body,
        status_code=201 if status in (BatchState.PROMOTED, BatchState.PARTIALLY_PROMOTED) else 200,
    )


ROWS_SCHEMA = {
    "oneOf": [
        {
            "title": f"{name} rows",
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_ROWS,
            "items": model.model_json_schema(),
        }
        for name, model in ROW_MODELS.items()
    ]
}


@router.post(
    "/tables/{table}/batches",
    dependencies=[Write],
    response_model=BatchAnswer,
    status_code=201,
    responses={
        201: {"description": "promoted, wholly or in part (`quarantine_rows`)"},
        200: {
            "model": BatchAnswer,
            "description": "judged and held back: `rejected` (a row rule failed) or `waiting` "
            "(a department or job does not exist yet); each failing row's index, field, rule",
        },
        **errors(*AUTH, 404, 413, 422),
        503: {
            "model": BatchAnswer | ErrorDetail,
            "description": "status `failed` (a transient database error outlasted the "
            "retries), the database unreachable or its connections busy: retry after "
            "Retry-After; nothing was settled",
        },
        **errors(504),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": ROWS_SCHEMA},
                "text/csv": {"schema": {"type": "string", "description": "header-less CSV"}},
            },
        }
    },
)
async def insert_batch(
    table: str,
    request: Request,
    policy: Literal["reject_batch", "quarantine_rows"] | None = Query(None),
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=255,
            description="Retries with the same key and body get the first answer, never a "
            "second settlement, also after a 504.",
        ),
    ] = None,
):
    """Insert 1 to 1000 rows through the loader's path: raw, GX checkpoint, promotion, audit.

    Body: a JSON array of row objects, or header-less CSV with `Content-Type: text/csv`.
    A retried request (same `Idempotency-Key`, or the same body) gets the first answer back
    with `replayed: true` and the first answer's status code; identical requests sent at once
    are settled once and the others wait for that settlement and get it replayed. A request
    that times out (504) goes on: send it again to get its outcome. Status: 201 promoted
    (wholly or in part); 200 judged and held back (`rejected`, or `waiting` for a department or
    job that does not exist yet: sending it again after that arrives re-judges it); 422 only
    for a malformed request.
    """
    described = table_or_404(table)
    body = await request.body()
    state = request.app.state
    policy = policy or state.settings.policy
    as_csv = request.headers.get("content-type", "").split(";")[0].strip() == "text/csv"
    batch = await run_in_threadpool(parse_batch, described, body, as_csv, policy)
    work = partial(settle_batch, state, described, batch, policy)
    if idempotency_key is None:
        return await state.settlements.run(work)
    digest = hashlib.sha256(body).hexdigest()
    return await once_per_key(state, idempotency_key, digest, work)


def parse_batch(table: Table, body: bytes, as_csv: bool, policy: str) -> RawBatch:
    """The request's rows as one batch with its deterministic id; 413 or 422 if malformed."""
    source = f"api:POST /tables/{table.name}/batches"
    parse = batch_from_csv if as_csv else batch_from_json
    batch = parse(table, body, source)
    batch.batch_id = api_batch_id(table, policy, body)
    return batch


def settle_batch(state, table: Table, batch: RawBatch, policy: str) -> JSONResponse:
    """Settle the batch (blocking: call it on a settlement thread) and answer for it."""
    settlement = state.settler.settle(table, batch, policy)
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


@router.get("/batches/{batch_id}", dependencies=[Read], responses=errors(*AUTH, 404, 422, 503, 504))
def get_batch(batch_id: str, conn: Database) -> BatchRecord:
    """A batch's verdict from audit.batches, with its failing rows."""
    found = (
        conn.cursor(row_factory=dict_row)
        .execute(
            "select batch_id, run_id, table_name, source, first_line, last_line, rows_read, "
            "rows_promoted, rows_rejected, status, reasons, attempts, settled_at "
            "from audit.batches where batch_id = %s",
            (batch_id,),
        )
        .fetchone()
    )
    if found is None:
        raise HTTPException(404, f"no batch {batch_id}")
    rows = conn.execute(
        "select line_number, raw_values, failures from audit.rejected_rows where batch_id = %s "
        "order by line_number",
        (batch_id,),
    ).fetchall()
    return BatchRecord(
        **found,
        failing_rows=[
            FailingRow(line=line, values=values, failures=failures)
            for line, values, failures in rows
        ],
    )


@router.get(
    "/runs/{run_id}",
    dependencies=[Read],
    tags=["runs"],
    responses=errors(*AUTH, 404, 422, 503, 504),
)
def get_run(run_id: str, conn: Database) -> RunRecord:
    """A run's row in audit.runs, with its summary."""
    found = (
        conn.cursor(row_factory=dict_row)
        .execute(
            "select run_id, started_at, finished_at, input, batch_size, policy, status, host, "
            "pid, summary from audit.runs where run_id = %s",
            (run_id,),
        )
        .fetchone()
    )
    if found is None:
        raise HTTPException(404, f"no run {run_id}")
    return RunRecord(**found)
