"""Named points where a fault test may have the process killed, to show that a crash there
loses and doubles nothing.

`LOADER_KILL_AT=<point>[:<n>]` (a setting meant for tests only) sends SIGKILL to this process
the n-th time (default the first) it passes `<point>`: no handler, no `finally`, no flush runs,
as when the machine loses power or the OOM killer strikes.
"""

from __future__ import annotations

import os
import signal
import threading

AFTER_VERDICT = "after_verdict"  # a chunk's verdicts taken from GX, its batches not settled
AFTER_RAW_LOAD = "after_raw_load"  # a land of chunks in raw, not handed to settling
BEFORE_COMMIT = "before_commit"  # a batch's rows and ledger row written, not committed
AFTER_COMMIT = "after_commit"  # a batch's settlement committed, the next not begun
POINTS = (AFTER_VERDICT, AFTER_RAW_LOAD, BEFORE_COMMIT, AFTER_COMMIT)


class KillPoints:
    """Counts passes through the point asked for (a spec validated by the settings) and kills
    the process there."""

    def __init__(self, spec: str | None):
        point, _, count = (spec or "").partition(":")
        self.point, self.at = point or None, int(count or 1)
        self.passes = 0
        self._count = threading.Lock()

    def reach(self, point: str) -> None:
        if point != self.point:
            return
        with self._count:  # the settle line's lanes pass here from threads of their own
            self.passes += 1
            if self.passes == self.at:
                os.kill(os.getpid(), signal.SIGKILL)


NOWHERE = KillPoints(None)
