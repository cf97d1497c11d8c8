"""The dashboard: both reports as charts with their numbers in accessible tables, the latest
runs and the top rejection reasons. One HTML page, served by the API at /dashboard or written
as a self-contained file by `python -m loader report --html`.

Charts are drawn by plotly.js from the `plotly` wheel: served by the app at /static, or inlined
in the file, never fetched from a CDN, so the page works offline.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from urllib.parse import quote

import psycopg
from jinja2 import Environment, FileSystemLoader, select_autoescape

from loader.flow.ledger import recent_runs, rejection_reasons, run_verdicts
from loader.marts.queries import marts_as_of, marts_built, mean_hires, report_by_year

TEMPLATES = Path(__file__).parent / "templates"
QUARTERS = ("q1", "q2", "q3", "q4")
RUNS_SHOWN = 20
REASONS_SHOWN = 10
REPORT_DOCS = "data_docs"  # the data docs' folder beside a report written `--with-docs`
NO_DOCS_NOTE = (
    "The validation pages are not part of this file. To have them linked from here, write it "
    "with: python -m loader report --html FILE --with-docs (the data docs are copied into "
    "data_docs/ beside it). On the loader's machine, python -m loader docs prints where they are."
)


@cache
def plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def dashboard_data(conn: psycopg.Connection) -> dict:
    """Everything the page shows, read from the marts and the ledger (empty before the first
    run). The report queries are those of the API (`loader.marts.queries`); a run's counts are
    its own summary's, as `loader runs` shows them.

    The audit schema must exist: the API creates it at start-up, `report` before calling this.
    """
    if marts_built(conn):
        by_quarter = report_by_year(conn, "hires-by-quarter")
        above = report_by_year(conn, "departments-above-mean")
        means = mean_hires(conn)
    else:
        by_quarter, above, means = [], [], {}
    return {
        "by_quarter": by_quarter,
        "above_mean": above,
        "means": means,
        "runs": latest_runs(conn),
        "reasons": rejection_reasons(conn, REASONS_SHOWN),
        "years": sorted({row["year"] for row in by_quarter}),
        "jobs": sorted({row["job"] for row in by_quarter}, key=str.encode),
        "as_of": marts_as_of(conn),
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def latest_runs(conn: psycopg.Connection) -> list[dict]:
    """The latest runs, newest first, with their batches by verdict and their rows read and held
    back, all from each run's summary (None while it runs)."""
    runs = recent_runs(conn, RUNS_SHOWN)
    verdicts = run_verdicts(conn, [run["run_id"] for run in runs])
    shown = []
    for run in runs:
        counts = verdicts.get(run["run_id"], {})
        shown.append(
            {
                "run_id": run["run_id"],
                "started_at": run["started_at"].isoformat(timespec="seconds"),
                # The folder's or file's name only: a report file must not carry local paths.
                "input": run["input"].rstrip("/").rsplit("/", 1)[-1],
                "status": run["status"],
                "promoted": counts.get("batches_promoted"),
                "partial": counts.get("batches_partially_promoted"),
                "rejected": counts.get("batches_rejected"),
                "rows_read": run["rows_read"],
                "rows_held_back": run["rows_held_back"],
                "files_read": run["files_read"],
                "files_skipped": run["files_skipped"],
            }
        )
    return shown


def latest_validations(gx_state_dir: Path, limit: int = 15) -> list[dict]:
    """The newest GX validation results, with the data docs page of each (a relative URL)."""
    found = []
    for result in (gx_state_dir / "validations").glob("*/*/*/*.json"):
        suite, run_name, run_time, name = result.relative_to(gx_state_dir / "validations").parts
        try:
            success = json.loads(result.read_text()).get("success")
        except (OSError, ValueError):
            continue
        page = Path("validations", suite, run_name, run_time, name.removesuffix(".json") + ".html")
        if (gx_state_dir / "data_docs" / page).exists():
            found.append(
                {
                    "table": suite,
                    "run_time": run_time,
                    "success": success,
                    "page": quote(page.as_posix()),
                }
            )
    return sorted(found, key=lambda v: v["run_time"], reverse=True)[:limit]


def heat_table(data: dict, year: int | None) -> list[dict]:
    """Report 1 summed over jobs: hires per department and quarter in `year`."""
    totals: dict[str, list[int]] = {}
    for row in data["by_quarter"]:
        if row["year"] == year:
            counts = totals.setdefault(row["department"], [0, 0, 0, 0])
            for index, quarter in enumerate(QUARTERS):
                counts[index] += row[quarter]
    return [
        {"department": name, "quarters": counts}
        for name, counts in sorted(totals.items(), key=lambda item: item[0].encode())
    ]


def render(
    data: dict,
    *,
    inline_js: bool,
    data_docs_url: str | None,
    validations: list[dict] | None = None,
    docs_note: str | None = None,
) -> str:
    """The page as HTML; `inline_js` embeds plotly.js (self-contained file). `data_docs_url` is
    the data docs index; validation pages are linked relative to its folder. Without it the
    validations are listed unlinked, with `docs_note` saying where their pages are."""
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"])
    )
    year = 2021 if 2021 in data["years"] else (data["years"][-1] if data["years"] else None)
    return environment.get_template("dashboard.html.j2").render(
        data=data,
        year=year,
        heat=heat_table(data, year),
        above=[row for row in data["above_mean"] if row["year"] == year],
        mean=data["means"].get(year),
        data_json=json.dumps(data, default=str).replace("<", "\\u003c"),
        plotly_inline=plotly_js() if inline_js else None,
        data_docs_url=data_docs_url,
        docs_base=data_docs_url.rsplit("/", 1)[0] if data_docs_url else None,
        validations=validations or [],
        docs_note=docs_note,
    )


def write_report(target: Path, data: dict, gx_state_dir: Path, *, with_docs: bool) -> Path | None:
    """Write the page as one file that stands alone: plotly.js inlined, no local paths in it.

    With `with_docs` the data docs site is copied (merged) into `data_docs/` beside the file and
    the validations link there, relatively; otherwise they are listed unlinked, with a note.
    Returns the folder of the copy, if one was made.
    """
    site = gx_state_dir / "data_docs"
    copy = target.parent / REPORT_DOCS if with_docs and (site / "index.html").is_file() else None
    if copy is not None and copy.resolve() != site.resolve():
        shutil.copytree(site, copy, dirs_exist_ok=True)
    page = render(
        data,
        inline_js=True,
        data_docs_url=f"{REPORT_DOCS}/index.html" if copy else None,
        validations=latest_validations(gx_state_dir),
        docs_note=None if copy else NO_DOCS_NOTE,
    )
    target.write_text(page, encoding="utf-8")
    return copy
