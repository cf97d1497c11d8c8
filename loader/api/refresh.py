"""Debounced background rebuilds of the marts (and the GX data docs) after accepted writes.

A `dbt build` takes seconds of CPU whatever changed, and the server has few cores: building
after every accepted request would take them from the requests still coming. So a build waits
until the writes calm down (no accepted write for QUIET_SECONDS), and a burst becomes one build
after it. Under writes that never pause, a build starts anyway once the oldest write not in the
marts is STALE_SECONDS old: the reports' `as_of` is never further behind than that plus one
build. Writes accepted while a build runs lead to one more build.

dbt runs in a child process (`python -m loader marts`): dbt keeps global state and is not meant
to share a process with a threaded server.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from loader.db.connect import libpq_environment

log = logging.getLogger("loader.api")
QUIET_SECONDS = 2.0
STALE_SECONDS = 30.0
# The server's own metrics count its refreshes: the child neither pushes nor writes its own.
NOT_FOR_THE_CHILD = ("LOADER_PUSHGATEWAY_URL", "LOADER_METRICS_FILE")


class MartsRefresher:
    """`clock` (seconds, monotonic) and `wait` (block up to that many seconds, or until `stop`)
    are the thread's sense of time: a test gives its own to run the debounce on a clock it
    turns. `built` hears each build's seconds and success (the metrics)."""

    def __init__(
        self,
        url: str,
        environment: dict[str, str],
        after_build: Callable[[], object] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], object] | None = None,
        built: Callable[[float, bool], object] = lambda seconds, success: None,
    ):
        self.url = url
        self.environment = environment
        self.after_build = after_build
        self.built = built
        self.clock = clock
        self.wanted = threading.Event()
        self.stopping = threading.Event()
        self.wait = wait or self.stopping.wait
        self._times = threading.Lock()
        self._first = self._last = 0.0  # the oldest and newest write not in the marts
        self.thread = threading.Thread(target=self._loop, name="marts-refresher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.wanted.set()

    def request(self) -> None:
        """Call after a write was committed that the marts should show."""
        with self._times:
            self._last = self.clock()
            if not self.wanted.is_set():
                self._first = self._last
            self.wanted.set()

    @property
    def behind(self) -> bool:
        """Whether writes are waiting for a build (one not started yet)."""
        return self.wanted.is_set()

    def wait_until_due(self) -> bool:
        """Block until writes are waiting and their build is due: True, and writes from here
        on wait for the next build. False once the refresher is stopping."""
        self.wanted.wait()
        while not self.stopping.is_set() and (remaining := self._until_due()) > 0:
            self.wait(remaining)
        if self.stopping.is_set():
            return False
        with self._times:
            self.wanted.clear()  # writes from here on are after the build's start
        return True

    def _loop(self) -> None:
        while self.wait_until_due():
            self._build()

    def _until_due(self) -> float:
        with self._times:
            due = min(self._last + QUIET_SECONDS, self._first + STALE_SECONDS)
        return due - self.clock()

    def _build(self) -> None:
        inherited = {k: v for k, v in os.environ.items() if k not in NOT_FOR_THE_CHILD}
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "loader", "marts"],
            capture_output=True,
            text=True,
            check=False,
            env={
                **inherited,
                **self.environment,
                "DATABASE_URL": self.url,
                **libpq_environment(self.url),
            },
        )
        if result.returncode != 0:
            log.error("marts refresh failed: %s", result.stderr.strip()[-500:])
        try:
            self.built(time.monotonic() - started, result.returncode == 0)
        except Exception as error:  # noqa: BLE001 - metrics must not stop the refresher
            log.error("marts refresh not counted: %s", error)
        try:
            self.after_build()
        except Exception as error:  # noqa: BLE001 - docs must not stop the refresher
            log.error("data docs build failed: %s", error)
