"""Where a run's metrics go when nobody scrapes the process: a Prometheus Pushgateway, or a file
for node_exporter's textfile collector.

Both add to what is there rather than replace it (the Pushgateway's POST, into a group per
kind of job; the file's series this process did not set are kept): a failed backup's push must
not erase the last good backup's time, which an operator alerts on.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import generate_latest, pushadd_to_gateway
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector


def push(url: str, group: str, metrics: Collector, timeout: float) -> None:
    """POST `metrics` to the Pushgateway at `url` under the job `group`; raises when it is
    down, refuses, or takes more than `timeout` seconds to answer."""
    pushadd_to_gateway(url, job=group, registry=metrics, timeout=timeout)


class _Families(Collector):
    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def write_textfile(path: Path, metrics: Collector) -> None:
    """Write `metrics` to `path` with the series already there that `metrics` lacks (another
    command's: a verify keeps the backup's), atomically: a temporary file in the same folder,
    renamed over it (node_exporter never reads half a file). Writers take turns (a lock file
    beside it), so two commands sharing a file both keep their series."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (path.parent / f".{path.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = generate_latest(_Families(_merged(list(metrics.collect()), _read(path))))
        handle, temporary = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
        )
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(text)
            os.chmod(temporary, 0o644)  # node_exporter runs as its own user
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _merged(fresh: list[Metric], old: list[Metric]) -> list[Metric]:
    """`fresh` with the samples of `old` it has no sample of the same name and labels for."""
    owner = {}
    for family in fresh:
        # A counter's or histogram's `_created` series reads back as a family of its own.
        owner[family.name] = owner[f"{family.name}_created"] = family
    have = {(s.name, tuple(sorted(s.labels.items()))) for family in fresh for s in family.samples}
    kept = []
    for family in old:
        target = owner.get(family.name)
        if target is None:
            kept.append(family)
            continue
        for sample in family.samples:
            if (sample.name, tuple(sorted(sample.labels.items()))) not in have:
                target.samples.append(sample)
    return fresh + kept


def _read(path: Path) -> list[Metric]:
    """The families in the file at `path`; none when it is missing or unreadable as metrics."""
    try:
        return list(text_string_to_metric_families(path.read_text()))
    except (OSError, ValueError):
        return []
