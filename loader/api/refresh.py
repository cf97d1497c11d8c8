"""Coalesced background rebuilds of the marts (and the GX data docs) after accepted writes.

Any number of requests while a build runs lead to exactly one more build. dbt runs in a child
process (`python -m loader marts`): dbt keeps global state and is not meant to share a process
with a threaded server.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

from loader.db.connect import libpq_environment

log = logging.getLogger("loader.api")


class MartsRefresher:
    def __init__(self, url: str, environment: dict[str, str], after_build=lambda: None):
        self.url = url
        self.environment = environment
        self.after_build = after_build
        self.wanted = threading.Event()
        self.stopping = threading.Event()
        self.builds = 0
        self.thread = threading.Thread(target=self._loop, name="marts-refresher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.wanted.set()

    def request(self) -> None:
        self.wanted.set()

    def _loop(self) -> None:
        while True:
            self.wanted.wait()
            if self.stopping.is_set():
                return
            self.wanted.clear()
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
            self.builds += 1
            if result.returncode != 0:
                log.error("marts refresh failed: %s", result.stderr.strip()[-500:])
            try:
                self.after_build()
            except Exception as error:  # noqa: BLE001 - docs must not stop the refresher
                log.error("data docs build failed: %s", error)
