"""Avro schemas derived from the data dictionary, the ledger's declared once in backup/ledger.py,
and the schedule's cron trigger."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta, timezone

import fastavro
import pytest

from backup.avro import avro_schema, schema_shape
from backup.ledger import BATCHES, LEDGER, RUNS
from backup.schedule import trigger
from loader.tables import HIRED_EMPLOYEES, TABLES


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_every_dictionary_column_is_in_the_avro_schema_in_order(table):
    fields = [field["name"] for field in avro_schema(table)["fields"]]
    assert fields[: len(table.columns)] == table.column_names
    assert fields[len(table.columns) :] == ["_batch_id", "_promoted_at"]


def test_hire_time_is_timestamp_micros_and_round_trips_as_the_same_instant():
    schema = fastavro.parse_schema(avro_schema(HIRED_EMPLOYEES))
    lima = timezone(timedelta(hours=-5))
    record = {
        "id": 1,
        "name": "Ana",
        "datetime": datetime(2021, 3, 31, 22, 0, tzinfo=lima),
        "department_id": 1,
        "job_id": 1,
        "_batch_id": "b",
        "_promoted_at": datetime(2021, 4, 1, tzinfo=UTC),
    }
    buffer = io.BytesIO()
    fastavro.writer(buffer, schema, [record], validator=True, strict=True)
    buffer.seek(0)
    (back,) = list(fastavro.reader(buffer))
    assert back["datetime"] == datetime(2021, 4, 1, 3, 0, tzinfo=UTC)


def test_the_writer_refuses_out_of_range_ints_and_unknown_keys():
    schema = fastavro.parse_schema(avro_schema(HIRED_EMPLOYEES))
    good = {
        "id": 1,
        "name": "Ana",
        "datetime": datetime(2021, 1, 1, tzinfo=UTC),
        "department_id": 1,
        "job_id": 1,
        "_batch_id": "b",
        "_promoted_at": datetime(2021, 1, 1, tzinfo=UTC),
    }
    for bad in ({**good, "id": 2**31}, {**good, "extra": 1}):
        with pytest.raises((ValueError, fastavro.validation.ValidationError)):
            fastavro.writer(io.BytesIO(), schema, [bad], validator=True, strict=True)


def test_schema_shape_ignores_docs_but_not_types():
    schema = avro_schema(HIRED_EMPLOYEES)
    undocumented = {**schema, "doc": "", "fields": [{**f, "doc": ""} for f in schema["fields"]]}
    assert schema_shape(undocumented) == schema_shape(schema)
    retyped = {
        **schema,
        "fields": [{**f, "type": "long"} if f["name"] == "id" else f for f in schema["fields"]],
    }
    assert schema_shape(retyped) != schema_shape(schema)


def round_trip(schema: dict, records: list[dict]) -> list[dict]:
    buffer = io.BytesIO()
    fastavro.writer(buffer, fastavro.parse_schema(schema), records, validator=True, strict=True)
    buffer.seek(0)
    return list(fastavro.reader(buffer))


@pytest.mark.parametrize("audit", LEDGER, ids=lambda a: a.name)
def test_each_ledger_file_has_a_record_schema_in_the_audit_namespace(audit):
    schema = audit.schema
    assert schema_shape(schema)[0] == f"csv_migrate.audit.{audit.name}"
    assert [f["name"] for f in schema["fields"]] == audit.names
    assert audit.file_name == f"audit.{audit.name}.avro"


def test_a_run_round_trips_with_its_nulls_and_its_summary_as_json_text():
    run = {
        "run_id": "r1",
        "started_at": datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC),
        "finished_at": None,
        "input": "data/",
        "batch_size": 1000,
        "policy": "reject_batch",
        "status": "running",
        "summary": '{"tables": [], "total": {"rows": 3}}',
        "host": None,
        "pid": None,
        "abandoned_noticed_at": None,
    }
    assert round_trip(RUNS.schema, [run]) == [run]


def test_a_batch_without_a_required_value_is_refused():
    batch = {field.name: None for field in BATCHES.fields}
    with pytest.raises((ValueError, fastavro.validation.ValidationError)):
        round_trip(BATCHES.schema, [batch])


def test_default_schedule_fires_at_utc_midnight():
    fire = trigger("0 0 * * *").get_next_fire_time(None, datetime(2026, 5, 1, 15, 30, tzinfo=UTC))
    assert fire == datetime(2026, 5, 2, 0, 0, tzinfo=UTC)
    with pytest.raises(ValueError):
        trigger("every night")
