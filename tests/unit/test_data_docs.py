"""The GX data docs site as the loader builds it: every asset a page loads is a pinned local copy
(the manifest's), and each validation page names the table, lines and run it judged."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from loader.flow.judge.checkpoints import InProcessGate
from loader.settings import EXPECTATIONS_DIR
from loader.tables import DEPARTMENTS, JOBS
from loader.web.data_docs import MANIFEST, VENDOR, offline_page, remote_assets, vendored
from tests.unit.test_gate import batch_of, check

LOCAL_ASSET = re.compile(r"""<(?:script|link)\b[^>]*\b(?:src|href)="([^"#]+)\"""")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    state = tmp_path_factory.mktemp("gx")
    gate = InProcessGate(EXPECTATIONS_DIR, state)
    departments = [batch_of([["1", "Sales"], ["x", "Legal"]], table=DEPARTMENTS, first_line=3)]
    check(gate, DEPARTMENTS, departments, {})
    check(gate, JOBS, [batch_of([["1", "Clerk"]], table=JOBS)], {})
    return gate.build_docs().parent


def pages(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


def test_every_built_page_loads_its_assets_from_the_site_itself(site):
    built = pages(site)
    kinds = {page.relative_to(site).parts[0] for page in built}
    assert kinds == {"index.html", "validations", "expectations"}, kinds
    for page in built:
        html = page.read_text(encoding="utf-8")
        assert remote_assets(html) == [], page
        head = html.partition("<body")[0]
        assets = LOCAL_ASSET.findall(head)
        assert len(assets) >= 15, page
        for asset in assets:
            assert (page.parent / unquote(urlsplit(asset).path)).resolve().is_file(), asset
        assert "amazonaws.com" not in html, "GX's logo from the site's own static/images"


def test_the_vendored_files_are_the_ones_the_manifest_pins_with_their_licences():
    manifest = json.loads(MANIFEST.read_text())
    for package in manifest["packages"]:
        spec = f"{package['name']}@{package['version']}"
        assert package["integrity"].startswith("sha512-"), spec
        assert package["tarball"].startswith("https://registry.npmjs.org/"), spec
        assert any(Path(path).name.startswith("LICENSE") for path in package["files"]), spec
        for path, entry in package["files"].items():
            digest = hashlib.sha384((VENDOR / spec / path).read_bytes()).digest()
            assert entry["sha384"] == "sha384-" + base64.b64encode(digest).decode(), path
    vendored_here = {p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*") if p.is_file()}
    listed = {
        f"{p['name']}@{p['version']}/{path}" for p in manifest["packages"] for path in p["files"]
    }
    assert vendored_here - listed == {"manifest.json", "README.md", "vendor.py"}


def test_a_validation_page_names_its_table_lines_and_run(site):
    page = next((site / "validations" / "departments").rglob("*.html")).read_text()
    assert "Data asset: departments lines 3-4 of run run<" in page
    assert "Data asset: None" not in page
    index = (site / "index.html").read_text()
    assert "lines 3-4 of run run" in index and "lines 1-1 of run run" in index


def test_rewriting_touches_the_head_and_logo_only_and_twice_changes_nothing():
    url = next(iter(vendored()))
    logo = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png?d=1"
    html = (
        f'<html><head><script src="{url}" integrity="sha384-x" crossorigin="anonymous"></script>'
        f'</head><body><img src="{logo}"/><td>"{url}" as a failing value</td></body></html>'
    )
    once = offline_page(html, "../../")
    assert f'<script src="../../static/vendor/{vendored()[url]}"></script>' in once
    assert '<img src="../../static/images/logo-long.png"/>' in once
    assert f'<td>"{url}" as a failing value</td>' in once, "the data shown is left alone"
    assert offline_page(once, "../../") == once


def test_a_site_built_before_gets_its_older_pages_made_offline_too(tmp_path):
    gate = InProcessGate(EXPECTATIONS_DIR, tmp_path)
    check(gate, JOBS, [batch_of([["1", "Clerk"]], table=JOBS)], {})
    site = gate.build_docs().parent
    older = next((site / "validations").rglob("*.html"))
    url = next(iter(vendored()))
    local = f"../../../../static/vendor/{vendored()[url]}"
    older.write_text(older.read_text().replace(local, url))  # as GX alone wrote it
    shutil.rmtree(site / "static" / "vendor")
    check(gate, JOBS, [batch_of([["2", "Cook"]], table=JOBS)], {})
    gate.build_docs()
    assert url not in older.read_text() and local in older.read_text()
