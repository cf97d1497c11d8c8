"""Runs: GET /runs/{id}, a run's row in the ledger with its own summary."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from loader.api.deps import Conn, Reader
from loader.api.schemas import AUTH, RunRecord, errors
from loader.flow import ledger

router = APIRouter(prefix="/runs", tags=["runs"])


@router.get("/{run_id}", responses=errors(*AUTH, 404, 422, 503, 504))
def get_run(scope: Reader, run_id: str, conn: Conn) -> RunRecord:
    """A run's row in audit.runs, with its summary: the counts of what this run settled, which
    a later settlement of the same batches by another run does not change."""
    found = ledger.run_record(conn, run_id)
    if found is None:
        raise HTTPException(404, f"no run {run_id}")
    return RunRecord.model_validate(found)
