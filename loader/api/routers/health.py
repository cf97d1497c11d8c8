"""Probes, no token: GET /healthz says the process answers (liveness: restart it if not);
GET /readyz says whether it can do its work now (readiness: send it traffic or not), naming
every check that failed, with Retry-After on 503."""

from __future__ import annotations

import psycopg
from fastapi import APIRouter, Response

from loader.api.deps import ServicesDep
from loader.api.pool import PoolExhausted
from loader.api.schemas import Health, Readiness
from loader.db.connect import DatabaseUnavailable, reason_of
from loader.db.schema import pending

router = APIRouter(tags=["health"])
RETRY_AFTER_SECONDS = "5"
# The marts lag behind core by the oldest promotion their last build did not include.
MARTS_LAG = """
with built as (select max(built_at) as at from audit.mart_builds)
select extract(epoch from now() - min(runs.finished_at))
from audit.runs, built
where runs.finished_at > coalesce(built.at, '-infinity')
  and coalesce((runs.summary -> 'totals' ->> 'rows_promoted')::bigint, 0) > 0
"""


@router.get("/healthz")
def healthz() -> Health:
    """200 while the process answers; it checks nothing else (see /readyz)."""
    return Health(status="ok")


@router.get(
    "/readyz",
    responses={503: {"model": Readiness, "description": "a check failed: `checks` says which"}},
)
def readyz(services: ServicesDep, response: Response) -> Readiness:
    """200 when the database answers with every migration applied, the gate process is alive
    with GX imported (its first seconds are not ready: a request would wait for the import) and
    the marts are no further behind core than LOADER_MARTS_MAX_AGE_SECONDS; else 503 with
    each failed check named and `Retry-After`."""
    checks = {"gate": services.settler.gate_state()}
    try:
        with services.pool.connection() as conn:
            checks.update(_database_checks(conn, services.settings.marts_max_age_seconds))
    except PoolExhausted:
        checks["database"] = "busy: no free connection"
    except (DatabaseUnavailable, psycopg.OperationalError) as error:
        checks["database"] = f"unreachable: {reason_of(error)}"
    ready = all(result == "ok" for result in checks.values())
    if not ready:
        response.status_code = 503
        response.headers["Retry-After"] = RETRY_AFTER_SECONDS
    return Readiness(status="ready" if ready else "not ready", checks=checks)


def _database_checks(conn: psycopg.Connection, marts_max_age: float) -> dict[str, str]:
    checks = {"database": "ok"}
    missing = [f"{version:03d}_{name}" for version, name, _ in pending(conn)]
    checks["migrations"] = "ok" if not missing else "not applied: " + ", ".join(missing)
    if missing:
        return checks
    lag = conn.execute(MARTS_LAG).fetchone()[0]
    if lag is not None and lag > marts_max_age:
        checks["marts"] = (
            f"stale: rows promoted {lag:.0f} s ago are not in them yet (bound {marts_max_age:g} s)"
        )
    else:
        checks["marts"] = "ok"
    return checks
