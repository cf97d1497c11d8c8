"""A gate for batches that each number their rows from 1: the API's.

The gate maps a failing row back to its batch by line number, which is unique among the
batches of one file but not among API batches gathered into one run. So the checkpoint sees
the rows numbered by their place in the chunk, and each failing row gets its own line back
afterwards: raw, the ledger and the answers keep the request's line numbers (the data docs
show the places).
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import pyarrow as pa

from loader.flow.judge.gate import Gate
from loader.flow.model import Judged
from loader.tables import LINE_NUMBER, Table


class RenumberingGate:
    """A `Gate` over another, judging each chunk with its rows numbered by place."""

    def __init__(self, gate: Gate):
        self.gate = gate

    def submit(
        self, table: Table, chunk: pa.Table, batch_ids: list[str], known_ids: dict[str, list[int]]
    ) -> Future[Judged]:
        lines = chunk[LINE_NUMBER].to_pylist()
        places = pa.array(range(1, chunk.num_rows + 1), pa.int64())
        numbered = chunk.set_column(chunk.schema.get_field_index(LINE_NUMBER), LINE_NUMBER, places)
        renumbered: Future[Judged] = Future()

        def renumber(judged: Future[Judged]) -> None:
            if judged.exception() is not None:
                renumbered.set_exception(judged.exception())
                return
            for verdict in judged.result().verdicts.values():
                verdict.failing_rows = {
                    lines[place - 1]: found for place, found in verdict.failing_rows.items()
                }
            renumbered.set_result(judged.result())

        self.gate.submit(table, numbered, batch_ids, known_ids).add_done_callback(renumber)
        return renumbered

    def submit_docs(self) -> Future[Path]:
        return self.gate.submit_docs()

    def build_docs(self) -> Path:
        return self.gate.build_docs()

    def alive(self) -> bool:
        return self.gate.alive()

    def warm(self) -> bool:
        return self.gate.warm()

    def close(self) -> None:
        self.gate.close()
