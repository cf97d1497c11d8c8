"""The data dictionary: the one definition of the three source tables.

Everything else (raw and core DDL, dlt hints, the GX suites, the Avro schemas, the API's
request models, dbt's sources) is derived from these objects or tested against them, so a
column is added or renamed here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

POSTGRES_INTEGER_MAX = 2_147_483_647

# Lineage columns every raw row carries next to its fields.
SOURCE_FILE = "_source_file"
LINE_NUMBER = "_line_number"
BATCH_ID = "_batch_id"
RUN_ID = "_run_id"
DECODE_ERROR = "_decode_error"
LINEAGE = (SOURCE_FILE, LINE_NUMBER, BATCH_ID, RUN_ID, DECODE_ERROR)


@dataclass(frozen=True)
class Column:
    """One CSV field and the typed column it becomes in `core`."""

    name: str
    kind: str  # "integer", "text" or "timestamp"
    description: str
    references: str | None = None  # name of the table whose `id` this column points at

    @property
    def postgres_type(self) -> str:
        return {"integer": "integer", "text": "text", "timestamp": "timestamptz"}[self.kind]


@dataclass(frozen=True)
class Table:
    """A source table: its columns in CSV order, its key and the file it arrives in."""

    name: str
    description: str
    columns: tuple[Column, ...]
    primary_key: str = "id"

    @property
    def file_name(self) -> str:
        return f"{self.name}.csv"

    @property
    def column_names(self) -> list[str]:
        return [column.name for column in self.columns]

    @property
    def foreign_keys(self) -> list[Column]:
        return [column for column in self.columns if column.references]

    def column(self, name: str) -> Column:
        return next(column for column in self.columns if column.name == name)


DEPARTMENTS = Table(
    name="departments",
    description="Departments of the company.",
    columns=(
        Column("id", "integer", "Department id, positive and unique."),
        Column("department", "text", "Department name."),
    ),
)

JOBS = Table(
    name="jobs",
    description="Job titles.",
    columns=(
        Column("id", "integer", "Job id, positive and unique."),
        Column("job", "text", "Job title."),
    ),
)

HIRED_EMPLOYEES = Table(
    name="hired_employees",
    description="Employees with their hire time, department and job.",
    columns=(
        Column("id", "integer", "Employee id, positive and unique."),
        Column("name", "text", "Employee name."),
        Column("datetime", "timestamp", "Hire time, an ISO-8601 instant, stored in UTC."),
        Column("department_id", "integer", "Department of the hire.", references="departments"),
        Column("job_id", "integer", "Job of the hire.", references="jobs"),
    ),
)

# Columns every core table carries after its fields: which batch last wrote the row, and when.
CORE_LINEAGE: tuple[Column, ...] = (
    Column("_batch_id", "text", "Batch that last wrote the row (audit.batches)."),
    Column("_promoted_at", "timestamp", "When that batch was promoted."),
)

# Load order: a table comes after every table it references.
TABLES: tuple[Table, ...] = (DEPARTMENTS, JOBS, HIRED_EMPLOYEES)
TABLES_BY_NAME: dict[str, Table] = {table.name: table for table in TABLES}


def dependents_of(table: Table) -> list[Table]:
    """Tables with a foreign key to `table`."""
    return [
        other for other in TABLES if any(c.references == table.name for c in other.foreign_keys)
    ]


def table_named(name: str) -> Table:
    """Return the table called `name`, or raise KeyError naming the known ones."""
    try:
        return TABLES_BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES_BY_NAME)}") from None
