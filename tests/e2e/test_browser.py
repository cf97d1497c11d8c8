"""The dashboard and the data docs in a real headless Chromium (Debian's), driven by Playwright:
the charts draw the numbers of the marts, filters work. Screenshots go to a temporary folder, or
to README's docs/screenshots only with `pytest --screenshots` (so a test run leaves git clean)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import psycopg
import pytest

from loader.flow.file_run import run_files
from loader.sample import write_sample
from tests.conftest import REPO, running_server, settings_for
from tests.e2e.browsers import BROWSER_TEST, CHROMIUM

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = BROWSER_TEST
TOKEN = "browser-read-token"


@pytest.fixture()
def shots(request, tmp_path) -> Path:
    """Where screenshots go: README's folder when asked for, else this test's own."""
    return REPO / "docs" / "screenshots" if request.config.getoption("screenshots") else tmp_path


FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def site(database_url, tmp_path_factory):
    folder = tmp_path_factory.mktemp("in")
    write_sample(folder, rows=3000)
    state = tmp_path_factory.mktemp("state")
    run_files(settings_for(database_url, state, folder, policy="quarantine_rows"))
    with running_server(database_url, state, f"read:{TOKEN}") as base:
        yield base, database_url


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        launched.close()


def marts(url: str, year: int, job: str | None = None):
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "select department, job, q1, q2, q3, q4 from marts.hires_by_quarter where year = %s",
            (year,),
        ).fetchall()
        above = conn.execute(
            "select department, hired from marts.departments_above_mean "
            "where year = %s order by hired desc, id",
            (year,),
        ).fetchall()
    totals = defaultdict(lambda: [0, 0, 0, 0])
    for department, row_job, *quarters in rows:
        if job is None or row_job == job:
            totals[department] = [a + b for a, b in zip(totals[department], quarters)]
    return sorted(([d, *q] for d, q in totals.items()), key=lambda r: r[0].encode()), above


def table(page, selector: str) -> list[list]:
    rows = page.eval_on_selector_all(
        f"{selector} tbody tr", "rows => rows.map(r => [...r.children].map(c => c.textContent))"
    )
    return [[cells[0], *map(int, cells[1:])] for cells in rows]


def test_the_dashboard_draws_the_marts_and_its_filters_work(site, browser, shots):
    base, url = site
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    prompt = page.goto(f"{base}/dashboard")
    assert prompt.status == 401 and page.locator("input[name=token]").count() == 1
    assert "Authorization: Bearer <token>" in page.inner_text("body"), "no tag eaten"
    page.fill("input[name=token]", TOKEN)
    page.click("button")
    page.wait_for_selector("body[data-rendered=yes]")
    assert "token" not in page.url, "the token moved to a cookie, out of the address bar"
    expected_heat, expected_above = marts(url, 2021)
    assert table(page, "#heat-table") == expected_heat
    heat_z = page.evaluate("document.getElementById('heatmap').data[0].z")
    assert heat_z == [row[1:] for row in expected_heat]
    bars = page.evaluate("document.getElementById('above').data")
    assert list(zip(bars[0]["x"], bars[0]["y"])) == expected_above
    assert table(page, "#above-table") == [
        [d, i, h]
        for d, i, h in page.evaluate(
            "[...document.querySelectorAll('#above-table tbody tr')].map(r => "
            "[r.children[0].textContent, +r.children[1].textContent, +r.children[2].textContent])"
        )
    ]
    mean = bars[1]["y"][0]
    assert all(hired > mean for _, hired in expected_above)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
    job = page.eval_on_selector_all("#job option", "o => o.map(x => x.value)")[3]
    page.select_option("#job", job)
    assert table(page, "#heat-table") == marts(url, 2021, job)[0]
    page.select_option("#year", "2020")
    assert table(page, "#heat-table") == marts(url, 2020, job)[0]
    page.close()


def test_every_validation_is_reachable_in_the_data_docs_with_its_failing_rows(site, browser, shots):
    base, _ = site
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.goto(f"{base}/dashboard?token={TOKEN}")
    page.wait_for_selector("body[data-rendered=yes]")
    listed = page.eval_on_selector_all(
        "#validations-table tbody tr", "rows => rows.map(r => r.textContent)"
    )
    assert any("hired_employees" in row and "failed" in row for row in listed), listed
    assert any("departments" in row and "passed" in row for row in listed)
    assert page.request.get(f"{base}/data-docs/index.html").status == 200
    page.click("#validations-table a:text-is('hired_employees')")
    page.wait_for_load_state()
    assert "/data-docs/validations/hired_employees/" in page.url
    text = page.content()
    assert "_line_number" in text, "failing rows are listed by line number"
    assert "must never be null" in text
    page.screenshot(path=str(shots / "data-docs-validation.png"), full_page=False)
    page.close()
