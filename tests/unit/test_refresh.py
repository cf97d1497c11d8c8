"""The marts refresher's debounce, on a clock the test turns: the refresher's waits pass in
virtual time, during which the test's writes keep coming or not."""

from __future__ import annotations

import math
import threading

import pytest

from loader.api.refresh import QUIET_SECONDS, STALE_SECONDS, MartsRefresher

WRITE_EVERY_MS = 50


class Writes:
    """Virtual time in whole milliseconds, and a writer that (while `on`) requests a build every
    50 ms of it. `wait` is the refresher's: the time it waits passes, and writes with it."""

    def __init__(self):
        self.ms = 0
        self.on = False
        self.next_write = 0
        self.refresher: MartsRefresher | None = None

    def clock(self) -> float:
        return self.ms / 1000

    def write(self) -> None:
        self.refresher.request()
        self.next_write = self.ms + WRITE_EVERY_MS

    def wait(self, seconds: float) -> None:
        target = self.ms + math.ceil(seconds * 1000)
        assert target <= 10 * STALE_SECONDS * 1000, "no build while the writes went on"
        while self.on and self.next_write <= target:
            self.ms = self.next_write
            self.write()
        self.ms = target

    def burst(self, count: int) -> float:
        """`count` writes 50 ms apart, then quiet; when the last one was made."""
        for _ in range(count):
            self.write()
            last = self.clock()
            self.ms += WRITE_EVERY_MS
        return last


@pytest.fixture()
def writes() -> Writes:
    made = Writes()
    made.refresher = MartsRefresher("postgresql://unused", {}, clock=made.clock, wait=made.wait)
    return made


def test_a_burst_of_writes_is_one_build_once_they_calm_down(writes):
    last = writes.burst(10)
    assert writes.refresher.wait_until_due()
    assert writes.clock() == pytest.approx(last + QUIET_SECONDS, abs=0.001), (
        "the build starts once the writes calmed down, not before"
    )
    assert not writes.refresher.behind, "the burst was one build"


def test_writes_that_never_pause_still_get_a_build_within_the_staleness_bound(writes):
    writes.on = True
    writes.write()
    first = writes.clock()
    assert writes.refresher.wait_until_due(), "no build while the writes went on"
    assert writes.clock() - first == pytest.approx(STALE_SECONDS, abs=0.001)
    second = writes.clock()
    writes.wait(WRITE_EVERY_MS / 1000)  # the writes go on after the build's start
    assert writes.refresher.behind
    assert writes.refresher.wait_until_due(), "the writes after the first build have their own"
    assert writes.clock() - second == pytest.approx(STALE_SECONDS, abs=WRITE_EVERY_MS / 1000)


def test_the_refresher_thread_builds_when_due_and_stops(writes):
    built = threading.Event()
    refresher = writes.refresher
    refresher._build = built.set
    refresher.start()
    refresher.request()
    assert built.wait(timeout=60), "the thread never built"
    assert writes.clock() >= QUIET_SECONDS, "not before the write calmed down"
    refresher.stop()
    refresher.thread.join(timeout=60)
    assert not refresher.thread.is_alive()
