"""The settle line's threads, without a database: stand-ins for its connections and for the
settlement engine show that a lane's failure stops the other lanes after the batch each is
settling, and reaches the run's thread at `close`."""

from __future__ import annotations

import threading

import pytest

from loader.flow.model import BatchInfo, BatchState, Settlement, Verdict
from loader.flow.runtime.kill_points import NOWHERE
from loader.flow.settle import line as settle_line
from loader.flow.settle.line import SettleLine
from loader.settings import Policy
from loader.tables import DEPARTMENTS

WAIT_SECONDS = 30  # waited out only by a line that no longer stops


class Refused(Exception):
    """What the failing batch's settlement raises."""


def item(batch_id: str, low: int, high: int):
    batch = BatchInfo(batch_id, DEPARTMENTS.name, "departments.csv", low, high, 1)
    return DEPARTMENTS, batch, Verdict(batch_id), (low, high)


class Connection:
    """Stands in for a psycopg connection: the line only closes it."""

    def __init__(self):
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_a_failing_lane_stops_the_other_lanes_after_their_current_batch(monkeypatch):
    # "slow" and "after" share keys (one lane, in file order); "refused" is a lane of its own.
    slow, refused, after = item("slow", 1, 10), item("refused", 100, 100), item("after", 5, 6)
    settled: list[str] = []
    settling = threading.Event()
    line: SettleLine | None = None

    class Settler:
        """Stands in for the settlement engine on one connection."""

        def __init__(self, conn, run_id, policy, kill):
            self.conn = conn

        def settle(self, table, batch, verdict):
            if batch.batch_id == "refused":
                assert settling.wait(WAIT_SECONDS), "the other lane began its batch"
                raise Refused("the database refused the batch")
            if batch.batch_id == "slow":
                settling.set()
                # Still settling when the other lane fails: the line's stop flag is set by the
                # failing lane right after its error, and is what the lanes look at.
                assert line._stop.wait(WAIT_SECONDS), "the failing lane stopped the line"
            return Settlement(batch, BatchState.PROMOTED, 1, 0)

        def settle_together(self, table, passed):
            # Groups of one here: "slow" and "after" share keys, so they never share a group.
            assert len(passed) == 1
            return [self.settle(table, *passed[0])]

    conns: list[Connection] = []

    def connect(url, autocommit):
        conns.append(Connection())
        return conns[-1]

    monkeypatch.setattr(settle_line, "connect", connect)
    monkeypatch.setattr(settle_line, "Settler", Settler)
    line = SettleLine(
        "unused",
        2,
        "run",
        Policy.REJECT_BATCH,
        NOWHERE,
        lambda t, s: settled.append(s.batch.batch_id),
    )
    line.put([slow, refused, after])
    with pytest.raises(Refused):
        line.close()
    assert settled == ["slow"], "the batch being settled finished; the one after it did not"
    assert all(conn.closed for conn in conns)
