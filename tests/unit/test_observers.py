"""The observers' hub: every job heard to its end once, as complete, failed or aborted, and an
observer that fails is one warning, never the job's failure."""

from __future__ import annotations

import io
import json
import logging

import pytest

from loader.observe.events import Ending, Finished, Job, Observer, Observers, Started
from loader.observe.logs import LOGGERS, JsonFormatter, LogLines, LogObserver, configure_logging
from loader.settings import LogFormat


class Heard(Observer):
    def __init__(self):
        self.events: list[tuple] = []

    def started(self, started: Started) -> None:
        self.events.append(("started", started.job, started.run_id))

    def finished(self, started: Started, finished: Finished) -> None:
        self.events.append(("finished", started.run_id, finished.ending, finished.error))


class Flaky(Observer):
    """Refuses while `down`, like an endpoint that is stopped and started again."""

    name = "lineage"

    def __init__(self):
        self.down = True

    def started(self, started: Started) -> None:
        if self.down:
            raise ConnectionError("http://127.0.0.1:9/api/v1/lineage refused")

    def finished(self, started: Started, finished: Finished) -> None:
        self.started(started)


@pytest.fixture()
def warnings(caplog):
    caplog.set_level(logging.WARNING, logger="loader.observe")
    return caplog


def test_a_job_is_heard_to_its_end_once_whatever_the_end():
    heard = Heard()
    hub = Observers([heard])
    with hub.job(Job.BACKUP, "b1") as (_, finished):
        finished.verified = {"jobs": 1}
    with pytest.raises(ValueError), hub.job(Job.RESTORE, "r1"):
        raise ValueError("refused")
    with pytest.raises(KeyboardInterrupt), hub.job(Job.FILE_RUN, "f1"):
        raise KeyboardInterrupt
    assert heard.events == [
        ("started", Job.BACKUP, "b1"),
        ("finished", "b1", Ending.COMPLETE, None),
        ("started", Job.RESTORE, "r1"),
        ("finished", "r1", Ending.FAIL, "ValueError: refused"),
        ("started", Job.FILE_RUN, "f1"),
        ("finished", "f1", Ending.ABORT, "KeyboardInterrupt"),
    ]


def test_an_observer_that_fails_is_one_warning_per_outage_and_the_others_still_hear(warnings):
    heard, flaky = Heard(), Flaky()
    hub = Observers([flaky, heard])
    for run_id in ("m1", "m2"):
        with hub.job(Job.MARTS_BUILD, run_id):
            pass
    flaky.down = False
    with hub.job(Job.MARTS_BUILD, "m3"):
        flaky.down = True  # down again before the end of m3
    assert [event[:2] for event in heard.events] == [
        ("started", Job.MARTS_BUILD),
        ("finished", "m1"),
        ("started", Job.MARTS_BUILD),
        ("finished", "m2"),
        ("started", Job.MARTS_BUILD),
        ("finished", "m3"),
    ]
    assert [record.getMessage() for record in warnings.records] == [
        "lineage: ConnectionError: http://127.0.0.1:9/api/v1/lineage refused"
    ] * 2, "once for the first outage (four failed calls), once for the second"


@pytest.fixture()
def loggers_restored():
    """Our loggers as they were: pytest's log capture (caplog) needs them to propagate."""
    saved = [
        (logger, list(logger.handlers), logger.level, logger.propagate)
        for logger in map(logging.getLogger, LOGGERS)
    ]
    yield
    for logger, handlers, level, propagate in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def test_json_lines_carry_the_event_its_fields_and_the_cli_messages_level(loggers_restored):
    stream = io.StringIO()
    configure_logging(LogFormat.JSON, stream)
    try:
        LogObserver().finished(Started(Job.VERIFY, "s1"), Finished(verified={"jobs": 3}))
        cli = LogLines(logging.getLogger("loader.cli"))
        cli.write("warning: 2 batches failed\nerror: cannot read x.csv")
        cli.flush()
    finally:
        stream.flush()
    verify, warning, error = (json.loads(line) for line in stream.getvalue().splitlines())
    assert verify["event"] == "verify.finished" and verify["table_rows"] == {"jobs": 3}
    assert verify["run_id"] == "s1" and verify["status"] == "complete"
    assert (warning["level"], warning["message"]) == ("warning", "2 batches failed")
    assert (error["level"], error["message"]) == ("error", "cannot read x.csv")


def test_a_logged_exception_is_its_last_line_not_a_traceback():
    record = logging.LogRecord("loader.api", logging.ERROR, "", 0, "boom", None, None)
    try:
        raise RuntimeError("database went away")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    line = json.loads(JsonFormatter().format(record))
    assert line["error"] == "RuntimeError: database went away"
    assert "\n" not in JsonFormatter().format(record)
