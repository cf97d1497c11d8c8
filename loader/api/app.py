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

from loader.api.docs import serve_api_docs
from loader.api.idempotency import IdempotencyKeys
from loader.api.limits import BodyLimit, Deadline
from loader.api.pool import DatabasePool, PoolExhausted
from loader.api.refresh import MartsRefresher
from loader.api.routers import backups, batches, dashboard, reports
from loader.api.schemas import Health
from loader.api.settlements import SettlementThreads
from loader.api.throttle import FailureThrottle
from loader.api.tokens import parse_tokens
from loader.db.connect import DatabaseUnavailable
from loader.flow.api_run import RequestSettler
from loader.flow.runtime import heap
from loader.settings import Settings

MAX_BODY_BYTES = 2 * 1024 * 1024  # 1000 rows of this data fit in a tenth of it

log = logging.getLogger("loader.api")


def create_app(settings: Settings, url: str, insecure: bool = False) -> FastAPI:
    """The application for the database at `url` (tokens from the settings)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = app.state
        heap.freeze()  # what start-up made lives as long as the server: collections skip it
        state.pool.open()
        state.settler.start()
        state.refresher.start()
        yield
        # Settlements still running (a 504 does not stop them) finish and store their answers.
        await run_in_threadpool(state.settlements.shutdown)
        await run_in_threadpool(state.settler.stop)
        state.refresher.stop()
        await run_in_threadpool(state.pool.close)

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
    state = app.state
    state.settings = settings
    state.url = url
    state.insecure = insecure
    state.tokens = parse_tokens(settings.api_tokens)
    state.throttle = FailureThrottle(settings.api_auth_failures, settings.api_auth_window_seconds)
    state.pool = DatabasePool(url, settings)
    state.settler = RequestSettler(settings, url)
    state.settlements = SettlementThreads()
    state.idempotency = IdempotencyKeys(state.pool)
    state.refresher = MartsRefresher(
        url,
        {"LOADER_STATE_DIR": str(settings.state_path)},
        after_build=state.settler.build_docs,
    )
    for router in (batches.router, reports.router, backups.router, dashboard.router):
        app.include_router(router)
    serve_api_docs(app)

    @app.get(
        "/healthz",
        tags=["health"],
        response_model=Health,
        responses={503: {"model": Health, "description": "database unreachable, or busy"}},
    )
    def healthz() -> JSONResponse:
        """200 when the database answers, 503 when it does not or every connection is busy."""
        try:
            with state.pool.connection() as conn:
                conn.execute("select 1")
        except (DatabaseUnavailable, psycopg.OperationalError):
            return JSONResponse({"status": "database unreachable"}, status_code=503)
        except PoolExhausted:
            return JSONResponse({"status": "busy"}, status_code=503)
        return JSONResponse({"status": "ok"})

    _handle_errors(app)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(Deadline, seconds=settings.api_request_seconds)
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
