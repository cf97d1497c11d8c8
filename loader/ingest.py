"""One batch from the API through the same path as a CSV batch: raw via dlt, the GX
checkpoint, promotion in one transaction, audit rows.

Batches are settled one at a time (a lock): dlt's pipeline folder and the GX context are not
made for concurrent use, and a batch takes a second or so, most of it GX's fixed cost.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from loader.database import connect, ensure_schemas
from loader.gate import Gate
from loader.job import EXPECTATIONS_DIR
from loader.pipeline import RawLoader
from loader.promote import BatchInfo, Promoter, Settlement
from loader.read import RawBatch, to_arrow
from loader.runs import close_run, new_run_id, open_run
from loader.settings import Settings
from loader.tables import Table


@dataclass(frozen=True)
class Previous:
    """A batch with the same content settled before: its first answer."""

    status: str
    rows: int
    rows_promoted: int
    failing_rows: list[dict]


class Ingest:
    """Settles API batches on one database."""

    def __init__(self, settings: Settings, url: str):
        self.settings = settings
        self.url = url
        self.gate = Gate(EXPECTATIONS_DIR, settings.gx_state_dir)
        self.raw = RawLoader(url, settings.dlt_dir / "api")
        self.lock = threading.Lock()
        with connect(url, autocommit=True) as conn:
            ensure_schemas(conn)

    def previous(self, batch_id: str) -> Previous | None:
        """The settlement of an identical batch, if one was settled already."""
        with connect(self.url) as conn:
            found = conn.execute(
                "select status, rows_read, rows_promoted from audit.batches where batch_id = %s",
                (batch_id,),
            ).fetchone()
            if found is None:
                return None
            failing = conn.execute(
                "select line_number, failures from audit.rejected_rows where batch_id = %s "
                "order by line_number",
                (batch_id,),
            ).fetchall()
        return Previous(*found, [{"line": line, "failures": f} for line, f in failing])

    def settle(self, table: Table, batch: RawBatch, policy: str) -> Settlement:
        """Validate, load raw, and promote or reject the batch; record a run for it."""
        with self.lock, connect(self.url, autocommit=True) as conn:
            run_id = new_run_id()
            open_run(conn, run_id, f"api:{table.name}", batch.rows, policy)
            try:
                known = {
                    column.references: [
                        row[0] for row in conn.execute(f'select id from core."{column.references}"')
                    ]
                    for column in table.foreign_keys
                }
                chunk = to_arrow(table, [batch], run_id)
                verdict = self.gate.check(table, chunk, [batch.batch_id], known)[batch.batch_id]
                self.raw.load({table: [chunk]})
                promoter = Promoter(conn, run_id, policy)
                promoter.prepare(table)
                info = BatchInfo(
                    batch.batch_id,
                    table.name,
                    batch.source,
                    batch.first_line,
                    batch.last_line,
                    batch.rows,
                )
                settlement = promoter.settle(table, info, verdict)
            except BaseException as error:
                close_run(conn, run_id, "failed", {"error": str(error)})
                raise
            close_run(
                conn,
                run_id,
                "completed",
                {
                    "table": table.name,
                    "batch_id": batch.batch_id,
                    "status": settlement.status,
                    "rows_read": batch.rows,
                    "rows_promoted": settlement.rows_promoted,
                    "rows_held_back": settlement.rows_rejected,
                    "reasons": settlement.reasons,
                },
            )
            return settlement

    def build_docs(self) -> None:
        """Add the validations made since the last call to the GX data docs."""
        with self.lock:
            if self.gate.validated:
                self.gate.build_docs()
                self.gate.validated.clear()
