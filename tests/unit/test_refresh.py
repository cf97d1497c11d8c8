"""The marts refresher's debounce, with the build replaced by a note of when it started."""

from __future__ import annotations

import time

import pytest

from loader.api import refresh
from loader.api.refresh import MartsRefresher


@pytest.fixture()
def refresher(monkeypatch):
    monkeypatch.setattr(refresh, "QUIET_SECONDS", 0.3)
    monkeypatch.setattr(refresh, "STALE_SECONDS", 1.0)
    started = MartsRefresher("postgresql://unused", {})
    started.builds = []
    monkeypatch.setattr(started, "_build", lambda: started.builds.append(time.monotonic()))
    started.start()
    yield started
    started.stop()


def writes(refresher: MartsRefresher, seconds: float) -> float:
    """A write every 50 ms for `seconds`; when the last one was made (read before the call, so
    the refresher's own note of it is no earlier)."""
    end = time.monotonic() + seconds
    while True:
        made = time.monotonic()
        refresher.request()
        time.sleep(0.05)
        if time.monotonic() >= end:
            return made


def test_a_burst_of_writes_is_one_build_once_they_calm_down(refresher):
    last = writes(refresher, 0.5)
    time.sleep(1.0)
    assert len(refresher.builds) == 1
    assert refresher.builds[0] - last >= refresh.QUIET_SECONDS, "not before the writes calmed down"


def test_writes_that_never_pause_still_get_a_build_within_the_staleness_bound(refresher):
    first = time.monotonic()
    writes(refresher, 1.8)
    assert refresher.builds, "no build while the writes went on"
    assert refresher.builds[0] - first < 1.5
    time.sleep(0.8)
    assert len(refresher.builds) == 2, "the writes after the first build had one of their own"
