"""The forked gate's child process SIGKILLed (the OOM killer, a stray kill): the work it held
fails, and the next submit starts another child, whose verdicts are the in-process gate's."""

from __future__ import annotations

import os
import signal
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from loader.flow.judge.checkpoints import InProcessGate
from loader.flow.judge.gate_process import ForkedGate
from loader.flow.source.csv_reader import to_arrow
from loader.settings import EXPECTATIONS_DIR
from loader.tables import HIRED_EMPLOYEES
from tests.unit.test_gate import GOOD, KNOWN, batch_of

SECONDS = 120  # a bound on GX's start in the new child, not a pause


def children() -> set[int]:
    """The pids of this process's children, read from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state_and_parent = stat.read_text().rpartition(")")[2].split()[:2]
        except OSError:  # ended while listed
            continue
        if int(state_and_parent[1]) == os.getpid():
            found.add(int(stat.parent.name))
    return found


def test_a_killed_gate_process_fails_its_work_and_the_next_submit_starts_another(tmp_path):
    batches = [
        batch_of([GOOD, ["8", None, *GOOD[2:]]], "b1"),  # line 2 has no name
        batch_of([["9", *GOOD[1:]]], "b2", first_line=3),
    ]
    chunk = to_arrow(HIRED_EMPLOYEES, batches, "run")
    ids = [batch.batch_id for batch in batches]
    before = children()
    gate = ForkedGate(EXPECTATIONS_DIR, tmp_path / "forked")
    try:
        (child,) = children() - before
        os.kill(child, signal.SIGSTOP)  # so the work below is surely unfinished when it dies
        in_flight = gate.submit(HIRED_EMPLOYEES, chunk, ids, KNOWN)
        os.kill(child, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            in_flight.result(timeout=SECONDS)

        judged = gate.submit(HIRED_EMPLOYEES, chunk, ids, KNOWN).result(timeout=SECONDS)
        (restarted,) = children() - before
        assert restarted != child
    finally:
        gate.close()
    assert children() == before, "close() ended the child"
    expected = InProcessGate(EXPECTATIONS_DIR, tmp_path / "in-process").check(
        HIRED_EMPLOYEES, chunk, ids, KNOWN
    )
    assert judged.verdicts == expected
    assert not expected["b1"].passed and expected["b2"].passed
