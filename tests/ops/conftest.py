"""What the operations tests share: Debian's Prometheus and Pushgateway run as real servers on
free loopback ports, each with its data in the test's temporary folder (or a skip that says how
to get them), and a deadline to poll them against."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from tests.conftest import free_port

PROMETHEUS = shutil.which("prometheus")
PUSHGATEWAY = shutil.which("prometheus-pushgateway")
NEEDS_PROMETHEUS = pytest.mark.skipif(
    PROMETHEUS is None, reason="no prometheus on this machine (Debian: apt-get install prometheus)"
)
NEEDS_PUSHGATEWAY = pytest.mark.skipif(
    PUSHGATEWAY is None,
    reason="no prometheus-pushgateway on this machine (Debian: apt-get install "
    "prometheus-pushgateway)",
)
T = TypeVar("T")


def poll(check: Callable[[], T | None], seconds: float = 30, what: str = "") -> T:
    """`check()` until it returns something other than None or False, at most `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found is not None and found is not False:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds:g} s: {what}")
        time.sleep(0.1)


@contextmanager
def server_process(command: list[str], ready_url: str, log: Path) -> Iterator[str]:
    """`command` running until the block ends, once `ready_url` answers 200; its output in
    `log`, shown if it never gets ready."""
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(f"{command[0]} exited: {log.read_text()}")
            try:
                return httpx.get(ready_url, timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        poll(ready, 30, f"{command[0]} ready: {log}")
        yield ready_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture()
def pushgateway(tmp_path) -> Iterator[str]:
    """A Pushgateway on a free loopback port; its base URL."""
    if PUSHGATEWAY is None:
        pytest.skip("no prometheus-pushgateway (Debian: apt-get install prometheus-pushgateway)")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [
        PUSHGATEWAY,
        f"--web.listen-address=127.0.0.1:{port}",
        f"--persistence.file={tmp_path / 'pushgateway.data'}",
    ]
    with server_process(command, f"{base}/-/ready", tmp_path / "pushgateway.log"):
        yield base


@contextmanager
def prometheus_scraping(target: str, token: str, folder: Path) -> Iterator[str]:
    """Prometheus scraping `target` (host:port) every second with `token` as its bearer
    credentials; its base URL."""
    if PROMETHEUS is None:
        pytest.skip("no prometheus (Debian: apt-get install prometheus)")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: csv_migrate_api\n"
        "    authorization: {type: Bearer, credentials: " + token + "}\n"
        "    static_configs: [{targets: ['" + target + "']}]\n"
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with server_process(command, f"{base}/-/ready", folder / "prometheus.log"):
        yield base


def query(prometheus: str, promql: str) -> list[dict]:
    """The instant vector Prometheus answers for `promql`."""
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5)
    answer.raise_for_status()
    return answer.json()["data"]["result"]
