"""Datasets named by OpenLineage's naming spec (https://openlineage.io/docs/spec/naming), so
that other producers' events (dbt's own integration, Airflow, Marquez) join ours.

A local file or folder is namespace `file` and its absolute path; an object is the bucket's
URL (`s3://bucket`, `gs://bucket`, `az://container`) and its key; a table is the server
(`postgres://host:port`) and `database.schema.table`. An API run's request bodies, which no
spec names, are namespace `<job namespace>` and `api.<table>`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from openlineage.client.event_v2 import InputDataset, OutputDataset
from openlineage.client.facet_v2 import schema_dataset

from loader.tables import CORE_LINEAGE, LINE_NUMBER, LINEAGE, TABLES, Table

FILE = "file"
API = "api:"  # how Started.inputs names an API run's request bodies
# The ledger a load writes: every run, batch and held-back row, and (file runs) every file.
LOAD_LEDGER = ("runs", "batches", "rejected_rows")
# What a backup holds beside core, and what a restore rewrites beside core.
BACKUP_LEDGER = ("runs", "batches", "rejected_rows")
RESTORE_LEDGER = ("runs", "batches", "rejected_rows", "files")
# fsspec's aliases for the same store, named as the spec names them.
SCHEMES = {"s3a": "s3", "s3n": "s3", "gcs": "gs", "abfs": "az", "abfss": "az", "adl": "az"}
RAW_TYPES = {LINE_NUMBER: "bigint"}  # every other raw column is text


@dataclass(frozen=True)
class Database:
    """The server and database the loader's tables are in."""

    namespace: str  # postgres://host:port
    name: str

    @classmethod
    def of(cls, url: str) -> Database:
        """The database a libpq URL or key=value string names (a socket path: localhost)."""
        import psycopg

        info = psycopg.conninfo.conninfo_to_dict(url)
        host = str(info.get("host") or "localhost").split(",")[0]
        port = str(info.get("port") or "5432").split(",")[0]
        if host.startswith("/"):
            host = "localhost"
        name = str(info.get("dbname") or info.get("user") or os.environ.get("USER", "postgres"))
        return cls(f"postgres://{host}:{port}", name)

    def table(self, schema: str, table: str) -> tuple[str, str]:
        return self.namespace, f"{self.name}.{schema}.{table}"


def located(where: str) -> tuple[str, str]:
    """The (namespace, name) of a file, folder or object, as shown (user info hidden)."""
    parts = urlsplit(where)
    if len(parts.scheme) < 2:  # a path (a Windows drive letter is one character)
        return FILE, os.path.abspath(where)
    if parts.scheme == "file":
        return FILE, os.path.abspath(unquote(parts.path))
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{SCHEMES.get(parts.scheme, parts.scheme)}://{host}", parts.path.strip("/")


def export_input(where: str, namespace: str, table: Table | None, facets: dict | None = None):
    """An export (file, object, or an API run's bodies) read as input, with its schema."""
    if where.startswith(API):
        space, name = namespace, "api." + where.removeprefix(API)
    else:
        space, name = located(where)
    dataset_facets = {"schema": export_schema(table)} if table is not None else {}
    return InputDataset(namespace=space, name=name, facets=dataset_facets, inputFacets=facets or {})


def table_output(database: Database, schema: str, table: str, facets: dict | None = None):
    namespace, name = database.table(schema, table)
    dataset_facets = _table_facets(schema, table)
    return OutputDataset(
        namespace=namespace, name=name, facets=dataset_facets, outputFacets=facets or {}
    )


def table_input(database: Database, schema: str, table: str):
    namespace, name = database.table(schema, table)
    return InputDataset(namespace=namespace, name=name, facets=_table_facets(schema, table))


def location_input(where: str):
    namespace, name = located(where)
    return InputDataset(namespace=namespace, name=name)


def location_output(where: str, facets: dict | None = None):
    namespace, name = located(where)
    return OutputDataset(namespace=namespace, name=name, outputFacets=facets or {})


def export_schema(table: Table) -> schema_dataset.SchemaDatasetFacet:
    """An export's fields, as the data dictionary declares them."""
    return _schema([(column.name, column.kind, column.description) for column in table.columns])


def raw_schema(table: Table) -> schema_dataset.SchemaDatasetFacet:
    """A raw table: every field as text, then the lineage columns."""
    fields = [(column.name, "text", column.description) for column in table.columns]
    lineage = [(name, RAW_TYPES.get(name, "text"), None) for name in LINEAGE]
    return _schema(fields + lineage)


def core_schema(table: Table) -> schema_dataset.SchemaDatasetFacet:
    """A core table: the dictionary's typed columns, then which batch wrote the row, and when."""
    return _schema(
        [(c.name, c.postgres_type, c.description) for c in (*table.columns, *CORE_LINEAGE)]
    )


def _schema(fields: list[tuple[str, str, str | None]]) -> schema_dataset.SchemaDatasetFacet:
    return schema_dataset.SchemaDatasetFacet(
        fields=[
            schema_dataset.SchemaDatasetFacetFields(name=name, type=kind, description=description)
            for name, kind, description in fields
        ]
    )


def _table_facets(schema: str, name: str) -> dict:
    table = next((table for table in TABLES if table.name == name), None)
    if table is None:
        return {}
    if schema == "raw":
        return {"schema": raw_schema(table)}
    if schema == "core":
        return {"schema": core_schema(table)}
    return {}
