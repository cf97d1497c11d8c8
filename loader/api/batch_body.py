"""A batch request's body as one `RawBatch`, laid out as the CSV reader lays out a file's rows:
a JSON array of row objects (strict models) or header-less CSV. Malformed bodies are 422, too
many rows 413, before anything is written."""

from __future__ import annotations

import io

from fastapi import HTTPException
from pydantic import TypeAdapter, ValidationError

from loader.api.schemas import ROW_MODELS
from loader.flow.errors import InputError
from loader.flow.model import RawBatch
from loader.flow.source.csv_reader import batch_id, read_stream
from loader.flow.source.lines import escape_text
from loader.settings import MAX_BATCH_SIZE
from loader.tables import Table

# The request body in OpenAPI: the route reads the body itself, as JSON or as CSV.
ROWS_SCHEMA = {
    "oneOf": [
        {
            "title": f"{name} rows",
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_BATCH_SIZE,
            "items": model.model_json_schema(),
        }
        for name, model in ROW_MODELS.items()
    ]
}


def parse_batch(table: Table, body: bytes, as_csv: bool, policy: str) -> RawBatch:
    """The request's rows as one batch with its deterministic id; 413 or 422 if malformed."""
    source = f"api:POST /tables/{table.name}/batches"
    parse = batch_from_csv if as_csv else batch_from_json
    batch = parse(table, body, source)
    batch.batch_id = api_batch_id(table, policy, body)
    return batch


def api_batch_id(table: Table, policy: str, body: bytes) -> str:
    """The same rows sent again under the same policy are the same batch (a retry)."""
    return batch_id(f"api:{table.name}:{policy}", 1, body)


def batch_from_json(table: Table, body: bytes, source: str) -> RawBatch:
    """Validate the JSON shape strictly, then lay the rows out as the CSV reader does."""
    try:
        rows = TypeAdapter(list[ROW_MODELS[table.name]]).validate_json(body)
    except ValidationError as error:
        raise HTTPException(
            422,
            [
                {"loc": e["loc"], "msg": e["msg"]}
                for e in error.errors(include_url=False, include_context=False, include_input=False)
            ],
        ) from None
    check_row_count(len(rows))
    values: list[list[str | None]] = [[] for _ in table.columns]
    problems: list[str | None] = []
    for row in rows:
        found = None
        for column, column_values in zip(table.columns, values, strict=True):
            text, problem = _text(getattr(row, column.name))
            column_values.append(text)
            found = found or problem
        problems.append(found)
    return RawBatch.from_lists(
        table, source, 1, "", list(range(1, len(rows) + 1)), values, problems
    )


def batch_from_csv(table: Table, body: bytes, source: str) -> RawBatch:
    try:
        batches = list(read_stream(io.BytesIO(body), source, table, MAX_BATCH_SIZE + 1))
    except InputError as error:
        raise HTTPException(422, str(error)) from None
    check_row_count(sum(batch.rows for batch in batches))
    (batch,) = batches
    return batch


def _text(value) -> tuple[str | None, str | None]:
    """A field as the CSV reader would give it: trimmed, empty as None, NUL and lone
    surrogates escaped and named (the gate then rejects the row, which raw keeps)."""
    if value is None:
        return None, None
    text, problem = escape_text(str(value).strip())
    return text or None, problem


def check_row_count(rows: int) -> None:
    if rows == 0:
        raise HTTPException(422, f"a batch needs 1 to {MAX_BATCH_SIZE} rows; this one has none")
    if rows > MAX_BATCH_SIZE:
        raise HTTPException(
            413, f"a batch holds at most {MAX_BATCH_SIZE} rows; this one has {rows}"
        )
