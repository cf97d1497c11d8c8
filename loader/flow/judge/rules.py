"""The validation rules of each table as Great Expectations expectations, derived from the data
dictionary, and the frame they run on.

GX's vectorised expectations do the judging. Two facts need a helper column first, because no
built-in expectation computes them: the integer value of a digit string (for the range and
foreign-key rules) and the UTC instant of a time string (for "a real instant"). Helpers are
named `<field>__<what>` and every expectation carries `meta.field` and `meta.rule`, so a
failure is reported against the field the user wrote, in words.

A value these rules accept is one PostgreSQL accepts at promotion, with the same value
(tests/integration/test_rules_agree_with_postgres.py checks it against the server). Where the
rules are stricter than PostgreSQL, they are so on purpose, as README says.
"""

from __future__ import annotations

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from great_expectations.expectations.row_conditions import Column as RowColumn

from loader.flow.judge.gate import JUDGED_LINEAGE
from loader.flow.model import BEYOND_MICROSECONDS, reference_rule
from loader.settings import MAX_BATCH_SIZE
from loader.tables import BATCH_ID, DECODE_ERROR, POSTGRES_INTEGER_MAX, Table

ASCII_DIGITS = r"^[0-9]+$"
# An ISO-8601 instant: calendar date, 'T', time with seconds, an optional fraction of up to nine
# digits, and a zone: Z or an offset ±hh:mm, ±hhmm or ±hh within ±15:59, the largest
# displacement PostgreSQL accepts (+16:00 fails its cast). A time without a zone is refused:
# the source promises UTC, and guessing would move hires between quarters when the guess is
# wrong. Whether the day and time exist is the helper's question (`_as_utc`), not the regex's.
ISO_INSTANT = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?:Z|[+-](?:0[0-9]|1[0-5])(?::?[0-5][0-9])?)$"
)
BATCH_ROWS = "_batch_rows"
# GX's work for a failing row grows with the rows failing at once (each expectation copies the
# failing rows of the frame and lists their values): judged in one pass, 100,000-row chunks
# whose rows nearly all failed took the gate process from 270 to 416 MB (10M rows, 2026-12-07).
# A chunk with more rows that look broken than this is judged in passes (each pass costs GX's
# fixed ~0.15-0.48 s).
MOST_FAILING_ROWS = 10_000


def integer_helper(column: str) -> str:
    return f"{column}__as_integer"


def instant_helper(column: str) -> str:
    return f"{column}__as_utc"


def shape_helper(column: str) -> str:
    return f"{column}__is_iso_8601"


def known_ids_parameter(table_name: str) -> str:
    return f"known_{table_name}_ids"


def _meta(field: str, rule: str) -> dict:
    return {"field": field, "rule": rule}


def expectations_for(table: Table) -> list[gxe.Expectation]:
    """Every rule of `table`, in the order a reader would check them."""
    rules: list[gxe.Expectation] = [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=1, meta=_meta("*", "a batch has at least one row")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column=BATCH_ROWS,
            min_value=1,
            max_value=MAX_BATCH_SIZE,
            meta=_meta("*", f"a batch has 1 to {MAX_BATCH_SIZE} rows"),
        ),
        gxe.ExpectColumnValuesToBeNull(
            column=DECODE_ERROR, meta=_meta("*", "the line is UTF-8 text without NUL bytes")
        ),
    ]
    for column in table.columns:
        rules.append(
            gxe.ExpectColumnValuesToNotBeNull(
                column=column.name, meta=_meta(column.name, "required: present and non-empty")
            )
        )
        if column.kind == "integer":
            rules += [
                gxe.ExpectColumnValuesToMatchRegex(
                    column=column.name,
                    regex=ASCII_DIGITS,
                    meta=_meta(column.name, "an integer written in plain ASCII digits"),
                ),
                gxe.ExpectColumnValuesToBeBetween(
                    column=integer_helper(column.name),
                    min_value=1,
                    max_value=POSTGRES_INTEGER_MAX,
                    meta=_meta(column.name, f"between 1 and {POSTGRES_INTEGER_MAX}"),
                ),
            ]
        if column.kind == "timestamp":
            rules += [
                gxe.ExpectColumnValuesToMatchRegex(
                    column=column.name,
                    regex=ISO_INSTANT,
                    meta=_meta(
                        column.name,
                        "ISO-8601 date and time with a zone (Z, or an offset ±hh:mm up to ±15:59)",
                    ),
                ),
                gxe.ExpectColumnValuesToNotBeNull(
                    column=instant_helper(column.name),
                    # GX builds its row condition from this comparison: `== True` is its API.
                    row_condition=RowColumn(shape_helper(column.name)) == True,  # noqa: E712
                    meta=_meta(column.name, "a real instant (the day and time exist)"),
                ),
            ]
        if column.references:
            rules.append(
                gxe.ExpectColumnValuesToBeInSet(
                    column=integer_helper(column.name),
                    value_set={"$PARAMETER": known_ids_parameter(column.references)},
                    meta=_meta(column.name, reference_rule(column.references)),
                )
            )
    rules.append(
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=[BATCH_ID, integer_helper(table.primary_key)],
            ignore_row_if="any_value_is_missing",
            meta=_meta(table.primary_key, f"{table.primary_key} unique within the batch"),
        )
    )
    return rules


