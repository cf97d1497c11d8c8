"""A file run on Dask: `run --workers N` (a LocalCluster) or `run --scheduler URL` (a cluster).

The same run as `file_run.LoadHere`, with reading, judging and landing spread over workers:
1. count: each file's pieces are counted in parallel (`source.pieces.count_piece`), which
   places every batch exactly where the sequential reader puts it;
2. judge: tasks of whole batches (`worker.judge_share`), the tables others reference first;
   their accepted ids are broadcast to the workers for the reference rule of the rest;
3. settle: only once every task has been judged (a malformed line anywhere stops the run with
   nothing promoted), through the one settlement engine, on the driver: table after table, a
   table's batches on several connections at once (`settle.line`).

Batch ids, lines, verdicts, ledger rows and counts are those of a sequential run. The input
must be readable at the same absolute path by every worker (a shared folder), and so must the
state folder (GX writes its validation results there for the data docs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from rich.console import Console

from loader.flow.cluster.worker import Job, TaskResult, judge_share
from loader.flow.errors import ClusterUnavailable
from loader.flow.judge.gx_import import in_process_gate
from loader.flow.land import RawLoader
from loader.flow.model import SETTLED
from loader.flow.pipeline import Progress, Run, known_ids
from loader.flow.source.exports import stored
from loader.flow.source.file_ledger import FileRead
from loader.flow.source.file_sources import table_sources
from loader.flow.source.pieces import count_piece, cut, place, shares
from loader.flow.summary import RunSummary, Stage, TableSummary
from loader.settings import EXPECTATIONS_DIR, Settings
from loader.tables import table_named


@dataclass
class ClusterSummary(RunSummary):
    """A run's summary, plus which worker did what: tasks, batches, rows landed, busy seconds."""

    workers: dict[str, dict] = field(default_factory=dict)

    def render(self, console: Console) -> None:
        super().render(console)
        for worker, work in sorted(self.workers.items()):
            console.print(
                f"  worker {worker}: {work['tasks']} tasks, {work['batches']} batches, "
                f"{work['rows_landed']:,} rows landed, {work['seconds']:.2f}s busy"
            )


