"""Throttling of failed authentication per client address, against token guessing.

An address that presented `limit` unknown tokens within the last `window` seconds is refused
(429 with Retry-After) until the oldest of those failures leaves the window, whatever token it
sends meanwhile: a guesser must not learn that a guess was right. Other addresses are not
affected. The record is in memory, per server process, and bounded in size.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable


class FailureThrottle:
    def __init__(
        self,
        limit: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = 10_000,
    ):
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_addresses = max_addresses
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int | None:
        """Whole seconds until `address` may authenticate again, or None if it may now."""
        with self._lock:
            failures = self._recent(address)
            if failures is None or len(failures) < self.limit:
                return None
            return max(1, math.ceil(failures[0] + self.window - self.clock()))

    def failed(self, address: str) -> None:
        """Count one failed authentication from `address`."""
        with self._lock:
            failures = self._recent(address)
            if failures is None:
                if len(self._failures) >= self.max_addresses:
                    self._forget_oldest()
                failures = self._failures[address] = deque()
            failures.append(self.clock())
            while len(failures) > self.limit:
                failures.popleft()

    def _recent(self, address: str) -> deque[float] | None:
        failures = self._failures.get(address)
        if failures is None:
            return None
        horizon = self.clock() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        return failures

    def _forget_oldest(self) -> None:
        horizon = self.clock() - self.window
        expired = [a for a, f in self._failures.items() if not f or f[-1] <= horizon]
        for address in expired:
            del self._failures[address]
        if len(self._failures) >= self.max_addresses:
            # Still full of live records: drop the address whose last failure is oldest.
            del self._failures[min(self._failures, key=lambda a: self._failures[a][-1])]
