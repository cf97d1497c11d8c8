"""Everything derived from the data dictionary stays in step with it."""

from __future__ import annotations

import yaml

from loader.db.connect import libpq_environment
from loader.db.schema import core_table_ddl
from loader.tables import TABLES, table_named
from tests.conftest import REPO


def test_dbt_sources_declare_every_column_of_the_dictionary_in_order():
    sources = yaml.safe_load((REPO / "dbt_project/models/staging/_core__sources.yml").read_text())
    (core,) = sources["sources"]
    declared = {table["name"]: table for table in core["tables"]}
    assert list(declared) == [table.name for table in TABLES]
    for table in TABLES:
        columns = declared[table.name]["columns"]
        assert [c["name"] for c in columns] == table.column_names
        for column, spec in zip(table.columns, columns):
            tests = spec["data_tests"]
            assert "not_null" in tests, f"{table.name}.{column.name} is required"
            assert ("unique" in tests) == (column.name == table.primary_key)
            relations = [t["relationships"]["arguments"] for t in tests if isinstance(t, dict)]
            expected = (
                [{"to": f"source('core', '{column.references}')", "field": "id"}]
                if column.references
                else []
            )
            assert relations == expected


def test_core_ddl_has_typed_required_columns_and_keys():
    ddl = core_table_ddl(table_named("hired_employees"))
    assert '"datetime" timestamptz not null' in ddl
    assert 'primary key ("id")' in ddl
    assert 'foreign key ("department_id") references core."departments" (id)' in ddl


def test_libpq_environment_carries_the_whole_url():
    found = libpq_environment("postgresql://ann:p%40ss@db.example:6543/warehouse")
    assert found == {
        "PGHOST": "db.example",
        "PGPORT": "6543",
        "PGUSER": "ann",
        "PGPASSWORD": "p@ss",
        "PGDATABASE": "warehouse",
    }
