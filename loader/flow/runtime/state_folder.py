"""The state folder (logs, dlt's pipelines, GX results and data docs, backups): checked before a
run touches the database, and any failure to write it later told in one line.

A full or read-only folder must not surface as dlt's or GX's tracebacks: the run stops with
exit status 8 and the folder's path, and nothing was promoted that its logs cannot describe.
"""

from __future__ import annotations

import errno
import os
from contextlib import suppress
from pathlib import Path

from loader.flow.errors import StateFolderError

PROBE_BYTES = 1 << 20  # a run writes dlt's load files here; less room than this cannot hold them
WRITE_ERRORS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.EFBIG,
}


def check_writable(folder: Path) -> None:
    """Create the folder and write (then remove) a probe file of PROBE_BYTES."""
    probe = folder / ".write-probe"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with probe.open("wb") as handle:
            handle.write(b"\0" * PROBE_BYTES)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise _state_error(folder, error) from None
    finally:
        with suppress(OSError):  # on a read-only folder even removing nothing fails
            probe.unlink(missing_ok=True)


def write_error_in(error: BaseException, folder: Path) -> StateFolderError | None:
    """dlt and GX wrap what they raise: the first OSError of a failed write in the chain, as a
    StateFolderError naming `folder`, or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in WRITE_ERRORS:
            return _state_error(folder, error)
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _state_error(folder: Path, error: OSError) -> StateFolderError:
    reason = os.strerror(error.errno) if error.errno else str(error)
    return StateFolderError(
        f"cannot write to the state folder {folder} ({reason}); free space or make it writable, "
        "or point LOADER_STATE_DIR elsewhere, then run again"
    )
