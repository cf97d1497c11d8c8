"""A Dask worker plugin that tells a test, as scheduler events, when a worker starts judging a
share and when it has judged one: the moment to kill that worker, and the proof that Dask ran
the killed worker's share again on another one.

Workers import this module by name (the plugin travels pickled by reference), so they must
have the repository on their PYTHONPATH.
"""

from __future__ import annotations

import os

from distributed.diagnostics.plugin import WorkerPlugin

TOPIC = "judge_share"
STARTED, JUDGED = "executing", "memory"  # a worker's task states: running, result held


class JudgingEvents(WorkerPlugin):
    """Logs `{key, state, worker, pid}` on TOPIC as each `judge_share` task starts and ends."""

    name = "judging-events"

    def setup(self, worker) -> None:
        self.worker = worker

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish in (STARTED, JUDGED) and str(key).startswith("judge_share"):
            self.worker.log_event(
                TOPIC,
                {
                    "key": str(key),
                    "state": finish,
                    "worker": self.worker.address,
                    "pid": os.getpid(),
                },
            )
