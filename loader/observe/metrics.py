"""Prometheus metrics (prometheus-client): counters of batches, rows and rules, run and build
durations, backup gauges; pushed to a Pushgateway, written for node_exporter's textfile
collector, or served at /metrics (`serve`, `watch --metrics-port`).

Every observer has a registry of its own: nothing is registered on import. Label values are
bounded: the three tables, the batch states, the stages, the job kinds, and the rules of
`loader.flow.judge.rules` (a rule outside them, such as PostgreSQL's own message, is counted
under a fixed name); never a run id, a batch id or a value.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from loader.observe.events import Ending, Finished, Job, Observer, Started, describe
from loader.settings import EXPECTATIONS_DIR, Settings
from loader.tables import TABLES, TABLES_BY_NAME

if TYPE_CHECKING:
    from loader.observe.metrics_http import MetricsServer
    from loader.observe.setup import Process

PREFIX = "csv_migrate_"
TABLE_NAMES = tuple(table.name for table in TABLES)
STATES = ("promoted", "partially_promoted", "rejected", "waiting", "failed")  # BatchState
STATUS = {Ending.COMPLETE: "completed", Ending.FAIL: "failed", Ending.ABORT: "aborted"}
# Seconds from an API run's tenth of a second to an hours-long file run.
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
# Rules a row can break that are not expectations: their words carry PostgreSQL's message.
DATABASE_RULES = ("refused by PostgreSQL", "transient database error")
CHECKPOINT_RULE = "the checkpoint failed without naming rows"  # loader.flow.judge.gate
OTHER = "other"
WATCHER_HOST = "0.0.0.0"  # noqa: S104 - `watch` has no --host; a token guards the port

log = logging.getLogger("loader.observe")


@functools.cache
def rule_vocabulary() -> dict[str, frozenset[tuple[str, str]]]:
    """Per table, the (field, rule) pairs its expectations name: the `rule` label's values.
    Read from the committed suites (`python -m loader expectations` writes them from the data
    dictionary), not by importing GX: a run's own process never imports it."""
    vocabulary = {}
    for table in TABLES:
        suite = json.loads((EXPECTATIONS_DIR / "expectations" / f"{table.name}.json").read_text())
        pairs = {(e["meta"]["field"], e["meta"]["rule"]) for e in suite["expectations"]}
        vocabulary[table.name] = frozenset(pairs | {("*", CHECKPOINT_RULE)})
    return vocabulary


def rule_labels(table: str, reason: str) -> tuple[str, str]:
    """The (field, rule) labels of a summary's reason "field: rule" in `table`: as written when
    the rules know it, else the field (or `other`) and a fixed name for the rule."""
    field, _, rule = reason.partition(": ")
    if (field, rule) in rule_vocabulary().get(table, ()):
        return field, rule
    known_fields = {"*", *(column.name for column in TABLES_BY_NAME[table].columns)}
    field = field if field in known_fields else OTHER
    return field, next((name for name in DATABASE_RULES if rule.startswith(name)), OTHER)


def stage_label(stage: str) -> str:
    return stage.replace(" ", "_")


