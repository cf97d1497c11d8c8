"""GET /healthz: whether the database answers, for load balancers and probes (no token)."""

from __future__ import annotations

import psycopg
from fastapi import APIRouter, Response

from loader.api.deps import ServicesDep
from loader.api.pool import PoolExhausted
from loader.api.schemas import Health
from loader.db.connect import DatabaseUnavailable

router = APIRouter(prefix="/healthz", tags=["health"])


@router.get(
    "",
    responses={503: {"model": Health, "description": "database unreachable, or busy"}},
)
def healthz(services: ServicesDep, response: Response) -> Health:
    """200 when the database answers, 503 when it does not or every connection is busy."""
    try:
        with services.pool.connection() as conn:
            conn.execute("select 1")
    except (DatabaseUnavailable, psycopg.OperationalError):
        response.status_code = 503
        return Health(status="database unreachable")
    except PoolExhausted:
        response.status_code = 503
        return Health(status="busy")
    return Health(status="ok")
