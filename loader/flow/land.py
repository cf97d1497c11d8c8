"""Landing: every input row, as text with its lineage, in `raw.<table>` through dlt, but for
batches whose rows are whole in raw already.

Each table's Arrow chunks are written once as the CSV file dlt's Postgres loader COPYs (a
header, nulls as empty fields: what its own Arrow-to-CSV writer writes) and handed to dlt with
`dlt.mark.with_file_import`: dlt puts the file in its load package as it is and loads it, and
skips extracting the Arrow into files of its own and normalizing those into CSV (two passes
over every row, most of dlt's time here). dlt owns the raw schema (from the resource's column
hints), its state tables and its load packages; nothing here writes DDL for `raw` but the index
by batch that settling and finding copies read.

A batch whose rows an earlier attempt left whole in raw (a run that was killed, or one that left
it waiting or failed) is not landed again: its copy is settled instead (`raw_copies`,
`without_copies`), so raw holds each input row once per run that landed it.
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import suppress
from pathlib import Path
from urllib.parse import quote, urlencode

import dlt
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from psycopg import sql

from loader.db.connect import connect
from loader.db.locks import schema_lock
from loader.tables import BATCH_ID, LINE_NUMBER, LINEAGE, Table

PIPELINE_NAME = "loader"
DATASET = "raw"
SOURCE = "csv_exports"


def configure_dlt() -> None:
    """dlt's process-wide settings for landing; set by every `RawLoader` before it runs."""
    dlt.config["normalize.data_writer.disable_compression"] = True
    # Resources are extracted one after another, in load order.
    dlt.config["extract.next_item_mode"] = "fifo"
    # dlt logs every retried load job with its traceback at ERROR: with the database gone that
    # is pages on stderr. What fails for good reaches the loader as an exception, reported in
    # one line. dlt set its logger up when it was imported, so the setting alone would only
    # apply to a later re-initialisation: set the logger's level too.
    dlt.config["runtime.log_level"] = "CRITICAL"
    logging.getLogger("dlt").setLevel(logging.CRITICAL)


def dlt_credentials(url: str) -> str:
    """A URL dlt accepts for any connection string libpq accepts.

    dlt wants a user, a password and a host in the URL's authority; libpq also takes a socket
    folder (`postgresql://user@/db?host=/var/run/postgresql`), key=value strings, defaults from
    PG* variables and ~/.pgpass. So ask libpq what it actually used, and put the real host in
    the query, where libpq lets it win over the `localhost` placeholder dlt needs; a server that
    trusts the connection ignores the placeholder password.
    """
    given = psycopg.conninfo.conninfo_to_dict(url)
    with connect(url) as conn:
        info = conn.info
        user, password, dbname = info.user, info.password or "unused", info.dbname
        host, port = info.host, info.port
    identity = ("user", "password", "dbname", "host", "port", "hostaddr")
    parameters = {key: value for key, value in given.items() if key not in identity}
    query = urlencode({**parameters, "host": host})
    user, password, dbname = (quote(part, safe="") for part in (user, password, dbname))
    return f"postgresql://{user}:{password}@localhost:{port}/{dbname}?{query}"


def raw_resource(table: Table, chunks: Iterable[pa.Table], folder: Path):
    """A dlt resource appending Arrow chunks to `raw.<table>`, every column declared as text:
    the chunks written as one CSV file in `folder`, imported into dlt's load package."""
    hints = {name: {"data_type": "text"} for name in [*table.column_names, *LINEAGE]}
    hints[LINE_NUMBER] = {"data_type": "bigint"}

    def rows() -> Iterator:
        path, count, writer = folder / f"{table.name}.csv", 0, None
        try:
            for chunk in chunks:
                writer = writer or pa_csv.CSVWriter(str(path), chunk.schema)
                writer.write_table(chunk)
                count += chunk.num_rows
        finally:
            if writer is not None:
                writer.close()
        if count:
            yield dlt.mark.with_file_import(str(path), "csv", count)

    return dlt.resource(rows, name=table.name, write_disposition="append", columns=hints)


def with_fixed_capabilities(destination):
    """`destination` answering dlt's requests for its capabilities from the first answer.

    dlt asks about fifteen times a load, and each time resolves the destination's whole
    configuration from every config provider: 30% of a 1000-row land (0.13 s to 0.09 s,
    measured). Asked without a configuration, the answer depends only on how the destination
    was made and on the naming convention's kind, which do not change for a loader's life;
    asked with one, dlt works it out as before. Each caller gets its own copy."""
    ask = destination.capabilities
    known: dict[tuple, object] = {}

    def capabilities(config=None, naming=None):
        if config is not None:
            return ask(config, naming)
        kind = (type(naming), getattr(naming, "max_length", None))
        if kind not in known:
            known[kind] = ask(None, naming)
        return copy.copy(known[kind])

    destination.capabilities = capabilities
    return destination


