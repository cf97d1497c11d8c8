"""The typed errors a run raises for the CLI to turn into one line and an exit code.

Kept free of imports beyond the standard library, so that the CLI can catch them without
loading GX, dlt or Dask.
"""

from __future__ import annotations


class InputError(ValueError):
    """The input cannot be read as the table it should hold; the message names file and line."""


class RunBusy(RuntimeError):
    """Another file run holds the database and the caller chose not to wait."""


class ClusterUnavailable(RuntimeError):
    """The Dask scheduler named by `--scheduler` cannot be reached: nothing was read or written."""


class StateFolderError(RuntimeError):
    """The state folder cannot be written; the message names it and says why."""
