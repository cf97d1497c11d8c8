"""What libraries print while a run works (dlt's load threads, psycopg2's C code, GX, Dask's
workers, the forked gate process) goes to a log file, not the terminal.

A run that loses its database fails in several places at once, and each library says so in its
own words: psycopg2 prints the chained errors of a COPY it was feeding, dlt's threads print
theirs. The user should read one line naming the database and what it means for the input;
the rest is kept for whoever wants the details. File descriptor 2 itself is redirected, so
output written below Python (C extensions, child processes forked or started with it) is
caught as well; the loader's own messages go to a duplicate of the original descriptor.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


@contextmanager
def library_output_to(log: Path) -> Iterator[TextIO | None]:
    """While inside, descriptor 2 and `sys.stderr` write to `log` (appended); yields a stream
    on the original standard error for the caller's own messages, or None (nothing redirected)
    when `log` cannot be opened: the run's own check of the state folder then says why."""
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        target = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:
        yield None
        return
    sys.stderr.flush()
    saved = os.dup(2)
    terminal = os.fdopen(os.dup(saved), "w", buffering=1, errors="replace")
    os.dup2(target, 2)
    os.close(target)
    try:
        yield terminal
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        terminal.close()
