"""Runs the GX checkpoint of a table over many batches in one pass and returns a verdict per batch.

One validation per chunk keeps GX's fixed cost (about 0.7 s a checkpoint run here) off every
batch, and the data docs are built once per run rather than by an UpdateDataDocsAction on every
checkpoint run (another 0.85 s each, measured);
`result_format=COMPLETE` with the line number as index column lists every failing row, and the
line maps it back to its batch. The checkpoint's `success` is the authority: a failed checkpoint
whose failures cannot be pinned to rows rejects every batch it saw. No SQL here.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import great_expectations as gx
import pyarrow as pa
import pyarrow.compute as pc
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.resource_identifiers import (
    ExpectationSuiteIdentifier,
)

from loader.flow.rules import (
    REFERENCE_EXPECTATION,
    known_ids_parameter,
    suite_for,
    validation_frame,
)
from loader.tables import BATCH_ID, LINE_NUMBER, RUN_ID, TABLES, Table

ID_NAMESPACE = uuid.UUID("5f0c7a52-8d4e-4c43-9d3b-6f3f9b1c2a10")  # csv-migrate's GX objects
DATASOURCE = "batches"
BATCH_DEFINITION = "rows"
STATE_VARIABLE = "LOADER_GX_STATE_DIR"
RESULT_FORMAT = {
    "result_format": "COMPLETE",
    "unexpected_index_column_names": [LINE_NUMBER],
    "return_unexpected_index_query": False,
}

logging.getLogger("great_expectations").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Failure:
    """One broken rule on one row: the field the user wrote, the rule in words, GX's name."""

    field: str
    rule: str
    expectation: str

    def as_dict(self) -> dict:
        return {"field": self.field, "rule": self.rule, "expectation": self.expectation}

    @property
    def is_reference(self) -> bool:
        """A missing department or job: the row may pass once it arrives."""
        return self.expectation == REFERENCE_EXPECTATION


@dataclass
class Verdict:
    """What the gate found in one batch."""

    batch_id: str
    failing_rows: dict[int, list[Failure]] = field(default_factory=dict)
    batch_failures: list[Failure] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failing_rows and not self.batch_failures


@dataclass
class Judged:
    """A chunk's verdicts, and the seconds the gate spent on them."""

    verdicts: dict[str, Verdict]
    seconds: float


def judged_now(check: Callable[..., dict[str, Verdict]], *arguments) -> Future[Judged]:
    """`check(*arguments)` done here and now, as the future a `GateProcess` gives."""
    started = time.perf_counter()
    future: Future[Judged] = Future()
    verdicts = check(*arguments)
    future.set_result(Judged(verdicts, time.perf_counter() - started))
    return future


def open_context(context_dir: Path, state_dir: Path):
    """The committed File Data Context, its results and data docs kept in the state folder."""
    return gx.get_context(
        mode="file",
        context_root_dir=str(context_dir),
        runtime_environment={STATE_VARIABLE: str(state_dir)},
    )


def write_context(context_dir: Path) -> None:
    """(Re)create the committed context: one suite, validation definition and checkpoint per table.

    Run by `python -m loader expectations` whenever the data dictionary changes.
    """
    for folder in ("checkpoints", "validation_definitions", "expectations"):
        for generated in (context_dir / folder).glob("*.json"):
            generated.unlink()
    context = open_context(context_dir, Path(tempfile.mkdtemp()))
    if DATASOURCE in context.data_sources.all():
        context.data_sources.delete(DATASOURCE)
    source = context.data_sources.add_pandas(DATASOURCE)
    for table in TABLES:
        definition = source.add_dataframe_asset(table.name).add_batch_definition_whole_dataframe(
            BATCH_DEFINITION
        )
        suite = context.suites.add(suite_for(table))
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(name=table.name, data=definition, suite=suite)
        )
        context.checkpoints.add(
            gx.Checkpoint(
                name=table.name,
                validation_definitions=[validation],
                result_format=RESULT_FORMAT,
            )
        )
    stabilise_ids(context_dir)


GENERATED = ("checkpoints/*.json", "expectations/*.json", "validation_definitions/*.json")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def stabilise_ids(context_dir: Path) -> None:
    """Replace the random ids GX gave the generated objects by ids derived from where they
    first appear, so that regenerating an unchanged dictionary changes no committed byte.

    The files' structure is the same on every run (only the ids differ), so the n-th distinct
    id, reading the files in a fixed order, is the same object every time; references to it
    elsewhere get the same new id.
    """
    files = [context_dir / "great_expectations.yml"]
    files += sorted(path for pattern in GENERATED for path in context_dir.glob(pattern))
    texts = {path: path.read_text() for path in files}
    stable: dict[str, str] = {}
    for text in texts.values():
        for found in UUID.findall(text):
            stable.setdefault(found, str(uuid.uuid5(ID_NAMESPACE, f"gx-{len(stable)}")))
    for path, text in texts.items():
        path.write_text(UUID.sub(lambda match: stable[match.group(0)], text))


def run_name(chunk: pa.Table) -> str | None:
    """The GX run name of a chunk's validation, shown in the data docs: its lines and run."""
    if chunk.num_rows == 0:
        return None
    lines = pc.min_max(chunk[LINE_NUMBER]).as_py()
    return f"lines {lines['min']}-{lines['max']} of run {chunk[RUN_ID][0].as_py()}"


class Gate:
    """Validates chunks of batches with the committed checkpoints."""

    def __init__(self, context_dir: Path, state_dir: Path):
        self.context = open_context(context_dir, state_dir)
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
        """Run the table's checkpoint over a chunk of batches; return a verdict per batch id.

        Args:
            table: the table the batches hold.
            chunk: the raw rows of whole batches, with lineage (see `read.to_arrow`).
            batch_ids: the batches in the chunk, including any without rows.
            known_ids: for each referenced table, the ids a row may point at.
        """
        frame = validation_frame(table, chunk)
        parameters = {known_ids_parameter(name): ids for name, ids in known_ids.items()}
        result = self.context.checkpoints.get(table.name).run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=parameters,
            run_id=RunIdentifier(run_name=run_name(chunk)),
        )
        verdicts = {batch_id: Verdict(batch_id) for batch_id in batch_ids}
        batch_of_line = dict(zip(frame[LINE_NUMBER].tolist(), frame[BATCH_ID].tolist()))
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
                        verdicts[batch_of_line[line]].failing_rows.setdefault(line, []).append(
                            failure
                        )
                else:
                    for verdict in verdicts.values():
                        verdict.batch_failures.append(failure)
        if not result.success and all(verdict.passed for verdict in verdicts.values()):
            for verdict in verdicts.values():
                verdict.batch_failures.append(
                    Failure("*", "the checkpoint failed without naming rows", "checkpoint")
                )
        return verdicts