def suite_for(table: Table) -> gx.ExpectationSuite:
    return gx.ExpectationSuite(
        name=table.name,
        expectations=expectations_for(table),
        meta={"notes": f"Derived from loader/tables.py ({table.name}); regenerate, do not edit."},
    )


def _as_integer(values: pa.ChunkedArray) -> np.ndarray:
    """Digit strings as numbers; anything else NaN (its own rule reports it). Arrow compute,
    not pandas string methods: three columns a chunk, pandas' `to_numeric` was most of the
    frame's cost."""
    digits = pc.fill_null(pc.match_substring_regex(values, ASCII_DIGITS), False)
    kept = pc.if_else(digits, pc.utf8_ltrim(values, "0"), pa.scalar(None, pa.string()))
    kept = pc.if_else(pc.equal(kept, ""), "0", kept)
    # More than 10 significant digits is out of PostgreSQL's integer range whatever they are.
    kept = pc.if_else(pc.greater(pc.utf8_length(kept), 10), str(POSTGRES_INTEGER_MAX + 1), kept)
    # float64, not Int64: GX compares native numpy columns vectorised but maps a Python function
    # over extension dtypes (0.4 s per 100,000 rows for three columns, measured). Every value
    # here is below 2**53, so it is exact.
    return pc.cast(kept, pa.int64()).to_numpy(zero_copy_only=False).astype("float64")


def _as_utc(values: pd.Series) -> pd.Series:
    """ISO_INSTANT strings as the UTC instant promotion stores (fraction truncated to
    microseconds); NaT where the day or time does not exist.

    A leap second (:60) and 24:00:00 are NaT too, although PostgreSQL takes them: it moves them
    into the next minute or day, which is not the instant written.
    """
    # Truncating first also keeps pandas in microseconds: one nanosecond value would turn the
    # whole column to nanoseconds, every year outside 1677-2262 NaT, and a row's verdict would
    # depend on its neighbours in the chunk.
    truncated = values.str.replace(BEYOND_MICROSECONDS, r"\1", regex=True)
    instants = pd.to_datetime(truncated, format="ISO8601", utc=True, errors="coerce")
    instants = instants.dt.as_unit("us")
    # pandas reads year 0000 as 1 BC; PostgreSQL's ISO input has no year zero.
    return instants.mask(values.str.startswith("0000").fillna(False).astype(bool))


def _batch_rows(batch_ids: pa.ChunkedArray) -> np.ndarray:
    """Each row's number of rows with its batch id in the chunk."""
    codes = pc.dictionary_encode(batch_ids.combine_chunks()).indices.to_numpy()
    return np.bincount(codes)[codes] if len(codes) else np.zeros(0, dtype=np.int64)


def validation_frame(table: Table, chunk: pa.Table) -> pd.DataFrame:
    """The frame GX validates: the raw chunk (fields as text, lineage) plus helper columns."""
    chunk = chunk.select([*table.column_names, *JUDGED_LINEAGE])
    # Lineage comes dictionary-encoded (`csv_reader.to_arrow`): as text, not pandas categories,
    # so that GX compares and reports the values themselves.
    for index, column in enumerate(chunk.schema):
        if pa.types.is_dictionary(column.type):
            chunk = chunk.set_column(index, column.name, pc.cast(chunk[index], pa.string()))
    frame = chunk.to_pandas()
    frame[BATCH_ROWS] = _batch_rows(chunk[BATCH_ID])
    for column in table.columns:
        if column.kind == "integer":
            frame[integer_helper(column.name)] = _as_integer(chunk[column.name])
        if column.kind == "timestamp":
            shaped = frame[column.name].str.fullmatch(ISO_INSTANT[1:-1]).fillna(False).astype(bool)
            frame[shape_helper(column.name)] = shaped
            frame[instant_helper(column.name)] = _as_utc(frame[column.name].where(shaped))
    return frame


def likely_failing(table: Table, frame: pd.DataFrame) -> np.ndarray:
    """The rows the cheapest rules will fail: a field missing, bytes that did not decode, an
    integer field that is no integer, a time that is no instant. An estimate that only sizes the
    gate's passes (`passes`); GX's checkpoint gives the verdicts."""
    broken = frame[DECODE_ERROR].notna().to_numpy().copy()
    for column in table.columns:
        broken |= frame[column.name].isna().to_numpy()
        if column.kind == "integer":
            broken |= np.isnan(frame[integer_helper(column.name)].to_numpy())
        if column.kind == "timestamp":
            broken |= frame[instant_helper(column.name)].isna().to_numpy()
    return broken


def passes(frame: pd.DataFrame, broken: np.ndarray, most: int) -> list[tuple[int, int]]:
    """Row ranges of whole batches, in order, covering the frame: one, unless more than `most`
    rows are `broken`; then each holds at most `most` of them (or one batch that alone holds
    more). One range too where a batch's rows are not together: a batch is judged whole."""
    if broken.sum() <= most:  # nearly every chunk: no batch boundaries to look for
        return [(0, len(frame))]
    starts = np.flatnonzero(frame[BATCH_ID].ne(frame[BATCH_ID].shift()).to_numpy())
    if len(starts) != frame[BATCH_ID].nunique():
        return [(0, len(frame))]
    counted = np.concatenate([[0], np.cumsum(broken)])
    ranges, first = [], 0
    for start, end in zip(starts, [*starts[1:], len(frame)], strict=True):
        if start > first and counted[end] - counted[first] > most:
            ranges.append((first, int(start)))
            first = int(start)
    ranges.append((first, len(frame)))
    return ranges
