"""The file ledger (`audit.files`): which export files were read, and whether each is loaded,
so that a file already loaded is not read again.

A file is skipped without reading its rows when its latest entry says `loaded` and its size and
version (modification time or ETag) are the ones recorded; when only the version changed (a
copy of the same bytes, a touched file), its sha256 is compared, which reads its bytes but not
its rows. Anything else is read: batch ids by content then settle only what changed. The batch
ledger stays the authority; this one saves the reading.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum

import psycopg

from loader.flow.source.exports import Export, stored


class FileState(StrEnum):
    """A file's state in `audit.files`."""

    LOADED = "loaded"
    PARTIALLY_LOADED = "partially_loaded"  # some batches wait for a parent, or failed
    MALFORMED = "malformed"  # not the table it claims to be: not read again until it changes


@dataclass
class FileRead:
    """One export as a run reads it: the digest of its bytes and what its batches came to."""

    export: Export
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    batches: int = 0
    rows: int = 0
    unsettled: bool = False  # a batch of it ended waiting or failed
    reason: str | None = None  # malformed: the reader's one line
    gone: bool = False  # removed between listing and reading: nothing read, nothing recorded

    @property
    def state(self) -> FileState:
        if self.reason is not None:
            return FileState.MALFORMED
        return FileState.PARTIALLY_LOADED if self.unsettled else FileState.LOADED


def latest_entries(conn: psycopg.Connection, urls: list[str]) -> dict[str, tuple]:
    """url → (state, size, version, sha256) of each url's latest entry."""
    rows = conn.execute(
        "select distinct on (url) url, state, size, version, sha256 from audit.files "
        "where url = any(%s) order by url, recorded_at desc, file_id desc",
        (urls,),
    ).fetchall()
    return {url: (state, size, version, sha256) for url, state, size, version, sha256 in rows}


def unchanged(export: Export, entry: tuple | None, state: FileState) -> bool:
    """Whether `entry` (the file's latest) is in `state` and recorded these very bytes."""
    if entry is None or entry[0] != state or entry[1] != export.size:
        return False
    if entry[2] == export.version:
        return True
    return entry[3] is not None and sha256_of(export) == entry[3]


def sha256_of(export: Export) -> str:
    digest = hashlib.sha256()
    with stored(export.url) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_files(conn: psycopg.Connection, run_id: str, files: list[FileRead]) -> None:
    """An entry for each file the run read (or found malformed)."""
    files = [read for read in files if not read.gone]
    if not files:
        return
    with conn.cursor() as cursor:
        cursor.executemany(
            "insert into audit.files (url, table_name, size, version, sha256, run_id, state, "
            "reason, batches, rows_read) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    read.export.shown,
                    read.export.table.name,
                    read.export.size,
                    read.export.version,
                    None if read.reason else read.digest.hexdigest(),
                    run_id,
                    read.state,
                    read.reason,
                    read.batches,
                    read.rows,
                )
                for read in files
            ],
        )
