"""Which observers a process has: chosen here once, from the settings and the environment.

JSON logs when `LOADER_LOG_FORMAT=json`; Prometheus metrics when the process serves them
(`serve`, `watch` with a metrics port) or has somewhere to send them (Pushgateway, textfile);
OpenLineage when it is configured the standard way (`OPENLINEAGE_URL`, `OPENLINEAGE_CONFIG`,
`openlineage.yml`). A process with none of these has a hub that tells nobody.
"""

from __future__ import annotations

from enum import StrEnum

from loader.observe.events import Observers
from loader.settings import LogFormat, Settings


class Process(StrEnum):
    """The kind of process: what its metrics are (pushed once, or served while it lives)."""

    RUN = "run"  # a file run, the marts build, `rejects`: one job, then exit
    WATCH = "watch"
    SERVE = "serve"
    BACKUP = "backup"  # create, restore, verify, schedule


def observers_for(settings: Settings, process: Process) -> Observers:
    """The hub of this process's observers; `close()` it when the process is done."""
    from loader.observe.lineage import LineageObserver
    from loader.observe.metrics import MetricsObserver

    hub = Observers()
    if settings.log_format == LogFormat.JSON:
        from loader.observe.logs import LogObserver

        hub.add(LogObserver())
    metrics = MetricsObserver.for_settings(settings, process)
    if metrics is not None:
        hub.add(metrics)
    lineage = LineageObserver.from_environment(settings)
    if lineage is not None:
        hub.add(lineage)
    return hub