class RawLoader:
    """Loads the Arrow chunks of all tables into raw in one dlt run (one load package)."""

    def __init__(self, url: str, pipelines_dir: Path):
        configure_dlt()
        self.url = url
        self.pipelines_dir = pipelines_dir
        pipelines_dir.mkdir(parents=True, exist_ok=True)
        self.pipeline = dlt.pipeline(
            pipeline_name=PIPELINE_NAME,
            pipelines_dir=str(pipelines_dir),
            destination=with_fixed_capabilities(
                dlt.destinations.postgres(credentials=dlt_credentials(url))
            ),
            dataset_name=DATASET,
        )
        self.discard()

    def load(self, chunks_by_table: dict[Table, Iterable[pa.Table]]) -> None:
        """Extract every table (all reading happens here), then normalize and load.

        An exception while extracting leaves nothing in the database; whatever fails, the
        packages not loaded are dropped and the failure itself is raised.
        """
        try:
            self._run(chunks_by_table)
        except BaseException:
            with suppress(Exception):  # the database may be gone: the failure says so
                self.discard()
            raise

    def _run(self, chunks_by_table: dict[Table, Iterable[pa.Table]]) -> None:
        with tempfile.TemporaryDirectory(dir=self.pipelines_dir, prefix="csv-") as folder:

            @dlt.source(name=SOURCE)
            def csv_exports():
                return [
                    raw_resource(table, chunks, Path(folder))
                    for table, chunks in chunks_by_table.items()
                ]

            if self._tables_exist(chunks_by_table):
                self.pipeline.run(csv_exports(), loader_file_format="csv")
                return
            # The first load creates raw's tables: two pipelines (a run and the API, or two
            # workers) doing it at once would collide on the DDL.
            with connect(self.url, autocommit=True) as conn, schema_lock(conn):
                self.pipeline.run(csv_exports(), loader_file_format="csv")

    def _tables_exist(self, tables: Iterable[Table]) -> bool:
        with connect(self.url) as conn:
            return all(
                conn.execute("select to_regclass(%s)", (f"{DATASET}.{t.name}",)).fetchone()[0]
                for t in tables
            )

    def discard(self) -> None:
        """Drop extracted packages that will not be loaded (bad input, or a crashed run)."""
        self.pipeline.abort_packages()


def ensure_raw_index(conn: psycopg.Connection, table: Table) -> bool:
    """Index raw by batch, so that settling or finding one batch reads only its own rows;
    False while dlt has not created the raw table yet."""
    if conn.execute("select to_regclass(%s)", (f"{DATASET}.{table.name}",)).fetchone()[0] is None:
        return False
    index = f"{table.name}__batch_id"
    if conn.execute("select to_regclass(%s)", (f"{DATASET}.{index}",)).fetchone()[0] is None:
        with schema_lock(conn):
            conn.execute(
                sql.SQL("create index if not exists {} on {} (_batch_id)").format(
                    sql.Identifier(index), sql.Identifier(DATASET, table.name)
                )
            )
    return True


def raw_copies(conn: psycopg.Connection, table: Table, batches: dict[str, int]) -> dict[str, str]:
    """For batches (id → rows) already whole in raw from an earlier attempt, the run id of such
    a copy."""
    if not batches or not ensure_raw_index(conn, table):
        return {}
    found = conn.execute(
        sql.SQL(
            "select _batch_id, max(_run_id) from (select _batch_id, _run_id, count(*) as n "
            "from {} where _batch_id = any(%s) group by _batch_id, _run_id) as copies "
            "where n = (%s::jsonb ->> _batch_id)::bigint group by _batch_id"
        ).format(sql.Identifier(DATASET, table.name)),
        (list(batches), json.dumps(batches)),
    ).fetchall()
    return dict(found)


def without_copies(rows: pa.Table, copies: Iterable[str]) -> pa.Table:
    """`rows` but those of the batches in `copies` (batch ids with a raw copy already)."""
    copies = list(copies)
    if not copies:
        return rows
    return rows.filter(pc.invert(pc.is_in(rows[BATCH_ID], pa.array(copies))))
