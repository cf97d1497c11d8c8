"""What a run asks of a gate, wherever its checkpoints run: `checkpoints.InProcessGate` here,
`gate_process.ForkedGate` in a child process, `renumbering.RenumberingGate` over either.

This module imports no Great Expectations (about 1.2 s and 72 MiB of imports, `gx_import`): a
run's own process only talks to its gate, and the gate process imports GX while the run starts
up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from loader.flow.model import Judged, Verdict
from loader.tables import BATCH_ID, DECODE_ERROR, LINE_NUMBER, RUN_ID, Table

# The lineage a checkpoint reads: which line of which batch a failing row is, and why it could
# not be decoded.
JUDGED_LINEAGE = (LINE_NUMBER, BATCH_ID, DECODE_ERROR)


def judged_now(check: Callable[..., dict[str, Verdict]], *arguments) -> Future[Judged]:
    """`check(*arguments)` done here and now, as the future a `ForkedGate` gives."""
    started = time.perf_counter()
    future: Future[Judged] = Future()
    verdicts = check(*arguments)
    future.set_result(Judged(verdicts, time.perf_counter() - started))
    return future


def judged_part(table: Table, chunk: pa.Table) -> pa.Table:
    """What a gate reads of a chunk: the fields, JUDGED_LINEAGE, and the run id for the data
    docs' run name; not the file name. A chunk waits for the gate (up to `pipeline.JUDGE_AHEAD_ROWS`
    rows of them) and is pickled to its process: the less it holds, the better."""
    return chunk.select([*table.column_names, *JUDGED_LINEAGE, RUN_ID])


def run_name(chunk: pa.Table) -> str | None:
    """The GX run name of a chunk's validation, shown in the data docs: its lines and run."""
    if chunk.num_rows == 0:
        return None
    lines = pc.min_max(chunk[LINE_NUMBER]).as_py()
    return f"lines {lines['min']}-{lines['max']} of run {chunk[RUN_ID][0].as_py()}"


class Gate(Protocol):
    """What a run asks of a gate (see the module)."""

    def submit(
        self, table: Table, chunk: pa.Table, batch_ids: list[str], known_ids: dict[str, list[int]]
    ) -> Future[Judged]:
        """A verdict per batch id of the chunk, now or later.

        Args:
            table: the table the batches hold.
            chunk: the raw rows of whole batches, with lineage (`csv_reader.to_arrow`).
            batch_ids: the batches in the chunk, including any without rows.
            known_ids: for each referenced table, the ids a row may point at.
        """
        ...

    def submit_docs(self) -> Future[Path]:
        """The data docs with the validations made so far, now or later."""
        ...

    def build_docs(self) -> Path:
        """The data docs with the validations made so far; where their index is."""
        ...

    def close(self) -> None:
        """Release what the gate holds (a child process)."""
        ...
