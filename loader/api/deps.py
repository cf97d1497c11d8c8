"""Dependencies of the routes: who is calling (token and scope) and the database connection."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

import psycopg
from fastapi import Depends, HTTPException, Request

from loader.api.tokens import allows, scope_of
from loader.db.connect import connect


def _bearer(request: Request) -> bytes | None:
    for name, value in request.scope["headers"]:
        if name == b"authorization":
            kind, _, token = value.partition(b" ")
            return token.strip() if kind.lower() == b"bearer" and token.strip() else None
    return None


COOKIE = "loader_token"


def authenticate(request: Request, needed: str, browser: bool = False) -> str:
    """The caller's scope if it covers `needed`; else HTTPException 401 or 403.

    `browser` also accepts `?token=` and the dashboard's cookie (report endpoints, dashboard
    and data docs only, for BI tools and people: a token in a URL ends up in logs).
    """
    state = request.app.state
    if state.insecure:
        return "admin"
    presented = _bearer(request)
    if presented is None and browser:
        if "token" in request.query_params:
            presented = request.query_params["token"].encode("utf-8", "surrogateescape")
        elif COOKIE in request.cookies:
            presented = request.cookies[COOKIE].encode("utf-8", "surrogateescape")
    if presented is None:
        raise HTTPException(
            401,
            "a token is required: Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    scope = scope_of(state.tokens, presented)
    if scope is None:
        raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
    if not allows(scope, needed):
        raise HTTPException(403, f"this token's scope is {scope}; {needed} is needed")
    return scope


def require(needed: str, browser: bool = False) -> Callable:
    """A dependency admitting callers whose token has `needed` scope (or a wider one)."""

    def check(request: Request) -> str:
        return authenticate(request, needed, browser)

    return check


def database(request: Request) -> Iterator[psycopg.Connection]:
    with connect(request.app.state.url, autocommit=True) as conn:
        yield conn


Database = Annotated[psycopg.Connection, Depends(database)]
Read = Depends(require("read"))
ReadOrQueryToken = Depends(require("read", browser=True))
Write = Depends(require("write"))
Admin = Depends(require("admin"))
