"""The API server's metrics, beside those of the runs it settles (`loader.observe.metrics`):
requests by route template and status, their latency, refused requests by reason, Idempotency-Key
replays, gate process restarts, the connection pool's use, marts refreshes. Read from the
services when scraped; served on the metrics port from the server's start to its stop.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from fastapi import FastAPI
from prometheus_client import Counter
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator import metrics as http_metrics

from loader.observe.events import Ending, Finished, Job, Started
from loader.observe.metrics import PREFIX, MetricsObserver

if TYPE_CHECKING:
    from loader.api.services import Access, Services
    from loader.observe.metrics_http import MetricsServer

# Why a request was refused before it was settled, by the status it was answered with.
REFUSED = {413: "body_too_large", 422: "malformed", 429: "auth_throttled"}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ApiMetrics:
    """The server's metrics: the observer's registry with the API's collectors added, and the
    /metrics endpoint on `host:port` while the server runs."""

    def __init__(self, observer: MetricsObserver, host: str, port: int):
        self.observer = observer
        self.registry = observer.registry
        self.host, self.port = host, port
        self.server: MetricsServer | None = None
        self.refused = Counter(
            PREFIX + "http_requests_refused_total",
            "Requests refused before any work, by reason: body_too_large (413), malformed "
            "(422), auth_throttled (429).",
            ("reason",),
            registry=self.registry,
        )

    def instrument(self, app: FastAPI, services: Services) -> None:
        """Count `app`'s requests (outermost middleware: it sees the limits' answers too) and
        read `services` at each scrape."""
        instrumentator = Instrumentator(
            should_group_status_codes=False,
            should_group_untemplated=True,  # a path no route has is `none`, never itself
            registry=self.registry,
        )
        instrumentator.add(
            http_metrics.requests(
                metric_name=PREFIX + "http_requests_total",
                metric_doc="Requests answered, by route template and status code.",
                should_include_method=False,
                registry=self.registry,
            ),
            http_metrics.latency(
                metric_name=PREFIX + "http_request_duration_seconds",
                metric_doc="Seconds from a request's arrival to its answer, by route template.",
                should_include_method=False,
                should_include_status=False,
                buckets=LATENCY_BUCKETS,
                registry=self.registry,
            ),
            self._count_refused,
        )
        instrumentator.instrument(app)
        self.registry.register(ServicesCollector(services))

    def _count_refused(self, info: http_metrics.Info) -> None:
        reason = REFUSED.get(info.response.status_code if info.response else 0)
        if reason is not None:
            self.refused.labels(reason).inc()

    def marts_refreshed(self, seconds: float, success: bool) -> None:
        """One marts refresh (a `python -m loader marts` child) took `seconds`."""
        ending = Ending.COMPLETE if success else Ending.FAIL
        refresh = Started(Job.MARTS_BUILD, "refresh")
        self.observer.finished(refresh, Finished(ending, seconds=seconds))

    def start(self, access: Access) -> None:
        from loader.observe.metrics_http import MetricsServer

        self.server = MetricsServer(self.registry, access, self.host, self.port).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


class ServicesCollector(Collector):
    """What the services know, read when scraped."""

    def __init__(self, services: Services):
        self.services = services

    def collect(self) -> Iterator[Metric]:
        services = self.services
        yield _counter(
            "idempotent_replays",
            "Requests answered with the answer stored under their Idempotency-Key.",
            services.idempotency.replays,
        )
        yield _counter(
            "gate_restarts",
            "Times the GX gate process was found dead and started again.",
            services.settler.gate.gate.restarts,
        )
        in_use, waiting = services.pool.usage()
        yield _gauge("db_pool_connections_in_use", "Pooled connections lent out.", in_use)
        yield _gauge(
            "db_pool_requests_waiting", "Requests waiting for a pooled connection.", waiting
        )
        yield _gauge("db_pool_connections_max", "The pool's bound.", services.pool.size)


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, text, value=value)


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, text, value=value)
