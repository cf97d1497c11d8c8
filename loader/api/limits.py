"""ASGI middleware for the limits a careful operator expects: body size and time per request."""

from __future__ import annotations

import asyncio
import logging

from fastapi.responses import JSONResponse

log = logging.getLogger("loader.api")


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413, declared (Content-Length) or streamed
    (Transfer-Encoding: chunked). The body is read whole here, before the application sees it,
    so an oversized one is answered the same way however it arrives."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before it finished sending
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                return await self._refuse(scope, receive, send)
            if not message.get("more_body", False):
                break
        body, delivered = b"".join(chunks), False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        answer = JSONResponse(
            {"detail": f"request body over {self.limit} bytes"},
            status_code=413,
            headers={"Connection": "close"},
        )
        await answer(scope, receive, send)


class Deadline:
    """Answer 504 when the application has not started answering within `seconds`.

    The request's work is left to finish, not cancelled: a batch insert still settles and
    stores its answer under its Idempotency-Key, and whatever it would have sent is dropped.
    """

    def __init__(self, app, seconds: float):
        self.app, self.seconds = app, seconds
        self.abandoned: set[asyncio.Task] = set()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        answered = started = False

        async def guarded_send(message):
            nonlocal started
            if answered:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        work = asyncio.ensure_future(self.app(scope, receive, guarded_send))
        await asyncio.wait({work}, timeout=self.seconds)
        if work.done() or started:
            return await work
        answered = True
        self.abandoned.add(work)
        work.add_done_callback(self._finished)
        await timed_out(self.seconds)(scope, receive, send)

    def _finished(self, work: asyncio.Task) -> None:
        self.abandoned.discard(work)
        if not work.cancelled() and work.exception() is not None:
            log.error("a request answered 504 failed later: %r", work.exception())


def timed_out_detail(seconds: float) -> str:
    """What a 504 says, from this middleware or from a request that waited for its key."""
    return (
        f"no answer within {seconds:g} s. A batch insert goes on: send it again "
        "with the same Idempotency-Key (or the same body) to get its outcome"
    )


def timed_out(seconds: float) -> JSONResponse:
    return JSONResponse({"detail": timed_out_detail(seconds)}, status_code=504)
