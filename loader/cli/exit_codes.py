"""The exit codes of `python -m loader`, one name each, for the CLI and for what checks it."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """The exit statuses of `python -m loader`, as the module docstring and README list them.
    Scripts and tests compare against these numbers: a value never changes once released."""

    OK = 0
    ERROR = 1
    USAGE = 2
    INPUT = 3
    DATABASE = 4
    REJECTED = 5
    DBT = 6
    BUSY = 7
    STATE = 8
    CLUSTER = 9
