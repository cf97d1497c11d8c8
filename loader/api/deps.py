"""Dependencies of the routes: who is calling (token and scope) and the database connection."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

import psycopg
from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from loader.api.tokens import allows, scope_of

COOKIE = "loader_token"
QUERY_SCOPE = "read"  # the only scope a token may have when it travels in a URL

bearer = HTTPBearer(
    auto_error=False, description="Every endpoint: `Authorization: Bearer <token>`."
)
query_token = APIKeyQuery(
    name="token",
    auto_error=False,
    description="Reports, dashboard and data docs only, and only a read token: a URL ends up "
    "in logs and history.",
)


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


def _bearer(request: Request) -> bytes | None:
    # Raw header bytes: a non-ASCII token is an unknown token (401), not a decoding error.
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            kind, _, token = value.partition(b" ")
            return token.strip() if kind.lower() == b"bearer" and token.strip() else None
    return None


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def authenticate(request: Request, needed: str, browser: bool = False) -> str:
    """The caller's scope if it covers `needed`; else HTTPException 401, 403 or 429.

    `browser` also accepts `?token=` (a read token only) and the dashboard's cookie: report
    endpoints, dashboard and data docs, for BI tools and people.
    """
    state = request.app.state
    if state.insecure:
        return "admin"
    address = _client(request)
    wait = state.throttle.retry_after(address)
    if wait is not None:
        raise HTTPException(
            429,
            f"too many failed authentications from {address}; try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    presented, in_url = _bearer(request), False
    if presented is None and browser:
        if "token" in request.query_params:
            presented, in_url = _text_bytes(request.query_params["token"]), True
        elif COOKIE in request.cookies:
            presented = _text_bytes(request.cookies[COOKIE])
    if presented is None:
        if "token" in request.query_params:
            raise _unauthorized(
                "?token= is accepted on the report endpoints, the dashboard and the data docs "
                "only: send Authorization: Bearer <token>"
            )
        raise _unauthorized("a token is required: Authorization: Bearer <token>")
    scope = scope_of(state.tokens, presented)
    if scope is None:
        state.throttle.failed(address)
        raise _unauthorized("unknown token")
    if in_url and scope != QUERY_SCOPE:
        raise _unauthorized(
            f"a {scope} token is refused in a URL (URLs end up in logs and browser history): "
            f"send it as Authorization: Bearer <token>, or use a read token in ?token="
        )
    if not allows(scope, needed):
        raise HTTPException(403, f"this token's scope is {scope}; {needed} is needed")
    return scope


def _text_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def require(needed: str, browser: bool = False) -> Callable:
    """A dependency admitting callers whose token has `needed` scope (or a wider one)."""
    if browser:

        def check_browser(
            request: Request,
            _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
            _query: Annotated[str | None, Security(query_token)],
        ) -> str:
            return authenticate(request, needed, browser=True)

        return check_browser

    def check(
        request: Request,
        _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> str:
        return authenticate(request, needed)

    return check


def database(request: Request) -> Iterator[psycopg.Connection]:
    """A pooled autocommit connection for the request's life."""
    with request.app.state.pool.connection() as conn:
        yield conn


Database = Annotated[psycopg.Connection, Depends(database)]
Read = Depends(require("read"))
ReadOrQueryToken = Depends(require("read", browser=True))
Write = Depends(require("write"))
Admin = Depends(require("admin"))
