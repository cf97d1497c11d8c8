"""Prometheus metrics (prometheus-client): counters of batches, rows and rules, run and build
durations, backup gauges; pushed, written for node_exporter, or served."""

from __future__ import annotations

from loader.observe.events import Observer
from loader.settings import Settings


class MetricsObserver(Observer):
    name = "metrics"

    @classmethod
    def for_settings(cls, settings: Settings, process) -> MetricsObserver | None:
        return None
