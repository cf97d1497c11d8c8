"""The records a batch passes through on its way (read → judged → settled) and the words of
the ledger: batch states, run statuses, and how a policy turns a verdict into a state.

Cheap to import (the standard library and the data dictionary only; pyarrow where a batch is
built from lists): every stage and driver shares these, and the API answers with them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from loader.settings import Policy
from loader.tables import DECODE_ERROR, LINE_NUMBER, Table

if TYPE_CHECKING:  # a batch's rows are Arrow; this module itself stays cheap to import
    import pyarrow as pa

# The one rule a row can fail today and pass later, once its department or job arrives: such a
# batch waits in the ledger instead of being settled as rejected.
REFERENCE_EXPECTATION = "expect_column_values_to_be_in_set"
# Fraction digits after the sixth. PostgreSQL keeps microseconds and would round them away,
# which moves 23:59:59.9999999 into the next day (and year). Both the rule's helper
# (`judge.rules`) and the promotion's cast (`settle.statements.cast_field`) cut them off
# instead, so the stored instant stays in the second the source wrote. Python's re, RE2 (pandas
# on Arrow) and PostgreSQL read it alike.
BEYOND_MICROSECONDS = r"(:[0-9]{2}\.[0-9]{6})[0-9]+"


class BatchState(StrEnum):
    """A batch's state in `audit.batches`."""

    PROMOTED = "promoted"
    PARTIALLY_PROMOTED = "partially_promoted"
    REJECTED = "rejected"  # a row rule failed
    WAITING = "waiting"  # held back only for a missing department or job: re-judged next run
    FAILED = "failed"  # a transient database error outlasted the retries: retried next run


# Settled states: a re-run skips these batches; the others are taken up again.
SETTLED = frozenset({BatchState.PROMOTED, BatchState.PARTIALLY_PROMOTED, BatchState.REJECTED})


class RunStatus(StrEnum):
    """A run's status in `audit.runs`."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    ABANDONED = "abandoned"  # found `running` with nobody holding its liveness lock


def reference_rule(table_name: str) -> str:
    """The reference rule in words, as the ledger and the data docs show it."""
    return f"exists in {table_name}"


@dataclass
class RawBatch:
    """Consecutive data rows of one source, as trimmed text, with their line numbers: `data`,
    an Arrow table of the table's fields (text, missing as null), LINE_NUMBER and
    DECODE_ERROR, as the reader cuts it from a block (`source.csv_reader`). The lists below
    are for the few readers that want Python values (a request's answer, a parent's ids)."""

    table: str
    source: str
    first_line: int
    batch_id: str = ""
    data: pa.Table | None = None

    @classmethod
    def from_lists(
        cls,
        table: Table,
        source: str,
        first_line: int,
        batch_id: str,
        line_numbers: list[int],
        values: list[list[str | None]],
        decode_errors: list[str | None],
    ) -> RawBatch:
        """A batch of rows given as Python lists (one list per column)."""
        import pyarrow as pa

        columns = {
            column.name: pa.array(column_values, pa.string())
            for column, column_values in zip(table.columns, values)
        }
        columns[LINE_NUMBER] = pa.array(line_numbers, pa.int64())
        columns[DECODE_ERROR] = pa.array(decode_errors, pa.string())
        return cls(table.name, source, first_line, batch_id, pa.table(columns))

    @property
    def rows(self) -> int:
        return 0 if self.data is None else self.data.num_rows

    @property
    def last_line(self) -> int:
        return self.data[LINE_NUMBER][-1].as_py() if self.rows else self.first_line

    @property
    def line_numbers(self) -> list[int]:
        return [] if self.data is None else self.data[LINE_NUMBER].to_pylist()

    @property
    def values(self) -> list[list[str | None]]:
        """One list per field, in the table's column order."""
        if self.data is None:
            return []
        return [self.data[name].to_pylist() for name in self.data.column_names[:-2]]

    @property
    def decode_errors(self) -> list[str | None]:
        return [] if self.data is None else self.data[DECODE_ERROR].to_pylist()


