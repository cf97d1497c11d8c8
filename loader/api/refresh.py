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

from loader.db.connect import libpq_environment

log = logging.getLogger("loader.api")
QUIET_SECONDS = 2.0
STALE_SECONDS = 30.0


class MartsRefresher:
    def __init__(self, url: str, environment: dict[str, str], after_build=lambda: None):
        self.url = url
        self.environment = environment
        self.after_build = after_build
        self.wanted = threading.Event()
        self.stopping = threading.Event()
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
            self._last = time.monotonic()
            if not self.wanted.is_set():
                self._first = self._last
            self.wanted.set()

    def _loop(self) -> None:
        while True:
            self.wanted.wait()
            while not self.stopping.is_set() and (wait := self._until_due()) > 0:
                self.stopping.wait(wait)
            if self.stopping.is_set():
                return
            with self._times:
                self.wanted.clear()  # writes from here on are after the build's start
            self._build()

    def _until_due(self) -> float:
        with self._times:
            due = min(self._last + QUIET_SECONDS, self._first + STALE_SECONDS)
        return due - time.monotonic()

    def _build(self) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "loader", "marts"],
            capture_output=True,
            text=True,
            check=False,
            env={
                **os.environ,
                **self.environment,
                "DATABASE_URL": self.url,
                **libpq_environment(self.url),
            },
        )
        if result.returncode != 0:
            log.error("marts refresh failed: %s", result.stderr.strip()[-500:])
        try:
            self.after_build()
        except Exception as error:  # noqa: BLE001 - docs must not stop the refresher
            log.error("data docs build failed: %s", error)