class JobMetrics:
    """The metrics every observed job feeds, in a registry of their own; `touched` names the
    families that have been given a value, the only ones shown (`Touched`): an untouched
    gauge's 0 would say a verify failed, or overwrite the last backup's size in a push."""

    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.touched: set[str] = set()
        self.marts_success: float | None = None

        def counter(name: str, text: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(PREFIX + name, text, labels, registry=registry)

        def gauge(name: str, text: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(PREFIX + name, text, labels, registry=registry)

        def histogram(name: str, text: str, labels: tuple[str, ...]) -> Histogram:
            return Histogram(
                PREFIX + name, text, labels, registry=registry, buckets=SECONDS_BUCKETS
            )

        self.batches = counter(
            "batches_settled_total", "Batches settled, by table and state.", ("table", "state")
        )
        self.promoted = counter("rows_promoted_total", "Rows promoted into core.", ("table",))
        self.held_back = counter(
            "rows_held_back_total", "Rows held back (rejected or waiting).", ("table",)
        )
        self.rules = counter(
            "rule_failing_rows_total",
            "Rows failing each rule (a row failing two rules counts under both).",
            ("table", "field", "rule"),
        )
        self.jobs = counter(
            "jobs_total",
            "Jobs ended (file, watch and API runs, marts builds, backups, restores, verifies), "
            "by how they ended: completed, failed, aborted.",
            ("loader_job", "status"),
        )
        self.job_seconds = histogram(
            "job_duration_seconds", "Wall-clock seconds of each job.", ("loader_job",)
        )
        self.stage_seconds = histogram(
            "run_stage_seconds",
            "Busy seconds of each run by stage (stages overlap; `elapsed` is wall-clock).",
            ("loader_job", "stage"),
        )
        self.last_success = gauge(
            "job_last_success_timestamp_seconds",
            "Unix time the last job of this kind completed.",
            ("loader_job",),
        )
        self.backup_bytes = gauge(
            "backup_size_bytes", "Bytes of the last successful backup (its ledger included)."
        )
        self.backup_table_bytes = gauge(
            "backup_table_size_bytes", "Bytes of each table in the last backup.", ("table",)
        )
        self.backup_table_rows = gauge(
            "backup_table_rows", "Rows of each table in the last backup.", ("table",)
        )
        self.verify_success = gauge(
            "backup_verify_success", "1 if the last backup verify passed, 0 if it failed."
        )

    def _touch(self, *metrics: Any) -> None:
        self.touched.update(metric.describe()[0].name for metric in metrics)

    def record(self, started: Started, finished: Finished) -> None:
        """Count one ended job."""
        job = started.job.value
        status = STATUS[finished.ending]
        self.jobs.labels(job, status).inc()
        self.job_seconds.labels(job).observe(finished.seconds)
        self._touch(self.jobs, self.job_seconds)
        if finished.ending is Ending.COMPLETE:
            self.last_success.labels(job).set(finished.finished_at.timestamp())
            self._touch(self.last_success)
            if started.job is Job.MARTS_BUILD:
                self.marts_success = time.time()
        if finished.summary is not None:
            self._count_run(job, finished.summary)
        if started.job is Job.BACKUP and finished.backup is not None:
            if finished.ending is Ending.COMPLETE:
                self._count_backup(finished.backup)
        if started.job is Job.VERIFY:
            self.verify_success.set(finished.ending is Ending.COMPLETE)
            self._touch(self.verify_success)

    def _count_run(self, job: str, summary: Any) -> None:
        for stage, seconds in summary.seconds.items():
            self.stage_seconds.labels(job, stage_label(stage)).observe(seconds)
        for table in summary.tables:
            if table.table not in TABLES_BY_NAME:
                continue
            for state in STATES:
                self.batches.labels(table.table, state).inc(getattr(table, f"batches_{state}"))
            self.promoted.labels(table.table).inc(table.rows_promoted)
            self.held_back.labels(table.table).inc(table.rows_held_back)
            for reason, rows in table.reasons.items():
                self.rules.labels(table.table, *rule_labels(table.table, reason)).inc(rows)
        self._touch(self.stage_seconds, self.batches, self.promoted, self.held_back, self.rules)

    def _count_backup(self, backup: Any) -> None:
        self.backup_bytes.set(backup.bytes)
        for name, entry in backup.tables.items():
            if name in TABLES_BY_NAME:
                self.backup_table_bytes.labels(name).set(entry["bytes"])
                self.backup_table_rows.labels(name).set(entry["rows"])
        self._touch(self.backup_bytes, self.backup_table_bytes, self.backup_table_rows)


class MartsAge(Collector):
    """Seconds since the last successful marts build this process saw (absent before one):
    computed when scraped, so only a served endpoint has it."""

    def __init__(self, metrics: JobMetrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        age = GaugeMetricFamily(
            PREFIX + "marts_age_seconds",
            "Seconds since the last successful marts build (refresh) this process saw.",
        )
        if self.metrics.marts_success is not None:
            age.add_metric([], time.time() - self.metrics.marts_success)
        yield age


class Touched(Collector):
    """The families of `metrics` that have been given a value: what is pushed and written."""

    def __init__(self, metrics: JobMetrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for family in self.metrics.registry.collect():
            if family.name in self.metrics.touched and family.samples:
                yield family


class MetricsObserver(Observer):
    """Counts every job it hears. Pushes (Pushgateway) and writes (textfile) at `close()`, and
    for long-lived processes (`watch`, backup schedules) after each job too; serves /metrics
    while `watch` runs with a metrics port (`serve` starts its endpoint with the server)."""

    name = "metrics"

    def __init__(self, settings: Settings, process: Process):
        from loader.observe.setup import Process

        self.settings = settings
        self.process = process
        self.metrics = JobMetrics()
        # What is served: the jobs' metrics given a value, and what is computed when scraped.
        self.registry = CollectorRegistry()
        self.registry.register(Touched(self.metrics))
        self.registry.register(MartsAge(self.metrics))
        self.group: str | None = None  # the Pushgateway's job: the first job this process ran
        self.publish_each = process in (Process.WATCH, Process.BACKUP)
        self.server: MetricsServer | None = None
        self.failing = False  # the last publish failed (said once, until one succeeds)

    @classmethod
    def for_settings(cls, settings: Settings, process: Process) -> MetricsObserver | None:
        """The observer `process` needs, or None: `serve` with a metrics port; `watch` with a
        port, a Pushgateway or a textfile (serving its port from now on); runs and backups with
        a Pushgateway or a textfile."""
        from loader.observe.setup import Process

        sends = settings.pushgateway_url is not None or settings.metrics_file is not None
        wanted = {
            Process.SERVE: settings.metrics_port is not None,
            Process.WATCH: settings.metrics_port is not None or sends,
        }.get(process, sends)
        if not wanted:
            return None
        observer = cls(settings, process)
        if process is Process.WATCH and settings.metrics_port is not None:
            from loader.observe.metrics_http import MetricsServer, access_for

            observer.server = MetricsServer(
                observer.registry, access_for(settings), WATCHER_HOST, settings.metrics_port
            ).start()
        return observer

    @classmethod
    def in_hub(cls, observers: Any) -> MetricsObserver | None:
        """The metrics observer among a hub's observers, if it has one."""
        return next((o for o in observers.observers if isinstance(o, cls)), None)

    def started(self, started: Started) -> None:
        if self.group is None and started.parent is None:
            self.group = f"csv_migrate_{started.job.value}"

    def finished(self, started: Started, finished: Finished) -> None:
        self.metrics.record(started, finished)
        if self.publish_each and started.parent is None:
            self.publish_or_warn()

    def close(self) -> None:
        try:
            self.publish_or_warn()
        finally:
            if self.server is not None:
                self.server.stop()

    def publish_or_warn(self) -> None:
        """Publish; a failure is one warning until a publish succeeds again (a watch or a
        schedule whose Pushgateway is down for a day says so once), never an error."""
        try:
            self.publish()
        except Exception as error:  # noqa: BLE001 - metrics never fail the work
            level = logging.DEBUG if self.failing else logging.WARNING
            self.failing = True
            log.log(level, "%s: %s", self.name, describe(error), extra={"event": "observer.failed"})
        else:
            if self.failing:
                log.info("%s: working again", self.name, extra={"event": "observer.back"})
            self.failing = False

    def publish(self) -> None:
        """Write the textfile, then push: raises when the file cannot be written, or the
        Pushgateway is down, slow or refuses (after the file is written)."""
        from loader.observe.metrics_publish import push, write_textfile

        if self.group is None:  # no job ran: nothing to say
            return
        touched = Touched(self.metrics)
        if self.settings.metrics_file is not None:
            write_textfile(self.settings.metrics_file, touched)
        if self.settings.pushgateway_url is not None:
            push(
                self.settings.pushgateway_url,
                self.group,
                touched,
                self.settings.metrics_timeout_seconds,
            )
