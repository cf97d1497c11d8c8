"""The settle line against a real PostgreSQL: when the database ends one of the line's
sessions, the failure of the thread settling on it is raised in the run's thread at its next
`put` or at `close`, and nothing queued after it is settled."""

from __future__ import annotations

import psycopg
import pytest

from loader.db.connect import connect
from loader.db.locks import table_lock
from loader.db.schema import ensure_schemas
from loader.flow.land import RawLoader
from loader.flow.ledger import new_run_id, open_run
from loader.flow.model import BatchInfo, Verdict
from loader.flow.runtime.kill_points import NOWHERE
from loader.flow.settle.lanes import lanes
from loader.flow.settle.line import SettleLine
from loader.flow.source.csv_reader import read_batches, to_arrow
from loader.settings import Policy
from loader.tables import DEPARTMENTS

pytestmark = pytest.mark.database

BATCHES = 8
GONE = "select pg_terminate_backend(%s, 30000)"  # returns once the session has ended


@pytest.fixture()
def landed(clean, tmp_path):
    """One-row departments batches landed in raw by a run of their own: the database, the run
    id, and the batches ready to settle, in file order."""
    path = tmp_path / DEPARTMENTS.file_name
    path.write_text("".join(f"{key},Department {key}\n" for key in range(1, BATCHES + 1)))
    batches = list(read_batches(path, DEPARTMENTS, 1))
    run_id = new_run_id()
    with connect(clean, autocommit=True) as conn:
        ensure_schemas(conn)
        open_run(conn, run_id, str(path), 1, Policy.REJECT_BATCH)
    arrow = to_arrow(DEPARTMENTS, batches, run_id)
    RawLoader(clean, tmp_path / "dlt").load({DEPARTMENTS: [arrow]})
    items = [
        (DEPARTMENTS, BatchInfo.of(batch), Verdict(batch.batch_id), (key, key))
        for key, batch in enumerate(batches, start=1)
    ]
    return clean, run_id, items


def line_of(url: str, run_id: str, connections: int, settled: list[str]) -> SettleLine:
    """A settle line that notes the id of each batch it settles in `settled`."""

    def note(table, settlement):
        settled.append(settlement.batch.batch_id)

    return SettleLine(url, connections, run_id, Policy.REJECT_BATCH, NOWHERE, note)


def ledger(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {row[0] for row in conn.execute("select batch_id from audit.batches")}


def ids(items) -> set[str]:
    return {item[1].batch_id for item in items}


def test_a_failure_is_raised_at_the_next_put_and_no_land_queued_after_it_is_settled(landed):
    url, run_id, items = landed
    settled: list[str] = []
    line = line_of(url, run_id, 1, settled)
    with psycopg.connect(url) as restore:
        # Held as a restore holds it, the table's lock keeps the first land's settlement
        # waiting while two more lands fill the line's queue.
        table_lock(restore, DEPARTMENTS.name, exclusive=True)
        line.put(items[0:1])
        line.put(items[1:2])
        line.put(items[2:3])  # returns once the line took the first land: two wait behind it
        restore.execute(GONE, (line.conns[0].info.backend_pid,))
        restore.rollback()
    with pytest.raises(psycopg.OperationalError):
        line.put(items[3:4])  # waits for room, which never comes: the line has failed
    with pytest.raises(psycopg.OperationalError):
        line.close()
    assert settled == [] and ledger(url) == set(), "nothing after the failure was settled"


def test_a_lane_threads_failure_is_raised_at_close_and_stops_its_lane_and_the_lands_after(
    landed,
):
    url, run_id, items = landed
    first, later = items[:6], items[6:]
    _, failing = lanes(first, [item[3] for item in first], [1] * len(first), 2)
    settled: list[str] = []
    line = line_of(url, run_id, 2, settled)
    with psycopg.connect(url, autocommit=True) as admin:
        # The second connection serves the lane settled on a thread of the line's pool.
        admin.execute(GONE, (line.conns[1].info.backend_pid,))
    try:
        with pytest.raises(psycopg.OperationalError):
            line.put(first)
            line.put(later)
            line.close()
    finally:
        line.stop()
    assert not ids(failing) & set(settled), "the failing lane settled nothing after its error"
    assert not ids(later) & set(settled), "nor did the line, once it had failed"
    assert ledger(url) == set(settled), "what the line reported settled is in the ledger"