@dataclass
class ReadCounts:
    """What reading one source met: lines, data rows, blank lines skipped."""

    lines: int = 0
    rows: int = 0
    blank_lines: int = 0


# Where a table's batches come from: a label for the summary, and a function that yields them
# while filling in the counts it met.
Source = tuple[str, Callable[[ReadCounts], Iterable[RawBatch]]]


@dataclass(frozen=True)
class BatchInfo:
    """Where a batch came from: enough to find its rows in raw and report on it."""

    batch_id: str
    table: str
    source: str
    first_line: int
    last_line: int
    rows: int
    raw_run_id: str | None = None  # the run whose raw copy is settled; None: the settling run's

    @classmethod
    def of(cls, batch: RawBatch, raw_run_id: str | None = None) -> BatchInfo:
        return cls(
            batch.batch_id,
            batch.table,
            batch.source,
            batch.first_line,
            batch.last_line,
            batch.rows,
            raw_run_id,
        )


@dataclass(frozen=True)
class Failure:
    """One broken rule on one row: the field the user wrote, the rule in words, GX's name."""

    field: str
    rule: str
    expectation: str

    def as_dict(self) -> dict:
        return {"field": self.field, "rule": self.rule, "expectation": self.expectation}

    @property
    def is_reference(self) -> bool:
        """A missing department or job: the row may pass once it arrives."""
        return self.expectation == REFERENCE_EXPECTATION


@dataclass
class Verdict:
    """What the gate found in one batch."""

    batch_id: str
    failing_rows: dict[int, Sequence[Failure]] = field(default_factory=dict)
    batch_failures: list[Failure] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failing_rows and not self.batch_failures


@dataclass
class Judged:
    """A chunk's verdicts, and the seconds the gate spent on them."""

    verdicts: dict[str, Verdict]
    seconds: float


@dataclass
class Settlement:
    """What settling one batch did (or, `replayed`, what an earlier settlement did)."""

    batch: BatchInfo
    status: BatchState
    rows_promoted: int
    rows_rejected: int
    reasons: list[dict] = field(default_factory=list)
    rejected_rows: list[dict] = field(default_factory=list)
    attempts: int = 1
    replayed: bool = False

    def record(self, run_id: str) -> dict:
        """The batch's ledger record: lineage, verdict, counts and reasons."""
        return {
            **asdict(self.batch),
            "run_id": run_id,
            "status": str(self.status),
            "rows_promoted": self.rows_promoted,
            "rows_rejected": self.rows_rejected,
            "reasons": self.reasons,
            "attempts": self.attempts,
        }


def held_back(verdict: Verdict, policy: Policy) -> tuple[BatchState, bool]:
    """The batch's state, and whether any of its rows go to core."""
    if verdict.batch_failures:
        return BatchState.REJECTED, False
    if not verdict.failing_rows:
        return BatchState.PROMOTED, True
    waits = [all(f.is_reference for f in found) for found in verdict.failing_rows.values()]
    if Policy(policy) is Policy.REJECT_BATCH:
        return (BatchState.WAITING if all(waits) else BatchState.REJECTED), False
    return (BatchState.WAITING if any(waits) else BatchState.PARTIALLY_PROMOTED), True


def reasons(verdict: Verdict) -> list[dict]:
    """The batch's broken rules with the number of rows breaking each, most frequent first."""
    counts: dict[Failure, int] = {}
    for failure in verdict.batch_failures:
        counts[failure] = counts.get(failure, 0)
    for failures in verdict.failing_rows.values():
        for failure in failures:
            counts[failure] = counts.get(failure, 0) + 1
    ordered = sorted(counts.items(), key=lambda item: -item[1])
    return [{**failure.as_dict(), "rows": rows} for failure, rows in ordered]


def accepted_ids(table: Table, batch: RawBatch, verdict: Verdict, policy: Policy) -> list[int]:
    """Ids this batch will put in core, which later tables of the same run may reference."""
    _, promotes = held_back(verdict, policy)
    if not promotes:
        return []
    keys = batch.data[table.primary_key].to_pylist()
    return [
        int(key) for line, key in zip(batch.line_numbers, keys) if line not in verdict.failing_rows
    ]
