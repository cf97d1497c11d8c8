"""Backups: POST /backups and POST /tables/{table}/restore, the backup package's functions,
admin only."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from starlette.concurrency import run_in_threadpool

from backup.location import Location
from backup.store import BackupError
from loader.api.deps import Administrator, KnownTable, ServicesDep
from loader.api.schemas import AUTH, BackupMade, Restored, RestoredTable, RestoreRequest, errors

router = APIRouter(prefix="/backups", tags=["backups"])
# A restore replaces one table's rows from a backup: addressed by the table.
table_router = APIRouter(prefix="/tables/{table}", tags=["backups"])


@router.post("", status_code=201, responses=errors(*AUTH, 503, 504))
async def create(scope: Administrator, services: ServicesDep) -> BackupMade:
    """Back up every core table now, from one snapshot."""
    made = await run_in_threadpool(_location(services).create, services.url)
    return BackupMade(
        stamp=made.stamp, tables={name: entry["rows"] for name, entry in made.tables.items()}
    )


@table_router.post("/restore", responses=errors(*AUTH, 404, 409, 422, 503, 504))
async def restore(
    scope: Administrator,
    table: KnownTable,
    services: ServicesDep,
    body: RestoreRequest | None = None,
) -> Restored:
    """Replace a table's rows from a backup (newest by default), atomically."""
    body = body or RestoreRequest()
    location = _location(services)
    try:
        done = await run_in_threadpool(
            location.restore, services.url, table.name, body.from_stamp, body.with_dependents
        )
    except BackupError as error:
        raise HTTPException(409, str(error)) from None
    services.refresher.request()
    return Restored(
        restored=[RestoredTable(table=d.table, rows=d.rows, deleted=d.deleted) for d in done]
    )


def _location(services) -> Location:
    settings = services.settings
    return Location(settings.backups_at, settings.backups_staging, services.observers)
