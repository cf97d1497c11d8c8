"""Log lines for people, or one JSON object a line for log shippers (`LOADER_LOG_FORMAT=json`,
`--log-format json`).

A JSON line always has `time` (ISO 8601, UTC), `level`, `event` and `message`; an event about a
job adds `job`, `run_id`, and its counts and `duration_seconds`; a table's counts add `table`.
The CLI's own messages (what it prints on stderr for people) become `event: "message"` lines, at
the level their `error:`/`warning:` prefix says. Libraries' loggers are left alone: their output
goes to the state folder's `libraries.log` during a run.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

from loader.observe.events import Finished, Job, Observer, Started
from loader.settings import LogFormat

# The loggers this project writes to; uvicorn's error logger, so a server's start-up and
# shutdown lines are JSON too.
LOGGERS = ("loader", "backup", "uvicorn.error")
# Attributes every LogRecord has: whatever else a record carries was given as `extra`.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, event, message, and the record's `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "message"),
            "message": record.getMessage(),
            "logger": record.name,
        }
        line.update(
            (key, value)
            for key, value in record.__dict__.items()
            if key not in _STANDARD and key != "event"
        )
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(line, default=str, ensure_ascii=False)


class HumanFormatter(logging.Formatter):
    """`warning: ...` and `error: ...` as the CLI says its own; other lines (a backup
    schedule's) after their local time."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        if record.levelno >= logging.WARNING:
            return f"warning: {message}"
        return f"{self.formatTime(record, '%Y-%m-%d %H:%M:%S')} {message}"


class TerminalHandler(logging.StreamHandler):
    """Writes to `stream`, which the CLI points at the terminal while libraries' output goes
    to a file (`loader.cli.console.libraries_quiet`)."""

    def __init__(self, stream: TextIO | None = None):
        super().__init__(stream or sys.stderr)


class LogLines(io.TextIOBase):
    """A text stream whose every line becomes a log record of `logger`: what the CLI prints
    for people, as JSON lines. A line starting `error:` or `warning:` is logged at that level
    (without the prefix)."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self._pending = ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._log(line)
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._log(self._pending)
            self._pending = ""

    def _log(self, line: str) -> None:
        line = line.strip()
        if not line:
            return
        for prefix, level in (("error: ", logging.ERROR), ("warning: ", logging.WARNING)):
            if line.startswith(prefix):
                self.logger.log(level, line[len(prefix) :])
                return
        self.logger.info(line)


def configure_logging(log_format: LogFormat, stream: TextIO | None = None) -> TerminalHandler:
    """Our loggers, INFO and above, to one handler on `stream` (stderr) in `log_format`;
    returns the handler, whose stream the caller may move."""
    handler = TerminalHandler(stream)
    json_lines = log_format == LogFormat.JSON
    handler.setFormatter(JsonFormatter() if json_lines else HumanFormatter())
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, TerminalHandler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return handler


class LogObserver(Observer):
    """Every job's start and end as log records: the end with its counts, per table too."""

    name = "logs"

    def __init__(self, logger: logging.Logger | None = None):
        self.log = logger or logging.getLogger("loader.jobs")

    def started(self, started: Started) -> None:
        fields = {"job": str(started.job), "run_id": started.run_id}
        if started.parent is not None:
            fields["parent_run_id"] = started.parent.run_id
        if started.inputs:
            fields["inputs"] = started.inputs
        self.log.info(
            f"{started.job} {started.run_id} started",
            extra={"event": f"{started.job}.started", **fields},
        )

    def finished(self, started: Started, finished: Finished) -> None:
        fields = {
            "job": str(started.job),
            "run_id": started.run_id,
            "status": str(finished.ending).lower(),
            "duration_seconds": round(finished.seconds, 3),
        }
        if finished.error:
            fields["error"] = finished.error
        fields.update(_counts(started, finished))
        if finished.summary is not None:
            self._tables(started, finished)
        level = logging.INFO if finished.error is None else logging.ERROR
        words = f"{started.job} {started.run_id} {fields['status']}"
        self.log.log(
            level,
            words + (f": {finished.error}" if finished.error else ""),
            extra={"event": f"{started.job}.finished", **fields},
        )

    def _tables(self, started: Started, finished: Finished) -> None:
        for table in finished.summary.tables:
            self.log.info(
                f"{table.table}: {table.rows_promoted} rows promoted, {table.rows_held_back} "
                "held back",
                extra={
                    "event": "table.settled",
                    "job": str(started.job),
                    "run_id": started.run_id,
                    "table": table.table,
                    "rows_read": table.rows_read,
                    "rows_promoted": table.rows_promoted,
                    "rows_held_back": table.rows_held_back,
                    "rows_skipped": table.rows_skipped,
                    "batches_read": table.batches_read,
                    "batches_rejected": table.batches_rejected,
                    "reasons": table.reasons,
                },
            )


def _counts(started: Started, finished: Finished) -> dict:
    """What a job's end line counts: rows for a run, mart rows for a build, table rows for a
    backup, a restore or a verify."""
    summary = finished.summary
    if summary is not None:
        return {
            "rows_read": summary.total("rows_read"),
            "rows_promoted": summary.total("rows_promoted"),
            "rows_held_back": summary.total("rows_held_back"),
            "rows_skipped": summary.total("rows_skipped"),
            "batches_read": summary.total("batches_read"),
            "files_read": len(summary.files),
            "files_skipped": len(summary.files_skipped),
        }
    if started.job == Job.MARTS_BUILD and finished.marts is not None:
        return {"mart_rows": finished.marts.rows}
    if finished.backup is not None:
        return {
            "stamp": finished.backup.stamp,
            "table_rows": {name: e["rows"] for name, e in finished.backup.tables.items()},
            "bytes": finished.backup.bytes,
        }
    if finished.restored:
        return {"table_rows": {each.table: each.rows for each in finished.restored}}
    if finished.verified:
        return {"table_rows": finished.verified}
    return {}
