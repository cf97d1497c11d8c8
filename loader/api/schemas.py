"""Request and response models. Row models are derived from the data dictionary and strict:
`"1"`, `true`, `1.0` or an epoch number are not an id or a time, and unknown keys are refused.
A field may be null (it is then reported by the gate as missing, and audited) but not absent.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, create_model

from loader.tables import POSTGRES_INTEGER_MAX, TABLES, Column, Table

MAX_ROWS = 1000
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


class RowFailure(BaseModel):
    index: int = Field(description="Position of the row in the request, from 0.")
    field: str
    rule: str


class BatchAnswer(BaseModel):
    batch_id: str
    status: str = Field(description="promoted, partially_promoted or rejected")
    rows: int
    rows_promoted: int
    rows_rejected: int
    failures: list[RowFailure] = []
    reasons: list[dict] = []
    replayed: bool = Field(
        False,
        description="True when this is the answer to an earlier "
        "identical request, returned without writing again",
    )


class RestoreRequest(BaseModel):
    model_config = STRICT
    from_stamp: str | None = Field(None, alias="from", description="backup stamp; newest if absent")
    with_dependents: bool = False
