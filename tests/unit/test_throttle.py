"""The failed-authentication throttle, on a clock the test turns."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI

from loader.api.deps import Reader, access
from loader.api.services import Access
from loader.api.throttle import FailureThrottle
from loader.api.tokens import parse_tokens


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


def test_a_throttled_address_is_let_in_again_once_its_retry_after_has_passed():
    """Through the routes' own scope dependency, over ASGI, with the throttle on a test clock."""
    clock = Clock()
    known = Access(parse_tokens("read:right"), FailureThrottle(limit=3, window=60, clock=clock))
    app = FastAPI()
    app.dependency_overrides[access] = lambda: known

    @app.get("/probe")
    def probe(scope: Reader) -> dict[str, str]:
        return {"scope": scope}

    def get(token: str, address: str = "10.0.0.1") -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=app, client=(address, 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                return await client.get("/probe", headers={"Authorization": f"Bearer {token}"})

        return asyncio.run(send())

    for _ in range(3):
        assert get("guess").status_code == 401
        clock.now += 10
    throttled = get("right")
    assert throttled.status_code == 429, "even a right token is refused while throttled"
    assert throttled.headers["Retry-After"] == "30"
    assert get("right", address="10.0.0.2").json() == {"scope": "read"}, "others are let in"
    clock.now += 29
    assert get("right").status_code == 429
    clock.now += 1
    assert get("right").json() == {"scope": "read"}
