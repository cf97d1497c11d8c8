"""The load job: CSV files → batches → GX verdicts and dlt raw tables → settled batches → summary.

Files are read in dependency order. Each table is read once, streaming: chunks of whole batches
are validated by the gate and handed to dlt, so only one chunk is in memory at a time. Nothing
reaches the database until every file has been read: a file that is not the table it claims to
be (wrong field count, unclosed quote) stops the run with nothing written but its audit row.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pyarrow as pa

from loader.database import connect, database_url, ensure_schemas
from loader.gate import Gate, Verdict
from loader.marts import build_marts
from loader.pipeline import RawLoader
from loader.promote import PROMOTED, BatchInfo, Promoter, Settlement
from loader.read import InputError, RawBatch, ReadCounts, read_batches, to_arrow
from loader.runs import close_run, new_run_id, open_run
from loader.settings import Settings
from loader.summary import RunSummary, TableSummary
from loader.tables import TABLES, Table

EXPECTATIONS_DIR = Path(__file__).resolve().parent.parent / "expectations"

Progress = Callable[[str, int], None]


@dataclass
class TableWork:
    """A table's share of the run between reading and settling."""

    table: Table
    summary: TableSummary
    batches: list[BatchInfo]
    verdicts: dict[str, Verdict]


def input_files(input_dir: Path) -> dict[str, Path]:
    """The three files, or an InputError naming the first one missing."""
    if not input_dir.is_dir():
        raise InputError(f"{input_dir}: input folder not found")
    files = {table.name: input_dir / table.file_name for table in TABLES}
    for path in files.values():
        if not path.is_file():
            raise InputError(
                f"{path}: file not found (expected {', '.join(t.file_name for t in TABLES)})"
            )
    return files


def accepted_ids(table: Table, batch: RawBatch, verdict: Verdict, policy: str) -> list[int]:
    """Ids this batch will put in core, which later tables of the same run may reference."""
    if verdict.batch_failures or (policy == "reject_batch" and verdict.failing_rows):
        return []
    keys = batch.values[table.column_names.index(table.primary_key)]
    return [
        int(key) for line, key in zip(batch.line_numbers, keys) if line not in verdict.failing_rows
    ]


