"""The dashboard: GET /dashboard (the reports and load quality as one page), with the plotly.js
it loads and the GX data docs it links to.

People without a token get a prompt (`token_prompt`, for `TokenPrompt`); a token given as
`?token=` is moved into an HttpOnly cookie and the browser is sent to the clean URL, so the
token leaves the address bar.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader

from loader.api.deps import COOKIE, PageReader, ServicesDep, SettingsDep, TokenPrompt
from loader.web.dashboard import TEMPLATES, dashboard_data, latest_validations, plotly_js, render

router = APIRouter(prefix="/dashboard", tags=["dashboard"])
# What the page loads and links to: not operations of the API.
assets = APIRouter(include_in_schema=False)


async def token_prompt(request: Request, error: TokenPrompt) -> HTMLResponse:
    """The exception handler that answers a failed authentication on a page with the prompt."""
    # Autoescaped: messages quote "Authorization: Bearer <token>", which must not become a tag.
    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)
    page = environment.get_template("token.html.j2").render(message=str(error.detail))
    prompt = HTMLResponse(page, status_code=error.status_code, headers=error.headers)
    if error.status_code == 401:
        # A token that no longer works must not be sent again with every page and asset,
        # each counted as a failed authentication.
        prompt.delete_cookie(COOKIE, httponly=True, samesite="strict")
    return prompt


@router.get(
    "",
    response_class=HTMLResponse,
    responses={
        303: {"description": "a ?token= moved into an HttpOnly cookie; sent on to /dashboard"},
        401: {"description": "the token prompt (HTML), saying why", "content": {"text/html": {}}},
        429: {
            "description": "too many failed authentications from this address (HTML)",
            "content": {"text/html": {}},
        },
    },
)
def dashboard(scope: PageReader, services: ServicesDep, request: Request) -> Response:
    """Report 1 as a heat map (filter by year and job), report 2 as bars with the mean, the
    latest runs and the top rejection reasons; every chart with its numbers in a table."""
    if "token" in request.query_params and not services.access.insecure:
        moved = RedirectResponse("/dashboard", status_code=303)
        moved.set_cookie(COOKIE, request.query_params["token"], httponly=True, samesite="strict")
        return moved
    # Not a `Conn` dependency: the redirect above must not wait for a pooled connection.
    with services.pool.connection() as conn:
        data = dashboard_data(conn)
    return HTMLResponse(
        render(
            data,
            inline_js=False,
            data_docs_url="/data-docs/index.html",
            validations=latest_validations(services.settings.gx_state_dir),
        )
    )


@assets.get("/static/plotly.min.js")
def plotly() -> Response:
    return Response(
        plotly_js(),
        media_type="application/javascript",
        headers={"Cache-Control": "public, max-age=86400"},
    )


@assets.get("/data-docs/{path:path}")
def data_docs(scope: PageReader, settings: SettingsDep, path: str) -> FileResponse:
    """The Great Expectations data docs site, behind the same read token as the dashboard."""
    root = settings.data_docs_dir.resolve()
    target = (root / (path or "index.html")).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise HTTPException(404, "no such page in the data docs (has a run built them yet?)")
    return FileResponse(target)
