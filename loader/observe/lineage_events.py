"""The OpenLineage run events of one job: what it read and wrote, and how it went.

A load (file, watch or API run) reads its exports and writes `raw.<table>`, `core.<table>` and
the ledger (`audit.*`); a marts build reads core and writes `marts.*`; a backup reads core and
its ledger and writes the backup's folder or objects; a restore the reverse; a verify reads
a backup. The job is `<namespace>` / `csv_migrate.<job>`, the run id the job's UUID.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    error_message_run,
    job_type_job,
    output_statistics_output_dataset,
    parent_run,
    processing_engine_run,
    set_producer,
    tags_run,
)

from loader.db.connect import libpq_environment
from loader.observe.events import Ending, Finished, Started, describe
from loader.observe.events import Job as LoaderJob
from loader.observe.lineage_datasets import (
    API,
    BACKUP_LEDGER,
    LOAD_LEDGER,
    RESTORE_LEDGER,
    Database,
    export_input,
    location_input,
    location_output,
    table_input,
    table_output,
)
from loader.observe.lineage_quality import quality_facets
from loader.tables import TABLES, TABLES_BY_NAME, Table

PRODUCER = "https://github.com/csv-migrate/csv-migrate"
log = logging.getLogger("loader.observe")
JOB_PREFIX = "csv_migrate."
LOADS = (LoaderJob.FILE_RUN, LoaderJob.WATCH_RUN, LoaderJob.API_RUN)
STATES = {
    Ending.COMPLETE: RunState.COMPLETE,
    Ending.FAIL: RunState.FAIL,
    Ending.ABORT: RunState.ABORT,
}


def job_name(job: LoaderJob) -> str:
    return JOB_PREFIX + str(job)


def root_of(started: Started) -> Started:
    while started.parent is not None:
        started = started.parent
    return started


class LineageEvents:
    """Builds the events of jobs run in job namespace `namespace` on the database at `url`."""

    def __init__(self, namespace: str, url: str):
        self.namespace = namespace
        self.url = url
        self.database = Database.of(url)
        set_producer(PRODUCER)  # facets' `_producer`: this project, not the client library

    def start(self, started: Started) -> RunEvent:
        return self._event(RunState.START, started, None)

    def end(self, started: Started, finished: Finished) -> RunEvent:
        return self._event(STATES[finished.ending], started, finished)

    def dbt_models(self, started: Started, finished: Finished) -> list[RunEvent]:
        """A marts build's dbt models and tests, each a job whose parent is the build."""
        if started.job != LoaderJob.MARTS_BUILD:
            return []
        from openlineage.common.provider.dbt.facets import ParentRunMetadata

        from loader.observe.lineage_dbt import model_events

        root = root_of(started)
        parent = ParentRunMetadata(
            run_id=started.uuid,
            job_name=job_name(started.job),
            job_namespace=self.namespace,
            root_parent_run_id=root.uuid,
            root_parent_job_name=job_name(root.job),
            root_parent_job_namespace=self.namespace,
        )
        try:
            return model_events(
                finished.dbt_target,
                started.started_at,
                parent,
                libpq_environment(self.url),
                PRODUCER,
                self.namespace,
            )
        except Exception as error:  # noqa: BLE001 - the build's own events go all the same
            log.warning("lineage: dbt's artifacts not read: %s", describe(error))
            return []

    def _event(self, state: RunState, started: Started, finished: Finished | None) -> RunEvent:
        inputs, outputs = self._datasets(started, finished)
        return RunEvent(
            eventType=state,
            eventTime=(finished.finished_at if finished else started.started_at).isoformat(),
            run=Run(runId=started.uuid, facets=self._run_facets(started, finished)),
            job=Job(
                namespace=self.namespace,
                name=job_name(started.job),
                facets={
                    "jobType": job_type_job.JobTypeJobFacet(
                        processingType="BATCH", integration="CSV_MIGRATE", jobType="JOB"
                    )
                },
            ),
            producer=PRODUCER,
            inputs=inputs,
            outputs=outputs,
        )

    def _run_facets(self, started: Started, finished: Finished | None) -> dict:
        facets: dict = {
            "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
                version=_version("csv-migrate"),
                name="csv-migrate",
                openlineageAdapterVersion=_version("openlineage-python"),
            ),
            # The loader's own id of the job (audit.runs, the backup's stamp), to join on.
            "tags": tags_run.TagsRunFacet(
                tags=[tags_run.TagsRunFacetFields("run_id", started.run_id, "CSV_MIGRATE")]
            ),
        }
        if started.parent is not None:
            root = root_of(started)
            facets["parent"] = parent_run.ParentRunFacet(
                run=parent_run.Run(runId=started.parent.uuid),
                job=parent_run.Job(namespace=self.namespace, name=job_name(started.parent.job)),
                root=parent_run.Root(
                    run=parent_run.RootRun(runId=root.uuid),
                    job=parent_run.RootJob(namespace=self.namespace, name=job_name(root.job)),
                ),
            )
        if finished is not None and finished.ending != Ending.COMPLETE and finished.error:
            facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=finished.error, programmingLanguage="python"
            )
        return facets

    def _datasets(self, started: Started, finished: Finished | None) -> tuple[list, list]:
        if started.job in LOADS:
            return self._load_inputs(started, finished), self._load_outputs(started, finished)
        if started.job == LoaderJob.MARTS_BUILD:
            inputs = [table_input(self.database, "core", table.name) for table in TABLES]
            marts = [table_output(self.database, "marts", name) for name in started.tables]
            return inputs, [*marts, table_output(self.database, "audit", "mart_builds")]
        if started.job == LoaderJob.BACKUP:
            inputs = [table_input(self.database, "core", name) for name in started.tables]
            inputs += [table_input(self.database, "audit", name) for name in BACKUP_LEDGER]
            size = _backup_size(finished)
            return inputs, [location_output(where, size) for where in started.outputs]
        inputs = [location_input(where) for where in started.inputs]
        if started.job == LoaderJob.RESTORE:
            restored = [each.table for each in finished.restored] if finished else []
            tables = restored or started.tables
            outputs = [table_output(self.database, "core", name) for name in tables]
            outputs += [table_output(self.database, "audit", name) for name in RESTORE_LEDGER]
            return inputs, outputs
        return inputs, []  # a verify reads a backup

    def _load_inputs(self, started: Started, finished: Finished | None) -> list:
        summary = finished.summary if finished else None
        files = {entry["url"]: entry for entry in (summary.files if summary else [])}
        tables = {entry.table: entry for entry in (summary.tables if summary else [])}
        exports = [(where, _table_of(where, files)) for where in started.inputs]
        inputs = []
        for where, table in exports:
            facets = {}
            if table is not None and table.name in tables:
                alone = sum(1 for _, other in exports if other == table) == 1
                rows = files.get(where, {}).get("rows")
                facets = quality_facets(table, tables[table.name], rows, alone)
            inputs.append(export_input(where, self.namespace, table, facets))
        return inputs

    def _load_outputs(self, started: Started, finished: Finished | None) -> list:
        summary = finished.summary if finished else None
        promoted = {each.table: each.rows_promoted for each in (summary.tables if summary else [])}
        outputs = []
        for name in started.tables:
            outputs.append(table_output(self.database, "raw", name))
            statistics = None
            if name in promoted:
                statistics = {"outputStatistics": _statistics(rowCount=promoted[name])}
            outputs.append(table_output(self.database, "core", name, statistics))
        ledger = list(LOAD_LEDGER) if started.tables else ["runs"]
        if started.tables:
            ledger.append("api_requests" if started.job == LoaderJob.API_RUN else "files")
        return outputs + [table_output(self.database, "audit", name) for name in ledger]


def _table_of(where: str, files: dict[str, dict]) -> Table | None:
    """The table an export is of: as the run's summary says, else by its name."""
    if where in files:
        return TABLES_BY_NAME.get(files[where]["table"])
    if where.startswith(API):
        return TABLES_BY_NAME.get(where.removeprefix(API))
    from loader.flow.source.exports import table_of

    return table_of(where.rstrip("/").rsplit("/", 1)[-1])


def _backup_size(finished: Finished | None) -> dict | None:
    backup = finished.backup if finished else None
    if backup is None or not getattr(backup, "tables", None):
        return None
    entries = [*backup.tables.values(), *(getattr(backup, "ledger", None) or {}).values()]
    return {
        "outputStatistics": _statistics(
            rowCount=sum(entry.get("rows", 0) for entry in entries),
            size=sum(entry.get("bytes", 0) for entry in entries),
            fileCount=len(entries),
        )
    }


def _statistics(**counts: int):
    return output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(**counts)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
