"""The Great Expectations data docs site as the loader builds it: complete offline, and
naming what each validation page judged.

GX 1.24.1's pages load Bootstrap, jQuery, bootstrap-table, Font Awesome, popper and Vega from
CDNs and its logo from S3: offline they are unstyled and the index table, which bootstrap-table
draws, stays empty. expectations/great_expectations.yml names the two classes here.
`OfflineSiteBuilder` builds the site as GX does, copies the pinned copies in vendor/data_docs/
(manifest.json: package@version, npm integrity, the CDN URLs each one replaces) into the site's
static/vendor/ and points the pages it has just written at them by relative paths, so the site
works from file:// (and copied beside a report) as well as from the API's /data-docs/.
`ValidationPageRenderer` fills the "Data asset" that GX leaves as None for dataframe assets with
the table and the run name the gate gives each checkpoint run ("lines 2-1001 of run ...").
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from great_expectations.render.renderer.page_renderer import ValidationResultsPageRenderer
from great_expectations.render.renderer.site_builder import SiteBuilder

VENDOR = Path(__file__).parent / "vendor" / "data_docs"
MANIFEST = VENDOR / "manifest.json"
SITE_VENDOR = "static/vendor/"
# GX's logos come from S3; the site's own copy of the light one (GX ships no dark one) serves both.
LOGO = re.compile(
    r"https://great-expectations-web-assets\.s3\.us-east-2\.amazonaws\.com/"
    r"(?:logo-long|full_logo_dark)\.png[^\"')]*"
)
SITE_LOGO = "static/images/logo-long.png"
# GX links the favicon one folder short on validation pages.
FAVICON = re.compile(r'href="(?:\.\.?/)*static/images/favicon\.ico"')
# Subresource integrity with crossorigin="anonymous" makes a file:// page refuse its own copies.
INTEGRITY = re.compile(r'\s+(?:integrity|crossorigin)="[^"]*"')
REMOTE = re.compile(r"""(?:src|href)=["']https?://[^"']+|url\(['"]?https?://[^)'"]+""")

logger = logging.getLogger(__name__)


@cache
def vendored() -> dict[str, str]:
    """Each CDN URL GX's pages load, and its pinned copy (a path under vendor/data_docs/)."""
    return {
        url: f"{package['name']}@{package['version']}/{path}"
        for package in json.loads(MANIFEST.read_text())["packages"]
        for path, entry in package["files"].items()
        for url in entry.get("serves", ())
    }


def vendored_files() -> list[str]:
    """Every vendored file with its licence, as paths under vendor/data_docs/, and the manifest."""
    return [
        f"{package['name']}@{package['version']}/{path}"
        for package in json.loads(MANIFEST.read_text())["packages"]
        for path in package["files"]
    ] + [MANIFEST.name]


def offline_page(html: str, root: str) -> str:
    """The page with its CDN assets replaced by the site's copies.

    Args:
        html: a page as GX wrote it (or as this function left it: a second pass changes nothing).
        root: the way from the page's folder to the site root: "" or "../../../../".

    Only the head (assets, styles) and the navigation bar's logo are touched, never the body's
    content, which quotes the validated data.
    """
    head, body_tag, body = html.partition("<body")
    for url, local in vendored().items():
        head = head.replace(f'"{url}"', f'"{root}{SITE_VENDOR}{local}"')
    head = INTEGRITY.sub("", head)
    head = LOGO.sub(root + SITE_LOGO, head)
    head = FAVICON.sub(f'href="{root}static/images/favicon.ico"', head)
    body = LOGO.sub(root + SITE_LOGO, body, count=1)
    return head + body_tag + body


def remote_assets(html: str) -> list[str]:
    """What the page's head would still load from the network (nothing, once offline)."""
    return REMOTE.findall(html.partition("<body")[0])


def make_offline(site: Path, pages: Iterable[Path]) -> None:
    """Copy the vendored assets into the site and point `pages` (in the site) at them."""
    for relative in vendored_files():
        source, target = VENDOR / relative, site / SITE_VENDOR / relative
        if not target.is_file() or target.stat().st_size != source.stat().st_size:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    for page in pages:
        if page.suffix != ".html" or not page.is_file():
            continue
        html = page.read_text(encoding="utf-8")
        root = Path(os.path.relpath(site, page.parent)).as_posix()
        offline = offline_page(html, "" if root == "." else root + "/")
        for remote in remote_assets(offline):
            logger.warning("%s still loads %s: add it to %s", page, remote, MANIFEST)
        if offline != html:
            _replace(page, offline)


def _replace(page: Path, text: str) -> None:
    # Atomic, so that a browser (or the API) never reads half a page.
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=page.parent, suffix=".tmp", delete=False
    ) as temporary:
        temporary.write(text)
    Path(temporary.name).replace(page)


class OfflineSiteBuilder(SiteBuilder):
    """GX's site builder; then the pages it wrote load their assets from the site itself."""

    def build(self, resource_identifiers=None, build_index: bool = True):
        built = super().build(resource_identifiers, build_index=build_index)
        index = self._page(None)
        if index is None:  # not a site on the local file system, as the loader's is
            return built
        site = index.parent
        if (site / SITE_VENDOR / MANIFEST.name).is_file():
            pages = [self._page(key.resource_identifier) for key in self.target_store.keys]
            make_offline(site, [index, *pages] if build_index else pages)
        else:  # a site first built before the loader made it offline: all its pages
            make_offline(site, list(site.rglob("*.html")))
        return built

    def _page(self, resource_identifier) -> Path | None:
        url = self.target_store.get_url_for_resource(resource_identifier, only_if_exists=False)
        parts = urlsplit(url)
        return Path(url2pathname(parts.path)) if parts.scheme == "file" else None


class ValidationPageRenderer(ValidationResultsPageRenderer):
    """GX's validation page, its "Data asset" named: the table, then the run name."""

    def render(self, validation_results, suite_parameters=None):
        meta = validation_results.meta
        spec = meta.get("batch_spec") or {}
        if not spec.get("data_asset_name") and not meta.get("batch_kwargs"):
            meta["batch_spec"] = {**spec, "data_asset_name": data_asset_title(meta)}
        return super().render(validation_results, suite_parameters)

    def _determine_page_title(self, run_name, run_time, data_asset_name, expectation_suite_name):
        # The suite is named for the table and the run name follows: the asset would repeat both.
        return super()._determine_page_title(run_name, run_time, "", expectation_suite_name)


def data_asset_title(meta: dict) -> str | None:
    """ "hired_employees lines 2-1001 of run 20250101T000000Z-1a2b3c" from a result's meta."""
    asset = _field(meta.get("active_batch_definition"), "data_asset_name")
    run_name = _field(meta.get("run_id"), "run_name")
    return " ".join(part for part in (asset, run_name) if part) or None


def _field(value, name: str):
    # As read back from the store a field is a dict entry; as just made, an attribute.
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)
