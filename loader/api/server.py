"""`python -m loader serve`: check the configuration, then run the app under uvicorn."""

from __future__ import annotations

from collections.abc import Callable

import uvicorn

from loader.api.tokens import parse_tokens
from loader.db.connect import database_url, redact
from loader.settings import Settings


def serve(
    settings: Settings, host: str, port: int, insecure: bool, say: Callable[[str], None]
) -> int:
    """Refuse to start without tokens unless `insecure`; returns the exit code. `say` prints
    a line for the operator (the CLI's stderr, JSON lines under `--log-format json`)."""
    tokens = parse_tokens(settings.api_tokens)
    if not tokens and not insecure:
        say(
            "error: no API tokens: set LOADER_API_TOKENS (e.g. read:...,write:...,"
            "admin:...) or start with --insecure-dev for an open development server"
        )
        return 2
    from loader.api.app import create_app

    url = database_url(settings)
    app = create_app(settings, url, insecure=insecure and not tokens, host=host)
    if insecure and not tokens:
        say("warning: --insecure-dev: every endpoint is open to anyone who can connect")
    say(f"serving {redact(url)} on http://{host}:{port} (OpenAPI at /docs)")
    if settings.metrics_port is not None:
        say(f"metrics at http://{host}:{settings.metrics_port}/metrics (read token)")
    # log_config=None: uvicorn keeps the handlers `--log-format` gave its loggers.
    uvicorn.run(
        app, host=host, port=port, log_level="warning", log_config=None, timeout_keep_alive=5
    )
    return 0
