"""The FastAPI application: routers, limits a careful operator expects, JSON errors only."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from loader.api.deps import TokenPrompt
from loader.api.docs import serve_api_docs
from loader.api.limits import BodyLimit, Deadline
from loader.api.pool import PoolExhausted
from loader.api.routers import backups, batches, dashboard, health, reports, runs
from loader.api.services import Services
from loader.db.connect import DatabaseUnavailable
from loader.flow.runtime import heap
from loader.settings import Settings

MAX_BODY_BYTES = 2 * 1024 * 1024  # a full batch of this data fits in a tenth of it
ROUTERS = (
    batches.table_router,
    batches.router,
    runs.router,
    reports.router,
    backups.router,
    backups.table_router,
    dashboard.router,
    dashboard.assets,
    health.router,
)

log = logging.getLogger("loader.api")


def create_app(
    settings: Settings, url: str, insecure: bool = False, host: str = "127.0.0.1"
) -> FastAPI:
    """The application for the database at `url` (tokens from the settings), listening on
    `host` (and with a metrics port, serving /metrics there)."""
    services = Services.create(settings, url, insecure, host)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        heap.freeze()  # what start-up made lives as long as the server: collections skip it
        services.start()
        yield
        await run_in_threadpool(services.stop)

    app = FastAPI(
        title="csv-migrate API",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served by serve_api_docs from local assets, not a CDN
        redoc_url=None,  # ReDoc loads its logo from a CDN whatever it is given
        description="Batch inserts through the loader's validation path, the two "
        "reports from the dbt marts, audit, backups. Tokens: `Authorization: Bearer`; a read "
        "token may also be given as `?token=` on the reports, the dashboard and the data docs.",
    )
    app.state.services = services  # what the dependencies in loader.api.deps hand the routes
    for router in ROUTERS:
        app.include_router(router)
    serve_api_docs(app)
    _handle_errors(app)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(Deadline, seconds=settings.api_request_seconds)
    if services.metrics is not None:  # added last: outermost, it sees the limits' answers
        services.metrics.instrument(app, services)
    return app


def _handle_errors(app: FastAPI) -> None:
    """Every error as JSON `{"detail": ...}`, without stack traces or SQL."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        return JSONResponse(
            {"detail": error.detail},
            status_code=error.status_code,
            headers=getattr(error, "headers", None),
        )

    app.add_exception_handler(TokenPrompt, dashboard.token_prompt)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        return JSONResponse(
            {"detail": [{"loc": e["loc"], "msg": e["msg"]} for e in error.errors()]},
            status_code=422,
        )

    @app.exception_handler(PoolExhausted)
    async def busy(request: Request, error: PoolExhausted):
        log.warning("no free database connection on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"detail": f"the server is busy: {error}"},
            status_code=503,
            headers={"Retry-After": "2"},
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
