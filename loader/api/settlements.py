"""Batch settlements on threads of their own, so that they outlive a request that timed out.

A settlement is never cancelled once started: it runs to its end, stores its answer under its
Idempotency-Key, and a retry gets that answer. The threads are separate from the threadpool
that serves reads, so a burst of inserts queues here and never starves the report endpoints.
A thread mostly waits (holding no database connection) for `RequestSettler`, which settles
the requests waiting at once as one run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from loader.flow.api_run import MOST_BATCHES

log = logging.getLogger("loader.api")
T = TypeVar("T")
THREADS = MOST_BATCHES  # each request the settler may take into one run has a thread waiting


class SettlementThreads:
    def __init__(self, threads: int = THREADS):
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="settle")

    async def run(self, work: Callable[[], T]) -> T:
        """`work()` on a settlement thread; if the caller is cancelled, the work goes on."""
        future = self.executor.submit(work)
        future.add_done_callback(_log_unretrieved)
        return await asyncio.shield(asyncio.wrap_future(future))

    def shutdown(self) -> None:
        """Let queued and running settlements finish (they store their answers), then stop."""
        self.executor.shutdown(wait=True)


def _log_unretrieved(future: Future) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.debug("settlement ended with %r", future.exception())
