"""A bench's results: the median of each step's rounds, its ratio to its reference, printed as
one table and written as JSON.

A ratio is taken as the issue's targets are stated: a step's seconds over its reference's
seconds (lower is better; per row, should their rows differ), except for `api`, whose ratio is
its rows/s over `loader_same_rows`' rows/s (higher is better). A reference's own ratio is 1,
unless it has a reference of its own: `loader` is measured against `reference`, and is the one
`loader_workers_N` is measured against. Steps whose target is a number of seconds rather than
a ratio (`api_latency_p95`, `watch_latency`, `cli_help`) have no ratio.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table as RichTable

from loader.bench.measure import Measurement

SECONDS, THROUGHPUT = "seconds", "rows/s"
TABLE_WIDTH = 140
# The workers of `run --workers N` whose LocalCluster run (LOADER_WORKERS) the bench measures
# against the in-process one (`loader`): what more workers than one buy on the machine.
WORKERS = 2
LOADER_WORKERS = f"loader_workers_{WORKERS}"
NAMES = (
    "reference",
    "pgloader",
    "loader",
    "loader_quarantine",
    "loader_wall",
    "loader_rerun",
    "loader_rerun_wall",
    LOADER_WORKERS,
    "dbt",
    "backup",
    "pg_dump",
    "restore",
    "pg_restore",
    "api",
    "loader_same_rows",
    "api_latency_p95",
    "watch_latency",
    "cli_help",
)
# A step → (its reference, how the ratio is taken). dbt has none: PostgreSQL has no tool of its
# own that builds the marts.
REFERENCE_OF = {
    "pgloader": ("reference", SECONDS),
    "loader": ("reference", SECONDS),
    # The other policy: failing rows held back, the rest of their batches promoted.
    "loader_quarantine": ("reference", SECONDS),
    # `python -m loader run` as a user starts it: interpreter, imports and all.
    "loader_wall": ("reference", SECONDS),
    # The same input again on the same database: the file ledger skips every file unread.
    "loader_rerun": ("loader", SECONDS),
    "loader_rerun_wall": ("loader_wall", SECONDS),
    LOADER_WORKERS: ("loader", SECONDS),
    "backup": ("pg_dump", SECONDS),
    "restore": ("pg_restore", SECONDS),
    "api": ("loader_same_rows", THROUGHPUT),
}
REFERENCES = {reference for reference, _ in REFERENCE_OF.values()}


@dataclass
class Result:
    """One step: the rows it handled, its median seconds and its highest peaks over the rounds;
    seconds None when it was skipped (`note` says why)."""

    name: str
    rows: int
    seconds: float | None = None
    peak_rss_mb: float | None = None
    peak_pss_mb: float | None = None
    rounds: int = 0
    note: str = ""
    ratio: float | None = None

    @property
    def rows_per_s(self) -> float | None:
        return self.rows / self.seconds if self.seconds else None


def summarise(name: str, rows: int, measurements: list[Measurement], note: str = "") -> Result:
    if not measurements:
        return Result(name, rows, note=note)
    return Result(
        name,
        rows,
        statistics.median(m.seconds for m in measurements),
        max(m.peak_rss_mb for m in measurements),
        max((m.peak_pss_mb for m in measurements if m.peak_pss_mb is not None), default=None),
        len(measurements),
        note,
    )


def with_ratios(results: list[Result]) -> list[Result]:
    """Set each result's ratio to its reference (None when either was skipped)."""
    by_name = {result.name: result for result in results}
    for result in results:
        if result.seconds is None:
            continue
        if result.name in REFERENCE_OF:  # first: loader is a reference and has one
            name, kind = REFERENCE_OF[result.name]
            reference = by_name.get(name)
            if reference is None or not reference.rows_per_s:
                continue
            result.ratio = (
                result.rows_per_s / reference.rows_per_s
                if kind == THROUGHPUT
                else reference.rows_per_s / result.rows_per_s
            )
        elif result.name in REFERENCES:
            result.ratio = 1.0
    return results


def as_json(rows: int, results: list[Result]) -> dict:
    def rounded(value: float | None, digits: int) -> float | None:
        return None if value is None else round(value, digits)

    return {
        "rows": rows,
        "results": [
            {
                "name": result.name,
                "seconds": rounded(result.seconds, 6),  # tiny steps: ratios stay exact
                "rows_per_s": rounded(result.rows_per_s, 1),
                "peak_rss_mb": rounded(result.peak_rss_mb, 1),
                "peak_pss_mb": rounded(result.peak_pss_mb, 1),
                # Four significant digits: a re-run that reads nothing is a fraction of a percent.
                "ratio_to_reference": None
                if result.ratio is None
                else float(f"{result.ratio:.4g}"),
            }
            for result in results
        ],
    }


def write_json(path: Path, rows: int, results: list[Result]) -> None:
    path.write_text(json.dumps(as_json(rows, results), indent=2) + "\n")


def against(result: Result) -> str:
    if result.name in REFERENCE_OF:
        name, kind = REFERENCE_OF[result.name]
        return f"{name} ({kind})"
    return "itself" if result.name in REFERENCES else ""


def render(console: Console, title: str, results: list[Result]) -> None:
    grid = RichTable(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    headers = (
        "step",
        "rows",
        "seconds",
        "rows/s",
        "peak RSS MB",
        "peak Pss MB",
        "ratio",
        "against",
    )
    for header in headers:
        grid.add_column(header, justify="left" if header in ("step", "against") else "right")
    for result in results:
        if result.seconds is None:
            grid.add_row(result.name, f"{result.rows:,}", "skipped", "", "", "", "", result.note)
            continue
        grid.add_row(
            result.name,
            f"{result.rows:,}",
            f"{result.seconds:.2f}",
            f"{result.rows_per_s:,.0f}" if result.rows_per_s else "",
            f"{result.peak_rss_mb:,.0f}",
            "" if result.peak_pss_mb is None else f"{result.peak_pss_mb:,.0f}",
            "" if result.ratio is None else f"{result.ratio:.2f}",
            against(result),
        )
    # Never wrapped: piped or in CI (80 columns), a wrapped row no longer reads as one line.
    console.print(grid, width=max(console.width, TABLE_WIDTH))
