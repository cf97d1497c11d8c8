"""Batches: POST /tables/{table}/batches (one batch in, settled through the loader's path) and
GET /batches/{id} (its verdict from the ledger)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from loader.api.batch_body import ROWS_SCHEMA, parse_batch
from loader.api.deps import Conn, KnownTable, Reader, ServicesDep, Writer
from loader.api.idempotency import (
    Claim,
    IdempotencyKeys,
    KeyContended,
    KeyState,
    StoredAnswer,
)
from loader.api.limits import timed_out_detail
from loader.api.schemas import AUTH, BatchAnswer, BatchRecord, ErrorDetail, RowFailure, errors
from loader.api.services import Services
from loader.flow import ledger
from loader.flow.model import BatchState, RawBatch, Settlement
from loader.settings import MAX_BATCH_SIZE, Policy
from loader.tables import Table

log = logging.getLogger("loader.api")
POLL_SECONDS = 0.2  # how often a request waiting for another with its key looks again

router = APIRouter(prefix="/batches", tags=["batches"])
# The same resource, created under the table it goes to.
table_router = APIRouter(prefix="/tables/{table}", tags=["batches"])

INSERT_DESCRIPTION = f"""Insert 1 to {MAX_BATCH_SIZE} rows through the loader's path: raw, GX \
checkpoint, promotion, audit.

Body: a JSON array of row objects, or header-less CSV with `Content-Type: text/csv`.
A retried request (same `Idempotency-Key`, or the same body) gets the first answer back
with `replayed: true` and the first answer's status code; identical requests sent at once
are settled once and the others wait for that settlement and get it replayed. A request
that times out (504) goes on: send it again to get its outcome. Status: 201 promoted
(wholly or in part); 200 judged and held back (`rejected`, or `waiting` for a department or
job that does not exist yet: sending it again after that arrives re-judges it); 422 only
for a malformed request.
"""


@table_router.post(
    "/batches",
    response_model=BatchAnswer,
    status_code=201,
    description=INSERT_DESCRIPTION,
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
    scope: Writer,
    table: KnownTable,
    services: ServicesDep,
    request: Request,
    response: Response,
    policy: Annotated[Policy | None, Query()] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=255,
            description="Retries with the same key and body get the first answer, never a "
            "second settlement, also after a 504.",
        ),
    ] = None,
) -> BatchAnswer:
    """Settle the body's rows as one batch and answer with its verdict."""
    body = await request.body()
    policy = policy or services.settings.policy
    as_csv = request.headers.get("content-type", "").split(";")[0].strip() == "text/csv"
    batch = await run_in_threadpool(parse_batch, table, body, as_csv, policy)
    work = partial(settle_batch, services, table, batch, policy)
    if idempotency_key is None:
        answer = await services.settlements.run(work)
        status_code = status_of(answer)
    else:
        digest = hashlib.sha256(body).hexdigest()
        answer, status_code = await once_per_key(services, idempotency_key, digest, work)
    response.status_code = status_code
    if status_code == 503:  # a transient failure that outlasted the retries: nothing settled
        response.headers["Retry-After"] = "5"
    return answer


def settle_batch(services: Services, table: Table, batch: RawBatch, policy: Policy) -> BatchAnswer:
    """Settle the batch (blocking: call it on a settlement thread) and answer for it."""
    settlement = services.settler.settle(table, batch, policy)
    if settlement.rows_promoted and not settlement.replayed:
        services.refresher.request()
    return answer_for(batch, settlement)


def answer_for(batch: RawBatch, settlement: Settlement) -> BatchAnswer:
    """The request's answer: failing rows by their index in the request, from 0."""
    line_to_index = {line: index for index, line in enumerate(batch.line_numbers)}
    failures = [
        RowFailure(
            index=line_to_index.get(row["line"], row["line"] - 1), field=f["field"], rule=f["rule"]
        )
        for row in settlement.rejected_rows
        for f in row["failures"]
    ]
    return BatchAnswer(
        batch_id=batch.batch_id,
        status=settlement.status,
        rows=batch.rows,
        rows_promoted=settlement.rows_promoted,
        rows_rejected=batch.rows - settlement.rows_promoted,
        failures=failures,
        reasons=settlement.reasons,
        replayed=settlement.replayed,
    )


def status_of(answer: BatchAnswer) -> int:
    """201 promoted (wholly or in part); 200 judged and held back (rejected, waiting); 503
    failed (a transient database error outlasted the retries)."""
    if answer.status == BatchState.FAILED:
        return 503
    return 201 if answer.status in (BatchState.PROMOTED, BatchState.PARTIALLY_PROMOTED) else 200


async def once_per_key(
    services: Services, key: str, digest: str, work: Callable[[], BatchAnswer]
) -> tuple[BatchAnswer, int]:
    """The answer for `key` and its status code: the stored one (replayed), the one of a
    request with this key still running (waited for, up to the request's time), or this
    request's own, stored for the next."""
    keys, seconds = services.idempotency, services.settings.api_request_seconds
    deadline = time.monotonic() + seconds
    claim = await _claim(keys, key, digest)
    while claim.state is KeyState.RUNNING:
        if time.monotonic() > deadline:
            raise HTTPException(504, timed_out_detail(seconds))
        await asyncio.sleep(POLL_SECONDS)
        claim = await _claim(keys, key, digest, take_unsettled=False)
    if claim.state is KeyState.OTHER_BODY:
        raise HTTPException(422, "this Idempotency-Key was used with another body")
    if claim.state is KeyState.ANSWERED:
        stored = claim.answer
        return BatchAnswer.model_validate({**stored.body, "replayed": True}), stored.status_code
    answer = await services.settlements.run(partial(_settle_and_keep, keys, key, work))
    return answer, status_of(answer)


async def _claim(
    keys: IdempotencyKeys, key: str, digest: str, take_unsettled: bool = True
) -> Claim:
    try:
        return await run_in_threadpool(keys.claim, key, digest, take_unsettled)
    except KeyContended as error:
        raise HTTPException(503, str(error), headers={"Retry-After": "2"}) from None


def _settle_and_keep(
    keys: IdempotencyKeys, key: str, work: Callable[[], BatchAnswer]
) -> BatchAnswer:
    # Runs on a settlement thread to its end, even when the request has already had its 504.
    try:
        answer = work()
    except BaseException:
        try:
            keys.release(key)
        except Exception as error:  # noqa: BLE001 - the original error is the one to report
            log.error("could not release Idempotency-Key %r: %s", key, error)
        raise
    keys.store(key, StoredAnswer(status_of(answer), answer.model_dump(mode="json")))
    return answer


@router.get("/{batch_id}", responses=errors(*AUTH, 404, 422, 503, 504))
def get_batch(scope: Reader, batch_id: str, conn: Conn) -> BatchRecord:
    """A batch's verdict from audit.batches, with its failing rows."""
    found = ledger.batch_record(conn, batch_id)
    if found is None:
        raise HTTPException(404, f"no batch {batch_id}")
    return BatchRecord.model_validate(found)
