"""dbt's models and tests of one marts build as jobs of their own, the build their parent: the
events openlineage-dbt makes, built by its artifact processor from the build's manifest.json
and run_results.json (so they name jobs and datasets as dbt's own integration does)."""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path

from openlineage.client.event_v2 import RunEvent
from openlineage.common.provider.dbt.facets import ParentRunMetadata
from openlineage.common.provider.dbt.local import DbtLocalArtifactProcessor

from loader.settings import PROJECT_DIR

log = logging.getLogger("loader.observe.lineage")


class BuildArtifacts(DbtLocalArtifactProcessor):
    """The artifact processor, reading profiles.yml with the PG* variables of the database the
    build used (`variables`) rather than this process's environment, which the build restored."""

    def __init__(self, variables: dict[str, str], **kwargs):
        self.variables = variables  # before the base class reads dbt_project.yml with them
        super().__init__(**kwargs)

    def setup_jinja(self):
        environment = DbtLocalArtifactProcessor.setup_jinja()
        environment.globals["env_var"] = self.env_var_of_build
        return environment

    def env_var_of_build(self, name: str, default: str | None = None) -> str:
        if name in self.variables:
            return self.variables[name]
        return DbtLocalArtifactProcessor.env_var(name, default)


def model_events(
    target: Path | None,
    since: datetime,
    parent: ParentRunMetadata,
    variables: dict[str, str],
    producer: str,
    namespace: str,
) -> list[RunEvent]:
    """START and COMPLETE or FAIL of every model dbt ran and of every model's tests, from the
    artifacts in `target`; none when the build wrote none after `since` (dbt could not start)."""
    if target is None or not (target / "run_results.json").is_file():
        return []
    if datetime.fromtimestamp(os.path.getmtime(target / "run_results.json"), since.tzinfo) < since:
        return []  # an earlier build's
    artifacts = BuildArtifacts(
        variables,
        project_dir=str(PROJECT_DIR),
        target_path=str(target),
        producer=producer,
        job_namespace=namespace,
        skip_errors=True,
        logger=log,
    )
    artifacts.dbt_run_metadata = parent
    return list(artifacts.parse().events())
