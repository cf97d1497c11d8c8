"""The FastAPI application: routers, limits a careful operator expects, JSON errors only."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from loader.api.idempotency import IdempotencyKeys
from loader.api.refresh import MartsRefresher
from loader.api.routers import backups, batches, dashboard, reports
from loader.api.tokens import parse_tokens
from loader.db.connect import DatabaseUnavailable, connect
from loader.flow.run import RequestSettler
from loader.settings import Settings

MAX_BODY_BYTES = 2 * 1024 * 1024  # 1000 rows of this data fit in a tenth of it
REQUEST_SECONDS = 120

log = logging.getLogger("loader.api")


class BodyLimit:
    """ASGI middleware: refuse bodies over `limit` bytes with 413, declared or streamed."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _too_large(self.limit)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge:
            await _too_large(self.limit)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"request body over {limit} bytes"}, status_code=413)


def create_app(settings: Settings, url: str, insecure: bool = False) -> FastAPI:
    """The application for the database at `url` (tokens from the settings)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.refresher.start()
        yield
        app.state.refresher.stop()

    app = FastAPI(
        title="csv-migrate API",
        version="1",
        lifespan=lifespan,
        description="Batch inserts through the loader's validation path, the two "
        "reports from the dbt marts, audit, backups. Tokens: Authorization: Bearer.",
    )
    app.state.settings = settings
    app.state.url = url
    app.state.insecure = insecure
    app.state.tokens = parse_tokens(settings.api_tokens)
    app.state.settler = RequestSettler(settings, url)
    app.state.idempotency = IdempotencyKeys(url)
    app.state.refresher = MartsRefresher(
        url,
        {"LOADER_STATE_DIR": str(settings.state_path)},
        after_build=app.state.settler.build_docs,
    )
    for router in (batches.router, reports.router, backups.router, dashboard.router):
        app.include_router(router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> JSONResponse:
        """200 when the database answers, 503 otherwise."""
        try:
            with connect(url) as conn:
                conn.execute("select 1")
        except DatabaseUnavailable:
            return JSONResponse({"status": "database unreachable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.middleware("http")
    async def timeout(request: Request, call_next):
        try:
            return await asyncio.wait_for(call_next(request), REQUEST_SECONDS)
        except TimeoutError:
            return JSONResponse(
                {"detail": f"no answer within {REQUEST_SECONDS} s"}, status_code=504
            )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return JSONResponse(
            {"detail": error.detail},
            status_code=error.status_code,
            headers=getattr(error, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        return JSONResponse(
            {"detail": [{"loc": e["loc"], "msg": e["msg"]} for e in error.errors()]},
            status_code=422,
        )

    @app.exception_handler(DatabaseUnavailable)
    @app.exception_handler(psycopg.OperationalError)
    async def database_gone(request: Request, error: Exception):
        # Nothing half-settled was committed: the same request sent again is settled once.
        log.error("database unavailable on %s %s: %s", request.method, request.url.path, error)
        return JSONResponse(
            {"detail": "the database is unavailable; nothing was settled, send it again later"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500)

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    return app
