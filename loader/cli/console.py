"""Where the CLI speaks: data to stdout, messages to stderr, libraries' chatter to a log file,
progress on a terminal only."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

out = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, highlight=False, soft_wrap=True)


LIBRARY_LOG = "libraries.log"  # in the state folder: what dlt, psycopg2, GX and Dask print
_logs = None  # our loggers' handler (`use_log_format`): it follows `err` to the terminal
_json = False


def use_log_format(log_format) -> None:
    """Our loggers' lines, and in JSON everything `err` prints, as `log_format` says."""
    global _logs, _json
    import logging

    from loader.observe.logs import LogLines, configure_logging
    from loader.settings import LogFormat

    _logs = configure_logging(log_format)
    _json = log_format == LogFormat.JSON
    err.file = LogLines(logging.getLogger("loader.cli")) if _json else None


def json_logs() -> bool:
    """Whether messages go out as JSON lines (then stdout carries only asked-for data)."""
    return _json


@contextmanager
def libraries_quiet(log: Path):
    """Libraries' output into `log` while a command works; `err` keeps the terminal. A command
    that fails with something logged says where, in one more line."""
    from loader.flow.runtime.library_output import library_output_to

    size = log.stat().st_size if log.exists() else 0
    with library_output_to(log) as terminal:
        if terminal is None:
            yield
            return
        saved = err.file if _json else None
        if _logs is not None:
            _logs.setStream(terminal)
        if not _json:
            err.file = terminal
        try:
            yield
        except BaseException as error:
            if log.exists() and log.stat().st_size > size:
                error.add_note(f"details: {log}")  # printed under the error's own line
            raise
        finally:
            if _logs is not None:
                _logs.setStream(sys.stderr)
            err.file = saved


@contextmanager
def progress_display():
    """Rows read per table, on a terminal only."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    if not err.is_terminal:
        yield lambda table, rows: None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        tasks: dict[str, int] = {}

        def update(table: str, rows: int) -> None:
            if table not in tasks:
                tasks[table] = progress.add_task(table)
            progress.update(tasks[table], description=f"{table}: {rows:,} rows read")

        yield update
