"""/docs in a real headless Chromium with the network cut: Swagger UI, from the app's own
assets, lists every operation of the API and asks nothing of the internet."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import running_server
from tests.e2e.browsers import BROWSER_TEST, CHROMIUM

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = BROWSER_TEST
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


@pytest.fixture(scope="module")
def base(database_url, tmp_path_factory):
    with running_server(database_url, tmp_path_factory.mktemp("state"), "read:docs") as base:
        yield base


@pytest.fixture()
def offline_page(base):
    """A page whose requests reach 127.0.0.1 only; yields it with the lists of requests that
    tried to leave and of requests that failed or were answered with an error."""
    left, failed = [], []

    def loopback_only(route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            left.append(route.request.url)
            route.abort("internetdisconnected")

    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.route("**/*", loopback_only)
        page = context.new_page()
        page.on("requestfailed", lambda request: failed.append(request.url))
        page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.status} {r.url}"))
        yield page, left, failed
        browser.close()


def test_swagger_ui_lists_every_operation_offline(base, offline_page):
    page, left, failed = offline_page
    spec = httpx.get(f"{base}/openapi.json").json()
    operations = {
        (method.upper(), path) for path, methods in spec["paths"].items() for method in methods
    }
    assert ("POST", "/tables/{table}/batches") in operations

    page.goto(f"{base}/docs", wait_until="networkidle")
    assert left == [], "the page asked the internet for something"
    page.wait_for_selector(".opblock")
    listed = page.eval_on_selector_all(
        ".opblock",
        "blocks => blocks.map(b => [b.querySelector('.opblock-summary-method').textContent,"
        " b.querySelector('.opblock-summary-path').getAttribute('data-path')])",
    )
    assert {tuple(operation) for operation in listed} == operations
    assert page.locator(".opblock-summary-path", has_text="/tables/{table}/batches").is_visible()
    assert page.locator(".errors-wrapper").count() == 0, "Swagger UI read the spec without errors"
    # Styled by swagger-ui.css: a GET block is tinted blue, not left transparent.
    tint = page.evaluate("getComputedStyle(document.querySelector('.opblock-get')).backgroundColor")
    assert tint not in ("rgba(0, 0, 0, 0)", "transparent")
    assert left == [] and failed == []


def test_no_documentation_page_points_at_a_cdn(base):
    docs = httpx.get(f"{base}/docs")
    assert docs.status_code == 200
    assert "http://" not in docs.text and "https://" not in docs.text
    assert httpx.get(f"{base}/redoc").status_code == 404, "ReDoc would fetch its logo from a CDN"
