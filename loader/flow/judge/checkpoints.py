"""The gate in this process: a table's GX checkpoint run over many batches in one pass, a
verdict per batch.

One validation per chunk keeps GX's fixed cost (0.2-0.5 s a checkpoint run, measured 2026-12-07
on two machines) off every batch, and the data docs are built once per run rather than by an
UpdateDataDocsAction on every checkpoint run (another 0.85 s each, measured);
`result_format=COMPLETE` lists every failing
row with its line, and its batch: from the line where the chunk's lines are unique (the frame
indexed by line), else from the batch id column GX reports beside the line (a chunk may hold
batches of several files, whose lines all start at 1). See `context.RESULT_FORMAT`. The
checkpoint's `success` is the authority: a failed checkpoint whose failures cannot be pinned to
rows rejects every batch it saw. No SQL here.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from pathlib import Path

import pandas as pd
import pyarrow as pa
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.resource_identifiers import (
    ExpectationSuiteIdentifier,
)
from great_expectations.execution_engine import pandas_execution_engine

from loader.flow.judge.context import checkpoint_name, open_context
from loader.flow.judge.gate import judged_now, run_name
from loader.flow.judge.rules import (
    MOST_FAILING_ROWS,
    known_ids_parameter,
    likely_failing,
    passes,
    validation_frame,
)
from loader.flow.model import Failure, Judged, Verdict
from loader.tables import BATCH_ID, LINE_NUMBER, Table


class InProcessGate:
    """Validates chunks of batches with the committed checkpoints, in this process."""

    def __init__(
        self, context_dir: Path, state_dir: Path, most_failing_rows: int = MOST_FAILING_ROWS
    ):
        """`most_failing_rows`: rows that look broken in one checkpoint run, at most (see
        `rules.passes`)."""
        self.most_failing_rows = most_failing_rows
        # GX logs every expectation it cannot render at WARNING; its results say what failed.
        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        # GX fingerprints every in-memory frame under its HASH_THRESHOLD (1 GB) for the batch
        # markers of the result: pandas' hash of every cell, then MD5, a sixth of a clean
        # chunk's checkpoint run (measured 2026-12-07). The chunk's batches are named by their
        # content already (batch ids: SHA-256 of their bytes, in the frame and in the run
        # name), so the gate turns it off as GX does for larger frames.
        pandas_execution_engine.HASH_THRESHOLD = 0
        self.context = open_context(context_dir, state_dir)
        # Each table's checkpoint read from the store once per gate, not once per chunk (a
        # checkpoint run still checks that it matches the store: GX's `is_fresh`).
        self._checkpoints: dict[str, object] = {}
        self.validated: list = []  # result identifiers of this gate's validations

    def build_docs(self) -> Path:
        """Add this gate's validations to the data docs site and rebuild its index page.

        Pages of earlier runs are kept as they are, so the cost does not grow with history;
        the pages of the suites validated are rebuilt, so the index's links to them resolve.
        The validations added are forgotten: a long-lived gate (the API's) builds each once.
        """
        suites = {key.expectation_suite_identifier.name for key in self.validated}
        identifiers = [*self.validated, *map(ExpectationSuiteIdentifier, sorted(suites))]
        self.context.build_data_docs(resource_identifiers=identifiers or None)
        self.validated.clear()
        return Path(self.context.get_docs_sites_urls()[0]["site_url"].removeprefix("file://"))

    def submit(
        self, table: Table, chunk: pa.Table, batch_ids: list[str], known_ids: dict[str, list[int]]
    ) -> Future[Judged]:
        return judged_now(self.check, table, chunk, batch_ids, known_ids)

    def submit_docs(self) -> Future[Path]:
        """`build_docs` done here and now, as the future a `GateProcess` gives."""
        future: Future[Path] = Future()
        future.set_result(self.build_docs())
        return future

    def close(self) -> None:
        """Nothing to release: the context lives as long as this object."""

    def check(
        self, table: Table, chunk: pa.Table, batch_ids: list[str], known_ids: dict[str, list[int]]
    ) -> dict[str, Verdict]:
        """Run the table's checkpoint over a chunk of batches (see `Gate.submit`), in one pass,
        or in several where many rows look broken (`rules.MOST_FAILING_ROWS`); return a
        verdict per batch id."""
        frame = validation_frame(table, chunk)
        parameters = {known_ids_parameter(name): ids for name, ids in known_ids.items()}
        verdicts = {batch_id: Verdict(batch_id) for batch_id in batch_ids}
        broken = likely_failing(table, frame)
        ranges = passes(frame, broken, self.most_failing_rows)
        for start, stop in ranges:
            # One pass takes the frame itself: a slice GX writes to would be copied whole.
            part = frame if len(ranges) == 1 else frame.iloc[start:stop]
            seen = [verdicts[batch_id] for batch_id in part[BATCH_ID].unique()]
            name = run_name(chunk.slice(start, stop - start))
            self._judge(table, part, name, parameters, verdicts, seen or list(verdicts.values()))
        return _shared(verdicts)

    def _judge(
        self,
        table: Table,
        frame: pd.DataFrame,
        name: str | None,
        parameters: dict,
        verdicts: dict[str, Verdict],
        seen: list[Verdict],
    ) -> None:
        """One checkpoint run over `frame`, its failures added to `verdicts`; failures that name
        no row go to the verdicts of the batches it `seen`."""
        by_line = frame[LINE_NUMBER].is_unique
        if by_line:
            frame.index = pd.Index(frame[LINE_NUMBER].to_numpy(), name=LINE_NUMBER)
        checkpoint = checkpoint_name(table.name, by_line)
        if checkpoint not in self._checkpoints:
            self._checkpoints[checkpoint] = self.context.checkpoints.get(checkpoint)
        result = self._checkpoints[checkpoint].run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=parameters,
            run_id=RunIdentifier(run_name=name),
        )
        batch_of = _batch_of_line(frame) if by_line and not result.success else None
        self.validated += list(result.run_results)
        for validation in result.run_results.values():
            for outcome in validation.results:
                if outcome.success:
                    continue
                meta = outcome.expectation_config.meta or {}
                failure = Failure(
                    meta.get("field", "*"),
                    meta.get("rule", outcome.expectation_config.type),
                    outcome.expectation_config.type,
                )
                rows = outcome.result.get("unexpected_index_list")
                if rows:
                    for row in rows:
                        line = int(row[LINE_NUMBER])
                        batch = batch_of[line] if batch_of is not None else row[BATCH_ID]
                        verdicts[batch].failing_rows.setdefault(line, []).append(failure)
                else:
                    for verdict in seen:
                        verdict.batch_failures.append(failure)
        if not result.success and all(verdict.passed for verdict in seen):
            for verdict in seen:
                verdict.batch_failures.append(
                    Failure("*", "the checkpoint failed without naming rows", "checkpoint")
                )


def _shared(verdicts: dict[str, Verdict]) -> dict[str, Verdict]:
    """The verdicts with each failing row's rules as a tuple, one object for all the rows that
    fail the same rules: the run holds the verdicts of a few chunks while they wait to settle,
    and a chunk of failing rows has tens of thousands (a list each was about 90 bytes a row;
    pickling to the run keeps the tuples shared)."""
    same: dict[tuple[Failure, ...], tuple[Failure, ...]] = {}
    for verdict in verdicts.values():
        for line, found in verdict.failing_rows.items():
            rules = tuple(found)
            verdict.failing_rows[line] = same.setdefault(rules, rules)
    return verdicts


def _batch_of_line(frame: pd.DataFrame) -> dict[int, str]:
    """Line → batch id, for a frame whose lines are unique."""
    return dict(zip(frame[LINE_NUMBER].tolist(), frame[BATCH_ID].tolist(), strict=True))
