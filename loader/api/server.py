"""`python -m loader serve`: check the configuration, then run the app under uvicorn."""

from __future__ import annotations

import uvicorn
from rich.console import Console

from loader.api.tokens import parse_tokens
from loader.db.connect import database_url, redact
from loader.settings import Settings

err = Console(stderr=True, highlight=False, soft_wrap=True)


def serve(settings: Settings, host: str, port: int, insecure: bool) -> int:
    """Refuse to start without tokens unless `insecure`; returns the exit code."""
    tokens = parse_tokens(settings.api_tokens)
    if not tokens and not insecure:
        err.print(
            "error: no API tokens: set LOADER_API_TOKENS (e.g. read:...,write:...,"
            "admin:...) or start with --insecure-dev for an open development server"
        )
        return 2
    from loader.api.app import create_app

    url = database_url(settings)
    app = create_app(settings, url, insecure=insecure and not tokens, host=host)
    if insecure and not tokens:
        err.print("warning: --insecure-dev: every endpoint is open to anyone who can connect")
    err.print(f"serving {redact(url)} on http://{host}:{port} (OpenAPI at /docs)")
    if settings.metrics_port is not None:
        err.print(f"metrics at http://{host}:{settings.metrics_port}/metrics (read token)")
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_keep_alive=5)
    return 0
