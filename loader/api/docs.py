"""The API's documentation page, /docs (Swagger UI), with its assets served by the app itself, so
it works on a machine without internet.

The assets come from the pinned `fastapi-offline` wheel (1.7.7 carries swagger-ui 5.32.6 and
FastAPI's favicon; licences in its dist-info). Only its static folder is used: the page is
FastAPI's own `get_swagger_ui_html`. There is no /redoc: ReDoc's page loads its logo from
Redocly's CDN whatever it is given.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/static/api-docs"


def serve_api_docs(app: FastAPI) -> None:
    """Add /docs to an app created with `docs_url=None, redoc_url=None`."""
    app.mount(
        ASSETS,
        StaticFiles(directory=str(files("fastapi_offline") / "static")),
        name="api-docs-assets",
    )

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
        )
