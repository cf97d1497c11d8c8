"""POST /backups and POST /tables/{table}/restore: the backup package's functions, admin only."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from backup.restore import restore_table
from backup.store import BackupError, create_backup
from loader.api.deps import Admin
from loader.api.routers.batches import table_or_404
from loader.api.schemas import AUTH, BackupMade, Restored, RestoreRequest, errors

router = APIRouter(tags=["backups"])


@router.post("/backups", dependencies=[Admin], status_code=201, responses=errors(*AUTH, 503, 504))
async def create(request: Request) -> BackupMade:
    """Back up every core table now, from one snapshot."""
    state = request.app.state
    made = await run_in_threadpool(create_backup, state.url, state.settings.backup_path)
    return BackupMade(
        stamp=made.stamp, tables={name: entry["rows"] for name, entry in made.tables.items()}
    )


@router.post(
    "/tables/{table}/restore",
    dependencies=[Admin],
    responses=errors(*AUTH, 404, 409, 422, 503, 504),
)
async def restore(table: str, request: Request, body: RestoreRequest | None = None) -> Restored:
    """Replace a table's rows from a backup (newest by default), atomically."""
    table_or_404(table)
    body = body or RestoreRequest()
    state = request.app.state
    try:
        done = await run_in_threadpool(
            restore_table,
            state.url,
            state.settings.backup_path,
            table,
            body.from_stamp,
            body.with_dependents,
        )
    except BackupError as error:
        raise HTTPException(409, str(error)) from None
    state.refresher.request()
    return Restored(
        restored=[{"table": d.table, "rows": d.rows, "deleted": d.deleted} for d in done]
    )
