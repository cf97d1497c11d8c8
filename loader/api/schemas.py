"""Request and response models. Row models are derived from the data dictionary and strict:
`"1"`, `true`, `1.0` or an epoch number are not an id or a time, and unknown keys are refused.
A field may be null (it is then reported by the gate as missing, and audited) but not absent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, create_model

from loader.flow.summary import TableSummary
from loader.settings import MAX_BATCH_SIZE
from loader.tables import POSTGRES_INTEGER_MAX, TABLES, Column, Table

STRICT = ConfigDict(strict=True, extra="forbid")


def _field_type(column: Column):
    if column.kind == "integer":
        return Annotated[
            StrictInt | None,
            Field(
                ge=-POSTGRES_INTEGER_MAX - 1,
                le=POSTGRES_INTEGER_MAX,
                description=column.description,
            ),
        ]
    return Annotated[StrictStr | None, Field(max_length=10_000, description=column.description)]


def row_model(table: Table) -> type[BaseModel]:
    fields = {column.name: (_field_type(column), ...) for column in table.columns}
    name = "".join(part.title() for part in table.name.split("_")) + "Row"
    return create_model(name, __config__=STRICT, **fields)


ROW_MODELS: dict[str, type[BaseModel]] = {table.name: row_model(table) for table in TABLES}


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description="Where in the request: body, index, field.")
    msg: str


class ErrorDetail(BaseModel):
    """Every error answer: a sentence, or (malformed requests) one entry per problem."""

    detail: str | list[ValidationIssue]


class RowFailure(BaseModel):
    index: int = Field(description="Position of the row in the request, from 0.")
    field: str
    rule: str


class Reason(BaseModel):
    field: str
    rule: str
    expectation: str | None = Field(
        None, description="The Great Expectations expectation that failed."
    )
    rows: int | None = Field(None, description="Rows breaking the rule (0: the batch as a whole).")


class BatchAnswer(BaseModel):
    batch_id: str
    status: Literal["promoted", "partially_promoted", "rejected", "waiting", "failed"] = Field(
        description="promoted or partially_promoted (201); rejected: a row rule failed, or "
        "waiting: a referenced department or job does not exist yet (200; under "
        "quarantine_rows the other rows of a waiting batch are promoted, see rows_promoted); "
        "failed: a transient database error outlasted the retries (503)"
    )
    rows: int
    rows_promoted: int
    rows_rejected: int
    failures: list[RowFailure] = []
    reasons: list[Reason] = []
    replayed: bool = Field(
        False,
        description="True when this is the answer to an earlier "
        "identical request, returned without writing again",
    )


class FailingRow(BaseModel):
    line: int = Field(description="Line of the row in its file (API batches: from 1).")
    values: dict[str, str | None] = Field(description="The row as sent, as text, by column.")
    failures: list[Reason]


class BatchRecord(BaseModel):
    """A batch's row in the ledger (audit.batches) with its failing rows."""

    batch_id: str
    run_id: str
    table_name: str
    source: str
    first_line: int
    last_line: int
    rows_read: int
    rows_promoted: int
    rows_rejected: int
    status: Literal["promoted", "partially_promoted", "rejected", "waiting", "failed"]
    reasons: list[Reason]
    attempts: int
    settled_at: datetime
    failing_rows: list[FailingRow]


class TopReason(BaseModel):
    reason: str
    rows: int


class RunSummary(BaseModel):
    """A run's summary, as written to its log folder: counts per table and in total."""

    status: str | None = None
    tables: list[TableSummary] = []
    totals: dict[str, int] = Field({}, description="The tables' counts added up.")
    top_reasons: list[TopReason] = []
    seconds: dict[str, float] = Field({}, description="Seconds each stage took.")
    marts: dict[str, int] = Field({}, description="Rows per mart after the run's build.")
    marts_status: str | None = None
    marts_failures: list[str] = []
    log_dir: str | None = None
    data_docs: str | None = None
    error: str | None = Field(None, description="Why a failed run failed.")


class RunRecord(BaseModel):
    """A run's row in audit.runs (one per file run or API request)."""

    run_id: str
    started_at: datetime
    finished_at: datetime | None
    input: str = Field(description="The input folder, or api:<table> for an API request.")
    batch_size: int
    policy: str
    status: str = Field(description="running, completed, failed or abandoned")
    host: str | None
    pid: int | None
    summary: RunSummary | None


class HiresByQuarterRow(BaseModel):
    department: str
    job: str
    Q1: int
    Q2: int
    Q3: int
    Q4: int


class DepartmentAboveMeanRow(BaseModel):
    id: int
    department: str
    hired: int


class Report(BaseModel):
    report: str
    year: int
    as_of: str | None = Field(description="When the marts were last rebuilt (ISO 8601, UTC).")
    columns: list[str]


class HiresByQuarter(Report):
    rows: list[HiresByQuarterRow]


class DepartmentsAboveMean(Report):
    rows: list[DepartmentAboveMeanRow]


class BackupMade(BaseModel):
    stamp: str = Field(description="The backup's name, for `from` in a restore.")
    tables: dict[str, int] = Field(description="Rows backed up per table.")


class RestoredTable(BaseModel):
    table: str
    rows: int
    deleted: int


class Restored(BaseModel):
    restored: list[RestoredTable]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, str] = Field(
        description="database, migrations, gate, marts: `ok`, or what is wrong"
    )


class RestoreRequest(BaseModel):
    model_config = STRICT
    from_stamp: str | None = Field(None, alias="from", description="backup stamp; newest if absent")
    with_dependents: bool = False


def errors(*codes: int) -> dict[int | str, dict]:
    """The `responses=` entries of a route for these error codes, each an ErrorDetail."""
    return {code: {"model": ErrorDetail, "description": ERRORS[code]} for code in codes}


ERRORS = {
    401: "no token, an unknown one, or a write or admin token in a URL",
    403: "the token's scope is too narrow",
    404: "no such table, batch or run",
    409: "the backup cannot be restored (see detail)",
    413: f"body over 2 MiB, or more than {MAX_BATCH_SIZE} rows",
    422: "the request is malformed: JSON shape, types, row count, CSV shape",
    429: "too many failed authentications from this address; see Retry-After",
    503: "the database is unreachable or all its connections are busy; see Retry-After",
    504: "no answer in time; a batch insert goes on (send it again to get its outcome)",
}
AUTH = (401, 403, 429)
