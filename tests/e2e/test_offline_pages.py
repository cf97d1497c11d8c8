"""What a user opens works with the network cut: the GX data docs (served by the API and copied
beside a report) and the report file, in Debian's headless Chromium driven by Playwright.

Every request that leaves the machine is aborted and recorded; a test fails if a page tried one,
or if any request failed or answered an error. Nothing is written into the repository.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from loader.cli import ExitCode
from loader.flow.file_run import run_files
from loader.sample import write_sample
from tests.conftest import REPO, running_server, settings_for
from tests.e2e.browsers import BROWSER_TEST, CHROMIUM

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = BROWSER_TEST
TOKEN = "offline-read-token"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # No name resolves: only the API on 127.0.0.1 and file:// can answer.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
INDEX_TABLE = "table.ge-index-page-validation-results-table"


@pytest.fixture(scope="module")
def loaded(database_url, tmp_path_factory):
    """A run over a generated sample (with broken rows), its state folder and input folder."""
    folder = tmp_path_factory.mktemp("input")
    write_sample(folder, rows=3000)
    state = tmp_path_factory.mktemp("state")
    run_files(settings_for(database_url, state, folder, policy="quarantine_rows"))
    return database_url, state, folder


@pytest.fixture(scope="module")
def api(loaded):
    url, state, _ = loaded
    with running_server(url, state, f"read:{TOKEN}") as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


def report(loaded, folder: Path, *options: str) -> Path:
    """`python -m loader report --html FOLDER/report.html [options]`, as a user runs it."""
    url, state, _ = loaded
    target = folder / "report.html"
    done = subprocess.run(
        [sys.executable, "-m", "loader", "report", "--html", str(target), *options],
        env={**os.environ, "DATABASE_URL": url, "LOADER_STATE_DIR": str(state)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == ExitCode.OK, done.stderr
    return target


def validations(state: Path) -> set[tuple[str, str]]:
    """(table, run name) of every validation result the run stored."""
    results = (state / "gx" / "validations").glob("*/*/*/*.json")
    return {tuple(result.relative_to(state / "gx" / "validations").parts[:2]) for result in results}


@contextmanager
def offline(browser, width: int = 1280):
    """A page whose requests beyond this machine are aborted; yields it, the requests that
    tried to leave, and the requests that failed or answered 4xx/5xx."""
    context = browser.new_context(viewport={"width": width, "height": 900})
    outside: list[str] = []
    failed: list[str] = []

    def cut(route):
        address = urlsplit(route.request.url)
        if address.scheme in ("file", "data", "blob") or address.hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", cut)
    page = context.new_page()
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.on(
        "response",
        lambda response: (
            response.status >= 400 and failed.append(f"{response.status} {response.url}")
        ),
    )
    try:
        yield page, outside, failed
    finally:
        context.close()


def assert_styled(page) -> None:
    """Bootstrap's navbar is a flex box and Font Awesome's font is loaded: the CSS arrived."""
    assert page.evaluate("getComputedStyle(document.querySelector('.navbar')).display") == "flex"
    loaded = "async () => (await document.fonts.load('900 16px \"Font Awesome 6 Free\"')).length"
    assert page.evaluate(loaded) > 0


def index_rows(page) -> list[dict]:
    page.wait_for_selector(f"{INDEX_TABLE} tbody tr[data-index]")
    return page.evaluate(
        "table => $(table).bootstrapTable('getData').map(row => ({"
        "table: row._expectation_suite_name_sort, run: row.run_name, page: row._table_row_link_path"
        "}))",
        INDEX_TABLE,
    )


def test_the_data_docs_index_lists_every_validation_styled_with_the_network_cut(
    loaded, api, browser
):
    _, state, _ = loaded
    expected = validations(state)
    assert {table for table, _ in expected} == {"departments", "jobs", "hired_employees"}
    with offline(browser) as (page, outside, failed):
        page.goto(f"{api}/dashboard?token={TOKEN}")  # the token becomes a cookie
        page.goto(f"{api}/data-docs/index.html")
        rows = index_rows(page)
        assert {(row["table"], row["run"]) for row in rows} == expected
        shown = page.eval_on_selector_all(f"{INDEX_TABLE} tbody tr[data-index]", "r => r.length")
        assert shown == len(expected)
        assert_styled(page)
        assert outside == [] and failed == []


def test_a_validation_page_names_its_table_lines_and_run_and_loads_nothing_from_outside(
    api, browser
):
    with offline(browser) as (page, outside, failed):
        page.goto(f"{api}/dashboard?token={TOKEN}")
        page.goto(f"{api}/data-docs/index.html")
        index_rows(page)
        page.click(f"{INDEX_TABLE} tbody tr[data-index]:has-text('hired_employees')")
        page.wait_for_selector("text=Data asset:")
        assert "/data-docs/validations/hired_employees/" in page.url
        overview = page.inner_text("body")
        assert re.search(r"Data asset: hired_employees lines 1-\d+ of run \S+", overview)
        assert "Data asset: None" not in overview
        assert "_line_number" in page.content(), "failing rows are listed by line number"
        assert_styled(page)
        page.click("a:text-is('hired_employees')")  # the expectation suite's page
        page.wait_for_selector("text=Expectation Suite")
        assert_styled(page)
        assert outside == [] and failed == []


def test_the_report_file_at_1280_px_clips_no_table_and_keeps_the_mode_bar_off_the_heat_map(
    loaded, browser, tmp_path
):
    target = report(loaded, tmp_path)
    with offline(browser, width=1280) as (page, outside, failed):
        page.goto(target.as_uri())
        page.wait_for_selector("body[data-rendered=yes]")
        clipped = page.evaluate(
            """[...document.querySelectorAll('table')].filter(table => {
                 const box = table.parentElement;
                 return box.scrollWidth > box.clientWidth + 1
                     || table.getBoundingClientRect().right > innerWidth;
               }).map(table => table.id)"""
        )
        assert clipped == [], "tables wider than their box at 1280 px"
        assert page.eval_on_selector_all("#runs-table tbody tr", "r => r.length") >= 1
        page.hover("#heatmap .nsewdrag")
        page.wait_for_selector("#heatmap .modebar", state="visible")
        bar = page.eval_on_selector("#heatmap .modebar", "e => e.getBoundingClientRect().bottom")
        plot = page.eval_on_selector("#heatmap .nsewdrag", "e => e.getBoundingClientRect().top")
        assert bar <= plot, "plotly's mode bar covers the heat map's first row"
        assert outside == [] and failed == []


def test_the_report_file_without_docs_has_no_local_path_and_says_how_to_get_the_validations(
    loaded, browser, tmp_path
):
    _, state, folder = loaded
    target = report(loaded, tmp_path)
    text = target.read_text(encoding="utf-8")
    for local in ("file:///", str(state), str(folder), str(tmp_path), str(REPO), str(Path.home())):
        assert local not in text, local
    assert not (tmp_path / "data_docs").exists()
    with offline(browser) as (page, outside, failed):
        page.goto(target.as_uri())
        page.wait_for_selector("body[data-rendered=yes]")
        assert page.eval_on_selector_all("#validations-table tbody tr", "r => r.length") >= 3
        assert page.eval_on_selector_all("a[href]", "links => links.length") == 0
        assert "--with-docs" in page.inner_text("#docs-note")
        assert outside == [] and failed == []


def test_the_report_file_with_docs_links_every_validation_to_a_page_that_opens_offline(
    loaded, browser, tmp_path
):
    _, state, folder = loaded
    target = report(loaded, tmp_path / "sent", "--with-docs")
    text = target.read_text(encoding="utf-8")
    for local in ("file:///", str(state), str(folder), str(REPO)):
        assert local not in text, local
    with offline(browser) as (page, outside, failed):
        page.goto(target.as_uri())
        page.wait_for_selector("body[data-rendered=yes]")
        links = page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)")
        assert len(links) >= 4, "the data docs index and each validation listed"
        assert all(link.startswith((tmp_path / "sent" / "data_docs").as_uri()) for link in links)
        for link in links:
            page.goto(link)
            assert_styled(page)
            if "/validations/" in link:
                assert "Data asset: None" not in page.inner_text("body")
            else:
                assert {(row["table"], row["run"]) for row in index_rows(page)} == validations(
                    state
                )
        assert outside == [] and failed == []
    copied = json.loads((tmp_path / "sent" / "data_docs/static/vendor/manifest.json").read_text())
    assert copied["packages"], "the licences and their record travel with the copy"
