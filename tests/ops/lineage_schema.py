"""The OpenLineage spec's JSON schemas (tests/ops/openlineage_spec, dbt's facets from
openlineage-integration-common), and an event validated against them: nothing is fetched."""

from __future__ import annotations

import json
from pathlib import Path

import openlineage.common
from jsonschema import Draft202012Validator
from openlineage.common.schema import GITHUB_LOCATION
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).parent / "openlineage_spec"
RUN_EVENT = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
# dbt's own facets: their schemas ship with openlineage-integration-common.
DBT_SCHEMAS = Path(openlineage.common.__file__).parent / "schema"


def spec_registry() -> Registry:
    """The spec's schemas by their $id, and dbt's facets' also by the URL their facets name
    (GITHUB_LOCATION); a schema not here is never fetched."""
    resources = []
    for path in [SPEC / "OpenLineage.json", *sorted((SPEC / "facets").glob("*.json"))]:
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], resource(schema)))
    for path in sorted(DBT_SCHEMAS.glob("dbt-*.json")):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], resource(schema)))
        resources.append((GITHUB_LOCATION + path.name, resource(schema)))
    return Registry().with_resources(resources)


def resource(schema: dict) -> Resource:
    return Resource.from_contents(schema, default_specification=DRAFT202012)


REGISTRY = spec_registry()


def validate(event: dict) -> None:
    """The event against the spec's RunEvent, and every facet against its own schema: all of
    the spec's facets must be known here; only dbt's own may lean on a schema we do not ship."""
    Draft202012Validator({"$ref": RUN_EVENT}, registry=REGISTRY).validate(event)
    datasets = [*event.get("inputs", []), *event.get("outputs", [])]
    facet_groups = [event["run"].get("facets", {}), event["job"].get("facets", {})]
    for dataset in datasets:
        facet_groups += [dataset.get(key, {}) for key in ("facets", "inputFacets", "outputFacets")]
    for facets in facet_groups:
        for name, facet in facets.items():
            url = facet["_schemaURL"]
            try:
                Draft202012Validator({"$ref": url}, registry=REGISTRY).validate(facet)
            except Unresolvable:
                if url.startswith("https://openlineage.io/spec/facets/"):
                    raise AssertionError(f"facet {name}: no schema for {url}") from None
