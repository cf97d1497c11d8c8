"""The committed GX File Data Context (`expectations/`): opened with its results and data docs
kept in the state folder, and regenerated from the data dictionary by
`python -m loader expectations`.
"""

from __future__ import annotations

import re
import tempfile
import uuid
from pathlib import Path

import great_expectations as gx

from loader.flow.judge.rules import suite_for
from loader.tables import BATCH_ID, LINE_NUMBER, TABLES

ID_NAMESPACE = uuid.UUID("5f0c7a52-8d4e-4c43-9d3b-6f3f9b1c2a10")  # csv-migrate's GX objects
DATASOURCE = "batches"
BATCH_DEFINITION = "rows"
STATE_VARIABLE = "LOADER_GX_STATE_DIR"
RESULT_FORMAT = {
    "result_format": "COMPLETE",
    # A line number alone is unique in one file, not among a table's files (each numbers its
    # lines from 1) nor among API requests: the batch id says which batch a failing line is of.
    "unexpected_index_column_names": [LINE_NUMBER, BATCH_ID],
    "return_unexpected_index_query": False,
}


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
