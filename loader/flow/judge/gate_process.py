"""The GX gate of a file run in a process of its own, so that checkpoints run on the second core
while the run's process reads the next chunk, lands the last one in raw and settles.

A checkpoint is Python (GX builds and resolves a metric graph for every expectation: about half
of a run's CPU on one million rows), and Python runs one thread at a time: in the run's own
process the gate was the run's critical path while a core waited. One chunk is judged ahead at
most (`pipeline.Run` collects a chunk's verdicts before it lands it), so memory holds one more
chunk and the ledger's promises do not change: a verdict is still known before its batch lands
or settles.

The process is forked before the run starts any thread, and imports Great Expectations itself
(about 1.2 s, `gx_import`): the run's process never imports GX, and goes on setting up, listing
and reading while its gate gets ready on the other core. The first chunk's verdict waits for
that, not the run's start. The gate dies with the run (Linux's parent-death signal), and a
checkpoint failing in it is raised in the run as it would be in-process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pyarrow as pa

from loader.flow.model import Judged
from loader.flow.runtime import heap
from loader.tables import Table, table_named

PR_SET_PDEATHSIG = 1  # linux/prctl.h
T = TypeVar("T")

if TYPE_CHECKING:  # imported by the child alone: see the module
    from loader.flow.judge.checkpoints import InProcessGate

_gate: InProcessGate | None = None  # the child's gate


class ForkedGate:
    """A `Gate` whose checkpoints and data docs run in a forked child process."""

    def __init__(self, context_dir: Path, state_dir: Path):
        self._places = (context_dir, state_dir)
        self._pool = self._start()
        self.restarts = 0  # dead gate processes replaced (a server's metrics read it)

    def submit(
        self, table: Table, chunk: pa.Table, batch_ids: list[str], known_ids: dict[str, list[int]]
    ) -> Future[Judged]:
        return self._submit(_check, table.name, chunk, batch_ids, known_ids)

    def build_docs(self) -> Path:
        return self.submit_docs().result()

    def submit_docs(self) -> Future[Path]:
        """The data docs built while this process goes on (a run's last lands and settling)."""
        return self._submit(_build_docs)

    def _start(self) -> ProcessPoolExecutor:
        # pandas before the fork: both processes use it (the gate for its frames, dlt here),
        # and imported once its pages are shared instead of each process holding a copy
        # (12-17 MB less Pss for the run and its gate, measured on 1M rows 2026-12-07).
        import pandas  # noqa: F401

        pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_open_gate,
            initargs=(*self._places, os.getpid()),
        )
        # The fork happens at the first submit: now, while this process has one thread (a
        # run's, or a server's before it serves), its imported objects frozen so that neither
        # process's collector copies their pages. Not waited for: the child imports GX while
        # this process goes on; work submitted meanwhile waits in the pool's queue.
        heap.freeze()
        self._warm = pool.submit(_ready)
        return pool

    def _submit(self, work: Callable[..., T], *arguments) -> Future[T]:
        """`work(*arguments)` in the gate process; a gate that died (the OOM killer, a stray
        kill) is replaced by a new one first, so that a long-lived server does not fail every
        request after it: what the dead one was judging fails, the next work succeeds."""
        try:
            if not self.alive():
                raise BrokenProcessPool("the gate process died")
            return self._pool.submit(work, *arguments)
        except BrokenProcessPool:
            self._pool.shutdown(wait=False)
            self._pool = self._start()
            self.restarts += 1
            return self._pool.submit(work, *arguments)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def warm(self) -> bool:
        """The child has imported GX and opened the context: a verdict asked now takes a
        check's time, not an import's (about 1.2 s)."""
        return self.alive() and self._warm.done()

    def alive(self) -> bool:
        """The child is still there: a gate killed between two requests is replaced before the
        next one rather than failing it, before the pool itself has noticed the death."""
        processes = getattr(self._pool, "_processes", None) or {}
        return all(process.is_alive() for process in processes.values())


def _open_gate(context_dir: Path, state_dir: Path, parent: int) -> None:
    global _gate
    _die_with_parent(parent)
    from loader.flow.judge.gx_import import in_process_gate

    _gate = in_process_gate(context_dir, state_dir)
    # GX's modules and the context, imported here, out of the collections `heap.trim` makes
    # after every check (unfrozen, each one walked them all: 0.17 s a chunk).
    heap.freeze()


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when the run's process dies (a SIGKILLed run must not
    leave a gate behind); elsewhere the child ends when its task queue closes."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the run died before the request was made
        os._exit(1)


def _ready() -> bool:
    return _gate is not None


def _check(
    table_name: str, chunk: pa.Table, batch_ids: list[str], known_ids: dict[str, list[int]]
) -> Judged:
    started = time.perf_counter()
    verdicts = _gate.check(table_named(table_name), chunk, batch_ids, known_ids)
    judged = Judged(verdicts, time.perf_counter() - started)
    heap.trim()  # GX's frames and results, freed now rather than kept as the input grows
    return judged


def _build_docs() -> Path:
    return _gate.build_docs()
