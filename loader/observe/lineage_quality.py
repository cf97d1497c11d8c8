"""Data-quality facets of an input: what the run's Great Expectations rules found in it.

`dataQualityAssertions` lists every expectation of the table's suite (expectations/, derived
from loader/flow/judge/rules.py) with its column; one succeeds when no row of this run failed
it (the run summary's reasons are keyed "field: rule"). A reason no expectation names (a row
held back with its batch) is one more assertion, failed. `dataQualityMetrics` has the rows
read, the rows held back (`rowsHeldBack`, a field of ours: the spec has none for it), and each
column's null count where the run judged every batch of the table (the rule "required").
"""

from __future__ import annotations

import json
from functools import cache
from typing import TYPE_CHECKING

import attr
from openlineage.client.facet_v2 import (
    data_quality_assertions_dataset as assertions,
)
from openlineage.client.facet_v2 import (
    data_quality_metrics_input_dataset as metrics,
)

from loader.settings import EXPECTATIONS_DIR
from loader.tables import Table

if TYPE_CHECKING:
    from loader.flow.summary import TableSummary

NOT_NULL = "expect_column_values_to_not_be_null"


@attr.define
class DataQualityMetrics(metrics.DataQualityMetricsInputDatasetFacet):
    """The spec's facet, and the rows of the input held back from core."""

    rowsHeldBack: int | None = attr.field(default=None)  # noqa: N815 - the spec's casing


@attr.define(frozen=True)
class Expectation:
    kind: str  # GX's name, e.g. expect_column_values_to_not_be_null
    field: str  # the CSV field the rule is about, "*" for the whole row or batch
    rule: str  # the rule in words, as the run's reasons say it
    column: str | None  # the column GX runs on (a helper column for some rules)

    @property
    def reason(self) -> str:
        return f"{self.field}: {self.rule}"


@cache
def suite_of(table: str) -> tuple[Expectation, ...]:
    """The expectations of `table`'s suite, as committed in expectations/."""
    suite = json.loads((EXPECTATIONS_DIR / "expectations" / f"{table}.json").read_text())
    return tuple(
        Expectation(
            each["type"],
            each.get("meta", {}).get("field", "*"),
            each.get("meta", {}).get("rule", each["type"]),
            each.get("kwargs", {}).get("column"),
        )
        for each in suite["expectations"]
    )


def quality_facets(table: Table, summary: TableSummary, rows: int | None, whole: bool) -> dict:
    """The input facets of one export of `table`: `rows` read from it; `whole`: the table's
    counts are this export's alone (one export of the table in the run)."""
    facets: dict = {}
    if whole:
        facets["dataQualityAssertions"] = assertions_facet(table, summary.reasons)
    columns = {}
    if whole and summary.batches_skipped == 0:
        columns = {
            column.name: metrics.ColumnMetrics(nullCount=null_count(table, column.name, summary))
            for column in table.columns
        }
    facets["dataQualityMetrics"] = DataQualityMetrics(
        columnMetrics=columns,
        rowCount=summary.rows_read if rows is None else rows,
        rowsHeldBack=summary.rows_held_back if whole else None,
    )
    return facets


def assertions_facet(
    table: Table, reasons: dict[str, int]
) -> assertions.DataQualityAssertionsDatasetFacet:
    suite = suite_of(table.name)
    found = [
        assertions.Assertion(
            assertion=expectation.kind,
            success=not reasons.get(expectation.reason),
            column=None if expectation.field == "*" else expectation.field,
            severity="error",
            description=expectation.rule,
            actual=str(reasons.get(expectation.reason, 0)),
        )
        for expectation in suite
    ]
    named = {expectation.reason for expectation in suite}
    for reason, rows in reasons.items():
        if reason not in named and rows:
            field, _, rule = reason.partition(": ")
            found.append(
                assertions.Assertion(
                    assertion="csv_migrate_rule",
                    success=False,
                    column=None if field == "*" else field,
                    severity="error",
                    description=rule,
                    actual=str(rows),
                )
            )
    return assertions.DataQualityAssertionsDatasetFacet(assertions=found)


def null_count(table: Table, column: str, summary: TableSummary) -> int:
    """Rows of the run with `column` empty: those failing its "required" rule."""
    required = next(
        (e for e in suite_of(table.name) if e.kind == NOT_NULL and e.column == column), None
    )
    return summary.reasons.get(required.reason, 0) if required else 0
