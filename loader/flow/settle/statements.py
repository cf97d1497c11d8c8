"""The SQL that settles one batch, composed once per table from the data dictionary: the upsert
raw → core, the copy of failing rows into `audit.rejected_rows`, and the casts they share.
"""

from __future__ import annotations

from functools import cache

from psycopg import sql

from loader.flow.model import BEYOND_MICROSECONDS
from loader.tables import Column, Table


def cast_field(column: Column, field: sql.Composable) -> sql.Composable:
    """A raw text field as its core type, the way promotion casts it: text as it is, a time
    with its fraction truncated to microseconds (`model.BEYOND_MICROSECONDS`) rather than
    rounded by PostgreSQL into the next second. Only a time with a fraction goes through the
    regular expression: on a million times without one it was 0.75 s of PostgreSQL's CPU
    (measured 2026-12-07), and there is nothing for it to cut."""
    if column.kind == "text":
        return field
    if column.kind == "timestamp":
        field = sql.SQL(
            "case when strpos({0}, '.') = 0 then {0} else regexp_replace({0}, {1}, {2}) end"
        ).format(field, sql.Literal(BEYOND_MICROSECONDS), sql.Literal(r"\1"))
    return sql.SQL("{}::{}").format(field, sql.SQL(column.postgres_type))


def _cast(table: Table, alias: str) -> list[sql.Composable]:
    return [cast_field(column, sql.Identifier(alias, column.name)) for column in table.columns]


def _batches(many: bool) -> sql.SQL:
    """Which raw rows a statement settles: one batch's, or (`many`) those of the batch ids in
    %(batch_ids)s; all of the raw copy %(raw_run_id)s."""
    which = "any(%(batch_ids)s)" if many else "%(batch_id)s"
    return sql.SQL(f"r._batch_id = {which} and r._run_id = %(raw_run_id)s")


@cache  # composed once per table: a run settles thousands of batches
def upsert_statement(table: Table, many: bool = False) -> sql.Composed:
    """Rows of one batch (or `many`) from raw into core, skipping the lines in %(failing)s;
    with %(only)s set, that one line alone."""
    columns = [sql.Identifier(column.name) for column in table.columns]
    updated = [column for column in table.columns if column.name != table.primary_key]
    return sql.SQL(
        """insert into {target} ({columns}, _batch_id, _promoted_at)
        select {casts}, r._batch_id, now() from {raw} as r
        where {batches}
          and r._line_number <> all(%(failing)s)
          and (%(only)s::bigint is null or r._line_number = %(only)s::bigint)
        on conflict ({key}) do update set {updates}, _batch_id = excluded._batch_id,
            _promoted_at = now()
        where ({current}) is distinct from ({incoming})"""
    ).format(
        target=sql.Identifier("core", table.name),
        batches=_batches(many),
        columns=sql.SQL(", ").join(columns),
        casts=sql.SQL(", ").join(_cast(table, "r")),
        raw=sql.Identifier("raw", table.name),
        key=sql.Identifier(table.primary_key),
        updates=sql.SQL(", ").join(
            sql.SQL("{0} = excluded.{0}").format(sql.Identifier(c.name)) for c in updated
        ),
        current=sql.SQL(", ").join(sql.Identifier(table.name, c.name) for c in updated),
        incoming=sql.SQL(", ").join(sql.Identifier("excluded", c.name) for c in updated),
    )


@cache  # composed once per table: a run settles thousands of batches
def raw_rows_statement(table: Table) -> sql.Composed:
    """One batch's raw lines with their field values, in file order."""
    return sql.SQL(
        "select _line_number, {columns} from {raw} "
        "where _batch_id = %(batch_id)s and _run_id = %(raw_run_id)s order by _line_number"
    ).format(
        columns=sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns),
        raw=sql.Identifier("raw", table.name),
    )


@cache  # composed once per table: a run settles thousands of batches
def rejected_rows_statement(table: Table) -> sql.Composed:
    """Copy the failing lines of one batch from raw into audit.rejected_rows, returning them."""
    values = sql.SQL(", ").join(
        sql.SQL("{}, r.{}").format(sql.Literal(column.name), sql.Identifier(column.name))
        for column in table.columns
    )
    return sql.SQL(
        """insert into audit.rejected_rows
            (batch_id, run_id, table_name, source, line_number, raw_values, failures)
        select r._batch_id, r._run_id, {table_name}, r._source_file, r._line_number,
            jsonb_build_object({values}) || jsonb_strip_nulls(
                jsonb_build_object('_decode_error', r._decode_error)),
            %(failures)s::jsonb -> r._line_number::text
        from {raw} as r
        where r._batch_id = %(batch_id)s and r._run_id = %(raw_run_id)s
          and r._line_number = any(%(failing)s)
        order by r._line_number
        returning line_number, raw_values, failures"""
    ).format(
        table_name=sql.Literal(table.name), values=values, raw=sql.Identifier("raw", table.name)
    )


@cache  # composed once per table: a run settles thousands of batches
def parents_locked_statement(table: Table, many: bool = False) -> sql.Composed | None:
    """Whether every parent the batch's promoted rows point at exists, each one locked
    FOR KEY SHARE as PostgreSQL's own foreign-key check locks it (so that no one can delete it
    until the batch commits); one set-based statement for the batch instead of a trigger per
    row and key. None for a table without foreign keys. Same parameters as `upsert_statement`."""
    if not table.foreign_keys:
        return None
    ctes, checks = [], []
    for column in table.foreign_keys:
        wanted = sql.Identifier(f"wanted_{column.name}")
        locked = sql.Identifier(f"locked_{column.name}")
        ctes.append(
            sql.SQL(
                """{wanted} as (
                select distinct {cast} as id from {raw} as r
                where {batches}
                  and r._line_number <> all(%(failing)s)
                  and (%(only)s::bigint is null or r._line_number = %(only)s::bigint)
            ), {locked} as (
                select p.id from {parent} as p where p.id in (select id from {wanted})
                for key share of p
            )"""
            ).format(
                wanted=wanted,
                locked=locked,
                batches=_batches(many),
                cast=cast_field(column, sql.Identifier("r", column.name)),
                raw=sql.Identifier("raw", table.name),
                parent=sql.Identifier("core", column.references),
            )
        )
        checks.append(
            sql.SQL("(select count(*) from {}) = (select count(*) from {})").format(wanted, locked)
        )
    return sql.SQL("with {} select {}").format(
        sql.SQL(", ").join(ctes), sql.SQL(" and ").join(checks)
    )
