"""The failed-authentication throttle, on a clock the test turns."""

from __future__ import annotations

from loader.api.throttle import FailureThrottle


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_refused_after_the_limit_until_its_oldest_failure_leaves_the_window():
    clock = Clock()
    throttle = FailureThrottle(limit=3, window=60, clock=clock)
    for _ in range(3):
        assert throttle.retry_after("10.0.0.1") is None
        throttle.failed("10.0.0.1")
        clock.now += 10
    assert throttle.retry_after("10.0.0.1") == 30  # the first failure was 30 s ago
    assert throttle.retry_after("10.0.0.2") is None, "other addresses are not affected"
    clock.now += 30
    assert throttle.retry_after("10.0.0.1") is None
    throttle.failed("10.0.0.1")
    assert throttle.retry_after("10.0.0.1") == 10


def test_the_record_stays_bounded_under_many_addresses():
    clock = Clock()
    throttle = FailureThrottle(limit=2, window=60, clock=clock, max_addresses=100)
    for number in range(1000):
        throttle.failed(f"10.0.{number // 256}.{number % 256}")
        throttle.failed(f"10.0.{number // 256}.{number % 256}")
        clock.now += 0.01
    assert len(throttle._failures) <= 100
    assert throttle.retry_after("10.0.3.231") is not None, "the newest are remembered"
