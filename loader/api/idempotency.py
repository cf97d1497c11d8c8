"""Idempotency-Key handling, kept in audit.api_requests so it survives restarts.

A key is claimed before the work starts: a replay gets the stored answer, the same key with
another body gets 422. A repeat while the first is still running goes ahead without owning the
key: the settlement engine's batch lock makes it wait for the first and answer from the ledger.
A claim left by a crashed request is taken over after ABANDONED_AFTER.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from loader.db.connect import connect

ABANDONED_AFTER = "10 minutes"


class IdempotencyKeys:
    def __init__(self, url: str):
        self.url = url

    def claim(self, key: str, body_sha256: str) -> tuple[bool, JSONResponse | None]:
        """(whether the caller owns the key and stores the answer, the answer to send instead
        of going ahead, if any)."""
        with connect(self.url, autocommit=True) as conn:
            claimed = conn.execute(
                "insert into audit.api_requests (idempotency_key, body_sha256) values (%s, %s) "
                "on conflict (idempotency_key) do update set body_sha256 = excluded.body_sha256, "
                "received_at = now() where audit.api_requests.status_code is null "
                f"and audit.api_requests.received_at < now() - interval '{ABANDONED_AFTER}' "
                "and audit.api_requests.body_sha256 = excluded.body_sha256 "
                "returning idempotency_key",
                (key, body_sha256),
            ).fetchone()
            if claimed:
                return True, None
            digest, status, response = conn.execute(
                "select body_sha256, status_code, response from audit.api_requests "
                "where idempotency_key = %s",
                (key,),
            ).fetchone()
        if digest != body_sha256:
            return False, JSONResponse(
                {"detail": "this Idempotency-Key was used with another body"}, status_code=422
            )
        if status is None:
            return False, None
        return False, JSONResponse({**response, "replayed": True}, status_code=status)

    def store(self, key: str, response: JSONResponse) -> None:
        with connect(self.url, autocommit=True) as conn:
            conn.execute(
                "update audit.api_requests set status_code = %s, response = %s::jsonb "
                "where idempotency_key = %s",
                (response.status_code, response.body.decode(), key),
            )

    def release(self, key: str) -> None:
        with connect(self.url, autocommit=True) as conn:
            conn.execute(
                "delete from audit.api_requests where idempotency_key = %s and status_code is null",
                (key,),
            )
