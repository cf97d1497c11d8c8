"""The routes' dependencies as typed aliases: the server's services and settings, a pooled
connection, the caller's scope (checked before anything else is done), the table in the path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

import psycopg
from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer

from loader.api.services import Access, Services
from loader.api.tokens import allows, scope_of
from loader.settings import Settings
from loader.tables import TABLES_BY_NAME, Table

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


def services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(services)]


def settings(services: ServicesDep) -> Settings:
    return services.settings


SettingsDep = Annotated[Settings, Depends(settings)]


def access(services: ServicesDep) -> Access:
    return services.access


AccessDep = Annotated[Access, Depends(access)]


def connection(services: ServicesDep) -> Iterator[psycopg.Connection]:
    """A pooled autocommit connection for the request's life."""
    with services.pool.connection() as conn:
        yield conn


Conn = Annotated[psycopg.Connection, Depends(connection)]


def known_table(table: str) -> Table:
    """The table named in the path; 404 for any other name."""
    if table not in TABLES_BY_NAME:
        raise HTTPException(404, f"unknown table {table!r}; known: {', '.join(TABLES_BY_NAME)}")
    return TABLES_BY_NAME[table]


KnownTable = Annotated[Table, Depends(known_table)]


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


def _text_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def authenticate(request: Request, access: Access, needed: str, browser: bool = False) -> str:
    """The caller's scope if it covers `needed`; else HTTPException 401, 403 or 429.

    `browser` also accepts `?token=` (a read token only) and the dashboard's cookie: report
    endpoints, dashboard and data docs, for BI tools and people.
    """
    if access.insecure:
        return "admin"
    address = _client(request)
    wait = access.throttle.retry_after(address)
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
    scope = scope_of(access.tokens, presented)
    if scope is None:
        access.throttle.failed(address)
        raise _unauthorized("unknown token")
    if in_url and scope != QUERY_SCOPE:
        raise _unauthorized(
            f"a {scope} token is refused in a URL (URLs end up in logs and browser history): "
            f"send it as Authorization: Bearer <token>, or use a read token in ?token="
        )
    if not allows(scope, needed):
        raise HTTPException(403, f"this token's scope is {scope}; {needed} is needed")
    return scope


def require(needed: str, browser: bool = False) -> Callable[..., str]:
    """A dependency admitting callers whose token has `needed` scope (or a wider one); the
    `Security` parameters only declare the token schemes in OpenAPI."""
    if browser:

        def check_browser(
            request: Request,
            access: AccessDep,
            _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
            _query: Annotated[str | None, Security(query_token)],
        ) -> str:
            return authenticate(request, access, needed, browser=True)

        return check_browser

    def check(
        request: Request,
        access: AccessDep,
        _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> str:
        return authenticate(request, access, needed)

    return check


# The caller's scope, for routes that need at least this one.
Reader = Annotated[str, Depends(require("read"))]
ReportReader = Annotated[str, Depends(require("read", browser=True))]  # also ?token=, cookie
Writer = Annotated[str, Depends(require("write"))]
Administrator = Annotated[str, Depends(require("admin"))]


class TokenPrompt(HTTPException):
    """A person's browser failed authentication on a page: answered with the token prompt
    (HTML, saying why) rather than JSON."""


def page_reader(request: Request, access: AccessDep) -> str:
    try:
        return authenticate(request, access, "read", browser=True)
    except HTTPException as error:
        raise TokenPrompt(error.status_code, error.detail, error.headers) from None


# The dashboard and the data docs: a read scope, or the token prompt. No token scheme in
# OpenAPI: a person signs in on the prompt, and the page's own assets are not API operations.
PageReader = Annotated[str, Depends(page_reader)]
