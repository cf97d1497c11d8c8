"""The typed errors a run raises for the CLI to turn into one line and an exit code.

Kept free of imports beyond the standard library, so that the CLI can catch them without
loading GX, dlt or Dask.
"""

from __future__ import annotations

from loader.storage import StorageUnavailable  # noqa: F401 - the CLI catches it with the rest


class InputError(ValueError):
    """The input cannot be read as the table it should hold; the message names file and line.
    `source`, where known, is the export at fault (a `watch` records it as malformed)."""

    def __init__(self, message: str, source=None):
        super().__init__(message)
        self.source = source


class ExportGone(InputError):
    """An export listed for the run was removed before it was read: skipped, and said."""


class RunBusy(RuntimeError):
    """Another file run holds the database and the caller chose not to wait."""


class ClusterUnavailable(RuntimeError):
    """The Dask scheduler named by `--scheduler` cannot be reached: nothing was read or written."""


class StateFolderError(RuntimeError):
    """The state folder cannot be written; the message names it and says why."""
