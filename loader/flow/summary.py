"""The run summary: counts per table and in total, top rejection reasons, stage times; as JSON
for machines (the run's log folder and `audit.runs`) and as a table for people."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table as RichTable

from loader.flow.model import SETTLED, BatchState, RunStatus, Settlement


class Stage(StrEnum):
    """The stages a run's busy time is counted by (they overlap: their sum exceeds `elapsed`)."""

    COUNT = "count"  # a cluster run's counting pass
    READ = "read"
    VALIDATE = "validate"
    RAW_LOAD = "raw load"
    PROMOTE = "promote"
    DATA_DOCS = "data docs"
    DBT_BUILD = "dbt build"
    ELAPSED = "elapsed"  # the run's wall-clock time


# The stages every run counts, in the order the summary shows them.
RUN_STAGES = (
    Stage.READ,
    Stage.VALIDATE,
    Stage.RAW_LOAD,
    Stage.PROMOTE,
    Stage.DATA_DOCS,
    Stage.DBT_BUILD,
)


class MartsStatus(StrEnum):
    """What the run's `dbt build` did."""

    NOT_BUILT = "not built"
    REBUILT = "rebuilt"
    FAILED = "dbt build failed"


@dataclass
class TableSummary:
    """What one table's file went through."""

    table: str
    source: str
    lines: int = 0
    blank_lines: int = 0
    rows_read: int = 0
    batches_read: int = 0
    batches_promoted: int = 0
    batches_partially_promoted: int = 0
    batches_rejected: int = 0
    batches_waiting: int = 0
    batches_failed: int = 0
    batches_skipped: int = 0
    batches_rejudged: int = 0
    batches_retried: int = 0
    batches_reused: int = 0
    rows_skipped: int = 0
    rows_promoted: int = 0
    rows_held_back: int = 0
    rows_failing: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def count_earlier(self, state: str | None, rows: int) -> bool:
        """Count a batch by its state in the ledger before this run; True if it is skipped."""
        if state in SETTLED:
            self.batches_skipped += 1
            self.rows_skipped += rows
            return True
        self.batches_rejudged += state == BatchState.WAITING
        self.batches_retried += state == BatchState.FAILED
        return False

    def add(self, settlement: Settlement) -> None:
        if settlement.replayed:  # settled meanwhile by someone else: as if skipped
            self.batches_read -= 1
            self.batches_skipped += 1
            self.rows_skipped += settlement.batch.rows
            return
        self.batches_promoted += settlement.status == BatchState.PROMOTED
        self.batches_partially_promoted += settlement.status == BatchState.PARTIALLY_PROMOTED
        self.batches_rejected += settlement.status == BatchState.REJECTED
        self.batches_waiting += settlement.status == BatchState.WAITING
        self.batches_failed += settlement.status == BatchState.FAILED
        self.rows_promoted += settlement.rows_promoted
        self.rows_held_back += settlement.rows_rejected
        self.rows_failing += len(settlement.rejected_rows)
        for reason in settlement.reasons:
            key = f"{reason['field']}: {reason['rule']}"
            self.reasons[key] = self.reasons.get(key, 0) + (reason["rows"] or 1)


# Two tables of at most 78 columns with every table name in full (a 1,000,000-row file and
# "hired_employees" included): a terminal of 80 columns shows them whole.
ROW_COLUMNS = {
    "read": "rows_read",
    "promoted": "rows_promoted",
    "held back": "rows_held_back",
    "failing": "rows_failing",
    "skipped": "rows_skipped",
}
BATCH_COLUMNS = {
    "read": "batches_read",
    "promoted": "batches_promoted",
    "partial": "batches_partially_promoted",
    "rejected": "batches_rejected",
    "waiting": "batches_waiting",
    "failed": "batches_failed",
    "skipped": "batches_skipped",
}


