"""GET /dashboard (the reports and load quality as one page), its plotly.js, and the GX data docs.

People without a token get a prompt; a token given as `?token=` is moved into an HttpOnly
cookie and the browser is sent to the clean URL, so the token leaves the address bar.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader

from loader.api.deps import COOKIE, authenticate
from loader.web.dashboard import TEMPLATES, dashboard_data, latest_validations, plotly_js, render

router = APIRouter(tags=["dashboard"])


def _prompt(error: HTTPException) -> HTMLResponse:
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
    "/dashboard",
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
def dashboard(request: Request) -> Response:
    """Report 1 as a heat map (filter by year and job), report 2 as bars with the mean, the
    latest runs and the top rejection reasons; every chart with its numbers in a table."""
    try:
        authenticate(request, "read", browser=True)
    except HTTPException as error:
        return _prompt(error)
    if "token" in request.query_params and not request.app.state.insecure:
        moved = RedirectResponse("/dashboard", status_code=303)
        moved.set_cookie(COOKIE, request.query_params["token"], httponly=True, samesite="strict")
        return moved
    with request.app.state.pool.connection() as conn:
        data = dashboard_data(conn)
    return HTMLResponse(
        render(
            data,
            inline_js=False,
            data_docs_url="/data-docs/index.html",
            validations=latest_validations(request.app.state.settings.gx_state_dir),
        )
    )


@router.get("/static/plotly.min.js", include_in_schema=False)
def plotly() -> Response:
    return Response(
        plotly_js(),
        media_type="application/javascript",
        headers={"Cache-Control": "public, max-age=86400"},
    )


@router.get("/data-docs/{path:path}", include_in_schema=False)
def data_docs(path: str, request: Request) -> Response:
    """The Great Expectations data docs site, behind the same read token as the dashboard."""
    try:
        authenticate(request, "read", browser=True)
    except HTTPException as error:
        return _prompt(error)
    root = request.app.state.settings.data_docs_dir.resolve()
    target = (root / (path or "index.html")).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise HTTPException(404, "no such page in the data docs (has a run built them yet?)")
    return FileResponse(Path(target))