@contextmanager
def dask_client(workers: int | None, scheduler: str | None, timeout: float) -> Iterator:
    """A client of the cluster at `scheduler` (reached within `timeout` seconds), or of a
    LocalCluster of `workers` processes."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout=f"{timeout}s")
        except (OSError, TimeoutError) as error:
            raise ClusterUnavailable(
                f"cannot reach the Dask scheduler {scheduler} (within {timeout:g} s: {error})"
            ) from None
        with client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


class ClusterRun(Run):
    """A `Run` whose batches are read, judged and landed by the workers of a Dask client."""

    def __init__(self, *arguments, **options):
        super().__init__(*arguments, **options)
        self.url = self.raw.url
        self.seconds = {Stage.COUNT: 0.0, **self.seconds}

    def new_summary(self, label: str) -> ClusterSummary:
        return ClusterSummary(
            self.run_id, label, self.batch_size, self.policy, log_dir=str(self.log_dir)
        )

    def spread(self, client, reads: list[FileRead]) -> None:
        """Count, judge and land every file on the cluster, then settle every batch."""
        job = Job(
            self.url,
            str(self.settings.gx_state_dir),
            self.run_id,
            self.policy,
            self.batch_size,
            self.settings.chunk_rows,
            self.settings.encoding,
        )
        sources = table_sources(reads, self.settings)
        self.summary.tables = [
            TableSummary(table.name, label) for table, (label, _) in sources.items()
        ]
        placed = self._count(client, reads)
        known = known_ids(self.conn, sources)
        first = [read for read in reads if not read.export.table.foreign_keys]
        results = self._judge(client, job, first, placed, None)
        for result in results:
            if result.table in known:
                known[result.table] += result.accepted
        rest = [read for read in reads if read.export.table.foreign_keys]
        broadcast = client.scatter(known, broadcast=True)
        results += self._judge(client, job, rest, placed, broadcast)
        order = {read.export.url: index for index, read in enumerate(reads)}
        results.sort(key=lambda result: (order[result.source], result.first_row))
        self._tally_results(results, {read.export.url: read for read in reads})
        self._settle(results)

    def _count(self, client, reads: list[FileRead]) -> dict[str, list]:
        """Each file's pieces, placed (url → pieces); the summary's lines, blank lines and rows.
        The driver hashes the files meanwhile, for the file ledger."""
        started = time.perf_counter()
        pieces = {read.export.url: cut(read.export.url) for read in reads}
        futures = {url: client.map(count_piece, found) for url, found in pieces.items()}
        for read in reads:
            with stored(read.export.url) as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):  # noqa: B023
                    read.digest.update(block)
        placed = {}
        for read in reads:
            url = read.export.url
            counts = client.gather(futures[url])
            placed[url] = place(pieces[url], counts)
            summary = self.summary_of(read.export.table)
            summary.lines += sum(count.lines for count in counts)
            summary.blank_lines += sum(count.blank_lines for count in counts)
            summary.rows_read += sum(count.rows for count in counts)
            read.rows = sum(count.rows for count in counts)
        self.seconds[Stage.COUNT] = time.perf_counter() - started
        return placed

    def _judge(self, client, job: Job, reads: list[FileRead], placed, known) -> list[TaskResult]:
        """Every share of the files `reads` judged and landed by the workers."""
        from distributed import as_completed

        task_rows = max(1, self.settings.task_rows // self.batch_size) * self.batch_size
        futures = [
            client.submit(judge_share, job, share, known, pure=False)
            for read in reads
            for share in shares(read.export.table, placed[read.export.url], read.rows, task_rows)
        ]
        results = []
        try:
            for future in as_completed(futures):
                result = future.result()
                results.append(result)
                read = sum(len(r.batches) for r in results if r.table == result.table)
                self.progress(result.table, read)
        except BaseException:
            client.cancel(futures)
            raise
        return results

    def _tally_results(self, results: list[TaskResult], reads: dict[str, FileRead]) -> None:
        """The counts a sequential run makes while reading, and which worker did what."""
        for result in results:
            reads[result.source].batches += len(result.batches)
            summary = self.summary_of(table_named(result.table))
            for judged in result.batches:
                if summary.count_earlier(judged.earlier, judged.batch.rows):
                    continue
                summary.batches_read += 1
                summary.batches_reused += judged.batch.raw_run_id is not None
            for stage, seconds in result.seconds.items():
                self.seconds[stage] += seconds
            work = self.summary.workers.setdefault(
                result.worker, {"tasks": 0, "batches": 0, "rows_landed": 0, "seconds": 0.0}
            )
            work["tasks"] += 1
            work["batches"] += len(result.batches)
            work["rows_landed"] += result.rows_landed
            work["seconds"] = round(work["seconds"] + sum(result.seconds.values()), 3)
            self.gate.validated += result.validated

    def _settle(self, results: list[TaskResult]) -> None:
        """Every unsettled batch through the settlement engine, table after table, each on
        `settle_connections` connections at once (`settle.line.SettleLine`)."""
        landed = [
            (table_named(result.table), judged.batch, judged.verdict, judged.keys)
            for result in results
            for judged in result.batches
            if judged.earlier not in SETTLED
        ]
        with self.settle_line() as line:
            line.put(landed)


class LoadOnCluster:
    """`file_run`'s loading on Dask: a `ClusterRun` spread over the client's workers. The
    workers judge; the run's own in-process gate builds the data docs of their validations."""

    def __init__(self, settings: Settings, conn, url: str, progress: Progress | None, **observing):
        """`observing`: the run's observers and what they are told (`pipeline.Run`)."""
        self.settings = settings
        self.run = ClusterRun(
            settings,
            conn,
            in_process_gate(EXPECTATIONS_DIR, settings.gx_state_dir),
            RawLoader(url, settings.dlt_dir),
            str(settings.input_dir),
            settings.policy,
            settings.batch_size,
            progress,
            keep_settlements=False,
            **observing,
        )

    def load(self, reads: list[FileRead]) -> None:
        settings = self.settings
        with dask_client(
            settings.workers, settings.scheduler, settings.scheduler_timeout_seconds
        ) as client:
            self.run.spread(client, reads)

    def cancel(self) -> None:
        """Nothing of its own to stop: leaving `dask_client` closed the cluster."""

    def __enter__(self) -> LoadOnCluster:
        return self

    def __exit__(self, *exception) -> None:
        """Nothing to release: the in-process gate lives as long as the run."""
