"""GET /metrics on a port of its own, for Prometheus: a read token required, checked by the API's
own dependency (`loader.api.deps.require`), as Prometheus sends it with its `authorization`
scrape setting (`Authorization: Bearer <token>`); without one, 401 and no data.

Served by uvicorn on a thread of its own, with its own event loop, so it answers while a run or
the API's settlements keep the main thread busy.
"""

from __future__ import annotations

import socket
import threading
from types import SimpleNamespace

import uvicorn
from fastapi import FastAPI, Request, Response
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from loader.api.deps import Reader
from loader.api.services import Access
from loader.api.throttle import FailureThrottle
from loader.api.tokens import TokenConfigError, parse_tokens
from loader.settings import Settings


def access_for(settings: Settings) -> Access:
    """Who may scrape a process that is not the API server: the read (or wider) tokens of
    LOADER_API_TOKENS; TokenConfigError (exit 2) when there is none."""
    tokens = parse_tokens(settings.api_tokens)
    if not tokens:
        raise TokenConfigError(
            "--metrics-port needs a token Prometheus can send: set LOADER_API_TOKENS "
            "(e.g. read:...)"
        )
    throttle = FailureThrottle(settings.api_auth_failures, settings.api_auth_window_seconds)
    return Access(tokens, throttle)


def metrics_app(registry: Collector, access: Access) -> FastAPI:
    """The /metrics application: `registry` in the format the scraper asks for."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.state.services = SimpleNamespace(access=access)  # what loader.api.deps reads

    @app.get("/metrics")
    def metrics(scope: Reader, request: Request) -> Response:
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encode(registry), media_type=content_type)

    return app


class MetricsServer:
    """`metrics_app` on `host:port`; the port is bound in `start()`, so a port in use is an
    error there, not a silent thread's."""

    def __init__(self, registry: Collector, access: Access, host: str, port: int):
        self.app = metrics_app(registry, access)
        self.host, self.port = host, port
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> MetricsServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listening = socket.socket(family, socket.SOCK_STREAM)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listening.bind((self.host, self.port))
            listening.listen(64)
        except OSError:
            listening.close()
            raise
        config = uvicorn.Config(
            self.app, log_config=None, log_level="warning", access_log=False, lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run,
            kwargs={"sockets": [listening]},
            name="metrics-http",
            daemon=True,
        )
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(timeout=10)