@dataclass
class RunSummary:
    """The whole run; `status` is `completed` or `failed`."""

    run_id: str
    input: str
    batch_size: int
    policy: str
    tables: list[TableSummary] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    status: RunStatus = RunStatus.COMPLETED
    log_dir: str = ""
    data_docs: str = ""
    marts: dict = field(default_factory=dict)
    marts_status: MartsStatus = MartsStatus.NOT_BUILT
    marts_failures: list[str] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)  # each file read: url, table, state, counts
    files_skipped: list[str] = field(default_factory=list)  # loaded before, unchanged
    files_ignored: list[str] = field(default_factory=list)  # names no table claims
    files_gone: list[str] = field(default_factory=list)  # removed between listing and reading

    def total(self, name: str) -> int:
        return sum(getattr(table, name) for table in self.tables)

    def top_reasons(self, limit: int = 5) -> list[tuple[str, int]]:
        reasons: Counter = Counter()
        for table in self.tables:
            reasons.update({f"{table.table}.{key}": count for key, count in table.reasons.items()})
        return reasons.most_common(limit)

    def _grid(self, title: str, columns: dict[str, str]) -> RichTable:
        grid = RichTable(
            title=title,
            title_justify="left",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            padding=(0, 1),
            collapse_padding=True,
            pad_edge=False,
        )
        grid.add_column("table", no_wrap=True)
        for header in columns:
            grid.add_column(header, justify="right", no_wrap=True)
        for table in self.tables:
            grid.add_row(table.table, *(f"{getattr(table, name):,}" for name in columns.values()))
        grid.add_row("total", *(f"{self.total(name):,}" for name in columns.values()), style="bold")
        return grid

    def as_dict(self) -> dict:
        data = asdict(self)
        for table in data["tables"]:
            table["reasons"] = dict(Counter(table["reasons"]).most_common())
        names = [
            name
            for name in TableSummary.__dataclass_fields__
            if name not in ("table", "source", "reasons")
        ]
        data["totals"] = {name: self.total(name) for name in names}
        data["top_reasons"] = [{"reason": r, "rows": n} for r, n in self.top_reasons()]
        return data

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2))

    def render(self, console: Console) -> None:
        """Print the summary: one table of rows and one of batches, each 78 columns at most
        with full table names, then the top reasons and where to look next."""
        console.print(f"Run {self.run_id} ({self.policy}, batches of {self.batch_size})")
        console.print(self._grid("rows", ROW_COLUMNS))
        console.print()
        console.print(self._grid("batches", BATCH_COLUMNS))
        console.print(
            "  rows: read = promoted + held back + skipped; failing rows are among the held "
            "back; skipped = in batches settled by an earlier run"
        )
        console.print(
            f"  batches: waiting = held back until a referenced department or job exists "
            f"({self.total('batches_rejudged')} re-judged this run); failed = a transient "
            f"database error ({self.total('batches_retried')} retried this run); "
            f"{self.total('blank_lines')} blank lines skipped"
        )
        for reason, rows in self.top_reasons():
            console.print(f"  rejected: {rows:>7} × {reason}")
        times = ", ".join(f"{stage} {seconds:.2f}s" for stage, seconds in self.seconds.items())
        console.print(f"  time (stages overlap): {times}")
        rows = ", ".join(f"marts.{name} {count} rows" for name, count in self.marts.items())
        console.print(f"  marts: {self.marts_status}" + (f": {rows}" if rows else ""))
        for failure in self.marts_failures:
            console.print(f"    dbt: {failure}")
        self._render_files(console)
        console.print(f"  logs: {self.log_dir}")
        console.print(f"  data docs: {self.data_docs}")

    def _render_files(self, console: Console) -> None:
        console.print(
            f"  files: {len(self.files)} read, {len(self.files_skipped)} skipped (loaded "
            f"before, unchanged), {len(self.files_ignored)} ignored (no table by that name)"
        )
        for read in self.files:
            if read["state"] != "loaded":
                console.print(f"    {read['state']}: {read['url']}", markup=False)
        for name in self.files_ignored:
            console.print(f"    ignored: {name}", markup=False)
        for name in self.files_gone:
            console.print(f"    removed after it was listed, not read: {name}", markup=False)
