"""GET /dashboard (the reports and load quality as one page), its plotly.js, and the GX data docs.

People without a token get a prompt; a token given as `?token=` is moved into an HttpOnly
cookie and the browser is sent to the clean URL, so the token leaves the address bar.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from loader.api.deps import COOKIE, Database, authenticate
from loader.web.dashboard import TEMPLATES, dashboard_data, latest_validations, plotly_js, render

router = APIRouter(tags=["dashboard"])


def _prompt(message: str, status: int) -> HTMLResponse:
    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape())
    page = environment.get_template("token.html.j2").render(message=message)
    return HTMLResponse(page, status_code=status)


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard(request: Request, conn: Database) -> Response:
    """Report 1 as a heat map (filter by year and job), report 2 as bars with the mean, the
    latest runs and the top rejection reasons; every chart with its numbers in a table."""
    try:
        authenticate(request, "read", browser=True)
    except HTTPException as error:
        return _prompt(str(error.detail), error.status_code)
    if "token" in request.query_params and not request.app.state.insecure:
        moved = RedirectResponse("/dashboard", status_code=303)
        moved.set_cookie(COOKIE, request.query_params["token"], httponly=True, samesite="strict")
        return moved
    return HTMLResponse(
        render(
            dashboard_data(conn),
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
        return _prompt(str(error.detail), error.status_code)
    root = request.app.state.settings.data_docs_dir.resolve()
    target = (root / (path or "index.html")).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise HTTPException(404, "no such page in the data docs (has a run built them yet?)")
    return FileResponse(Path(target))
