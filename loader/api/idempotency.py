"""Idempotency-Key handling, kept in audit.api_requests so it survives restarts.

A key is claimed before the work starts and bound to it until the work stores its answer, even
when the request has timed out meanwhile (504): the work is not cancelled. A repeat of the same
key and body gets the stored answer (`replayed: true`); while the work still runs, the repeat
waits for that answer instead of starting a second settlement. The same key with another body
gets 422. An answer that settled nothing (`waiting`, `failed`) is not final: the same key and
body sent later are judged again. A claim left by a crashed server is taken over after
ABANDONED_AFTER.

IdempotencyKeys' methods block on the database: call them off the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from loader.api.limits import timed_out
from loader.api.pool import DatabasePool
from loader.flow.model import BatchState

log = logging.getLogger("loader.api")
ABANDONED_AFTER = "10 minutes"  # a claim older than this, never answered, was left by a crash
POLL_SECONDS = 0.2  # how often a request waiting for another with its key looks again
UNSETTLED = [BatchState.WAITING, BatchState.FAILED]

CLAIM = """insert into audit.api_requests (idempotency_key, body_sha256)
values (%(key)s, %(digest)s)
on conflict (idempotency_key) do update set body_sha256 = excluded.body_sha256,
    received_at = now(), status_code = null, response = null
where audit.api_requests.body_sha256 = excluded.body_sha256 and (
    (audit.api_requests.status_code is null
        and audit.api_requests.received_at < now() - %(abandoned_after)s::interval)
    or (%(take_unsettled)s and audit.api_requests.response ->> 'status' = any(%(unsettled)s)))
returning idempotency_key"""


@dataclass(frozen=True)
class Claim:
    """`owner`: the caller does the work and stores its answer. `answer`: send this instead.
    Neither: the work of an earlier request with this key is still running."""

    owner: bool = False
    answer: JSONResponse | None = None


class IdempotencyKeys:
    def __init__(self, pool: DatabasePool):
        self.pool = pool

    def claim(self, key: str, body_sha256: str, take_unsettled: bool = True) -> Claim:
        """Claim `key` for a request whose body has this digest.

        `take_unsettled=False` is for a caller already waiting on this key: it takes the
        stored answer, even a `waiting` one, rather than start again.
        """
        parameters = {
            "key": key,
            "digest": body_sha256,
            "take_unsettled": take_unsettled,
            "unsettled": UNSETTLED,
            "abandoned_after": ABANDONED_AFTER,
        }
        with self.pool.connection() as conn:
            if conn.execute(CLAIM, parameters).fetchone():
                return Claim(owner=True)
            found = conn.execute(
                "select body_sha256, status_code, response from audit.api_requests "
                "where idempotency_key = %s",
                (key,),
            ).fetchone()
        if found is None:  # released by a request that failed: free again
            return self.claim(key, body_sha256, take_unsettled)
        digest, status, response = found
        if digest != body_sha256:
            return Claim(
                answer=JSONResponse(
                    {"detail": "this Idempotency-Key was used with another body"},
                    status_code=422,
                )
            )
        if status is None:
            return Claim()
        headers = {"Retry-After": "5"} if status == 503 else None
        return Claim(
            answer=JSONResponse({**response, "replayed": True}, status_code=status, headers=headers)
        )

    def store(self, key: str, response: JSONResponse) -> None:
        """Keep the answer of the work that owns `key` (even when readers hold the pool)."""
        with self.pool.connection(overflow=True) as conn:
            conn.execute(
                "update audit.api_requests set status_code = %s, response = %s::jsonb "
                "where idempotency_key = %s",
                (response.status_code, response.body.decode(), key),
            )

    def release(self, key: str) -> None:
        """Free `key` after work that ended without an answer worth keeping (an error)."""
        with self.pool.connection(overflow=True) as conn:
            conn.execute(
                "delete from audit.api_requests where idempotency_key = %s and status_code is null",
                (key,),
            )


async def once_per_key(
    state, key: str, digest: str, work: Callable[[], JSONResponse]
) -> JSONResponse:
    """The answer for `key`: the stored one, the one of a request with this key still running
    (waited for, up to the request's time), or this request's own, stored for the next."""
    keys = state.idempotency
    deadline = time.monotonic() + state.settings.api_request_seconds
    claim = await run_in_threadpool(keys.claim, key, digest)
    while not claim.owner and claim.answer is None:
        if time.monotonic() > deadline:
            return timed_out(state.settings.api_request_seconds)
        await asyncio.sleep(POLL_SECONDS)
        claim = await run_in_threadpool(keys.claim, key, digest, False)
    if claim.answer is not None:
        return claim.answer
    return await state.settlements.run(partial(_settle_and_keep, keys, key, work))


def _settle_and_keep(
    keys: IdempotencyKeys, key: str, work: Callable[[], JSONResponse]
) -> JSONResponse:
    # Runs on a settlement thread to its end, even when the request has already had its 504.
    try:
        response = work()
    except BaseException:
        try:
            keys.release(key)
        except Exception as error:  # noqa: BLE001 - the original error is the one to report
            log.error("could not release Idempotency-Key %r: %s", key, error)
        raise
    keys.store(key, response)
    return response