class LoadJob:
    """One run of `python -m loader run`."""

    def __init__(self, settings: Settings, progress: Progress | None = None):
        self.settings = settings
        self.progress = progress or (lambda table, rows: None)
        self.run_id = new_run_id()
        self.seconds = {
            "read": 0.0,
            "validate": 0.0,
            "raw load": 0.0,
            "promote": 0.0,
            "data docs": 0.0,
            "dbt build": 0.0,
        }
        self.gate = Gate(EXPECTATIONS_DIR, settings.gx_state_dir)

    def run(self) -> RunSummary:
        settings = self.settings
        files = input_files(settings.input_dir)
        url = database_url(settings)
        summary = RunSummary(
            self.run_id,
            str(settings.input_dir),
            settings.batch_size,
            settings.policy,
            log_dir=str(self.log_dir),
        )
        with connect(url, autocommit=True) as conn:
            ensure_schemas(conn)
            self._record_start(conn)
            try:
                work = self._read_and_validate(conn, url, files)
                for item in work:
                    summary.tables.append(item.summary)
                self._settle(conn, work)
                started = time.perf_counter()
                summary.data_docs = str(self.gate.build_docs())
                self.seconds["data docs"] = time.perf_counter() - started
                if settings.build_marts:
                    self._build_marts(url, summary)
            except BaseException as error:
                summary.status = "failed"
                self._record_end(conn, summary, error)
                raise
            summary.seconds = {k: round(v, 3) for k, v in self.seconds.items()}
            self._record_end(conn, summary, None)
        summary.write(self.log_dir / "summary.json")
        return summary

    def _build_marts(self, url: str, summary: RunSummary) -> None:
        started = time.perf_counter()
        build = build_marts(url, self.settings.state_path)
        self.seconds["dbt build"] = time.perf_counter() - started
        summary.marts_status = "rebuilt" if build.success else "dbt build failed"
        summary.marts, summary.marts_failures = build.rows, build.failures

    @property
    def log_dir(self) -> Path:
        return self.settings.logs_dir / self.run_id

    def _read_and_validate(self, conn: psycopg.Connection, url: str, files: dict[str, Path]):
        settled = {row[0] for row in conn.execute("select batch_id from audit.batches")}
        referenced = {column.references for table in TABLES for column in table.foreign_keys}
        known = {
            name: [row[0] for row in conn.execute(f'select id from core."{name}"')]
            for name in referenced
        }
        gate = self.gate
        raw = RawLoader(url, self.settings.dlt_dir)
        work = [
            TableWork(table, TableSummary(table.name, str(files[table.name])), [], {})
            for table in TABLES
        ]
        started = time.perf_counter()
        try:
            raw.load(
                {
                    item.table: self._chunks(item, files[item.table.name], settled, known, gate)
                    for item in work
                }
            )
        except BaseException as error:
            raw.discard()
            cause = _input_error_in(error)
            if cause is not None:
                raise cause from None
            raise
        self.seconds["raw load"] = time.perf_counter() - started - self.seconds["read"]
        self.seconds["read"] -= self.seconds["validate"]
        return work

    def _chunks(
        self,
        item: TableWork,
        path: Path,
        settled: set[str],
        known: dict[str, list[int]],
        gate: Gate,
    ) -> Iterator[pa.Table]:
        counts = ReadCounts()
        pending: list[RawBatch] = []
        resumed = time.perf_counter()
        for batch in read_batches(path, item.table, self.settings.batch_size, counts):
            if batch.batch_id in settled:
                item.summary.batches_skipped += 1
                item.summary.rows_skipped += batch.rows
                continue
            pending.append(batch)
            if sum(b.rows for b in pending) >= self.settings.chunk_rows:
                chunk = self._validated(item, pending, known, gate)
                self.progress(item.table.name, counts.rows)
                self.seconds["read"] += time.perf_counter() - resumed
                yield chunk
                resumed, pending = time.perf_counter(), []
        item.summary.lines, item.summary.blank_lines = counts.lines, counts.blank_lines
        item.summary.rows_read = counts.rows
        self.progress(item.table.name, counts.rows)
        if pending:
            chunk = self._validated(item, pending, known, gate)
            self.seconds["read"] += time.perf_counter() - resumed
            yield chunk

    def _validated(
        self, item: TableWork, batches: list[RawBatch], known: dict[str, list[int]], gate: Gate
    ) -> pa.Table:
        chunk = to_arrow(item.table, batches, self.run_id)
        started = time.perf_counter()
        referenced = {
            column.references: known[column.references] for column in item.table.foreign_keys
        }
        verdicts = gate.check(item.table, chunk, [batch.batch_id for batch in batches], referenced)
        self.seconds["validate"] += time.perf_counter() - started
        item.verdicts.update(verdicts)
        for batch in batches:
            item.batches.append(
                BatchInfo(
                    batch.batch_id,
                    batch.table,
                    batch.source,
                    batch.first_line,
                    batch.last_line,
                    batch.rows,
                )
            )
            if item.table.name in known:
                known[item.table.name] += accepted_ids(
                    item.table, batch, verdicts[batch.batch_id], self.settings.policy
                )
        item.summary.batches_read += len(batches)
        return chunk

    def _settle(self, conn: psycopg.Connection, work: list[TableWork]) -> None:
        started = time.perf_counter()
        promoter = Promoter(conn, self.run_id, self.settings.policy)
        for item in work:
            if not item.batches:
                continue
            promoter.prepare(item.table)
            for batch in item.batches:
                settlement = promoter.settle(item.table, batch, item.verdicts[batch.batch_id])
                item.summary.add(settlement)
                if settlement.status != PROMOTED:
                    self._log_batch(settlement)
        self.seconds["promote"] += time.perf_counter() - started

    def _log_batch(self, settlement: Settlement) -> None:
        batch = settlement.batch
        name = f"{batch.table}-line{batch.first_line}-{batch.batch_id}.json"
        path = self.log_dir / "batches" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {**settlement.record(self.run_id), "failing_rows": settlement.rejected_rows}
        path.write_text(json.dumps(entry, indent=2))

    def _record_start(self, conn: psycopg.Connection) -> None:
        open_run(
            conn,
            self.run_id,
            str(self.settings.input_dir),
            self.settings.batch_size,
            self.settings.policy,
        )

    def _record_end(self, conn: psycopg.Connection, summary: RunSummary, error) -> None:
        data = summary.as_dict()
        if error is not None:
            data["error"] = str(error)
        close_run(conn, self.run_id, summary.status, data)


def _input_error_in(error: BaseException) -> InputError | None:
    """dlt wraps exceptions raised while extracting; find a user's input error inside."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, InputError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
