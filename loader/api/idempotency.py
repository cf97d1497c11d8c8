"""Idempotency-Keys and the answers kept under them, in audit.api_requests so they survive
restarts.

A key is claimed before the work starts and bound to it until the work stores its answer, even
when the request has timed out meanwhile (504): the work is not cancelled. A repeat of the same
key and body gets the stored answer; while the work still runs, the repeat waits for that answer
instead of starting a second settlement. The same key with another body is refused. An answer
that settled nothing (`waiting`, `failed`) is not final: the same key and body sent later are
judged again. A claim left by a crashed server is taken over after ABANDONED_AFTER.

The store answers with plain records (`Claim`, `StoredAnswer`); the route makes the HTTP
answer. Its methods block on the database: call them off the event loop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import StrEnum

from psycopg.types.json import Jsonb

from loader.api.pool import DatabasePool
from loader.flow.model import BatchState

ABANDONED_AFTER = "10 minutes"  # a claim older than this, never answered, was left by a crash
UNSETTLED = [BatchState.WAITING, BatchState.FAILED]
# A claim is lost when the key is released between its two statements (the request holding
# it failed). Losing it again and again means other requests keep taking and dropping the key.
CLAIM_ATTEMPTS = 5

CLAIM = """insert into audit.api_requests (idempotency_key, body_sha256)
values (%(key)s, %(digest)s)
on conflict (idempotency_key) do update set body_sha256 = excluded.body_sha256,
    received_at = now(), status_code = null, response = null
where audit.api_requests.body_sha256 = excluded.body_sha256 and (
    (audit.api_requests.status_code is null
        and audit.api_requests.received_at < now() - %(abandoned_after)s::interval)
    or (%(take_unsettled)s and audit.api_requests.response ->> 'status' = any(%(unsettled)s)))
returning idempotency_key"""


class KeyContended(RuntimeError):
    """The key was released under every claim attempt: other requests keep taking it."""


class KeyState(StrEnum):
    OWNED = "owned"  # the caller does the work and stores its answer
    ANSWERED = "answered"  # the work is done: the claim carries its stored answer
    RUNNING = "running"  # the work of an earlier request with this key still runs
    OTHER_BODY = "other body"  # the key was used with another body


@dataclass(frozen=True)
class StoredAnswer:
    """An answer as it was first sent: its status code and its JSON body."""

    status_code: int
    body: dict


@dataclass(frozen=True)
class Claim:
    state: KeyState
    answer: StoredAnswer | None = None  # when ANSWERED


class IdempotencyKeys:
    def __init__(self, pool: DatabasePool):
        self.pool = pool
        self.replays = 0  # claims answered with a stored answer (the metrics read it)
        self._counting = threading.Lock()

    def claim(self, key: str, body_sha256: str, take_unsettled: bool = True) -> Claim:
        """Claim `key` for a request whose body has this digest; KeyContended if it was
        released under each of CLAIM_ATTEMPTS attempts.

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
        for _ in range(CLAIM_ATTEMPTS):
            with self.pool.connection() as conn:
                if conn.execute(CLAIM, parameters).fetchone():
                    return Claim(KeyState.OWNED)
                found = conn.execute(
                    "select body_sha256, status_code, response from audit.api_requests "
                    "where idempotency_key = %s",
                    (key,),
                ).fetchone()
            if found is not None:
                claim = _claim_of(found, body_sha256)
                if claim.state is KeyState.ANSWERED:
                    with self._counting:
                        self.replays += 1
                return claim
        raise KeyContended(
            f"the Idempotency-Key {key!r} was released by other requests under each of "
            f"{CLAIM_ATTEMPTS} claims; send the request again"
        )

    def store(self, key: str, answer: StoredAnswer) -> None:
        """Keep the answer of the work that owns `key` (even when readers hold the pool)."""
        with self.pool.connection(overflow=True) as conn:
            conn.execute(
                "update audit.api_requests set status_code = %s, response = %s "
                "where idempotency_key = %s",
                (answer.status_code, Jsonb(answer.body), key),
            )

    def release(self, key: str) -> None:
        """Free `key` after work that ended without an answer worth keeping (an error)."""
        with self.pool.connection(overflow=True) as conn:
            conn.execute(
                "delete from audit.api_requests where idempotency_key = %s and status_code is null",
                (key,),
            )


def _claim_of(found: tuple, body_sha256: str) -> Claim:
    digest, status_code, response = found
    if digest != body_sha256:
        return Claim(KeyState.OTHER_BODY)
    if status_code is None:
        return Claim(KeyState.RUNNING)
    return Claim(KeyState.ANSWERED, StoredAnswer(status_code, response))
