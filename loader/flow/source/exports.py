"""Export files, wherever they are: a local folder or any URL fsspec opens (`s3://bucket/prefix/`
through s3fs, `gs://`, `az://`), listed, matched to their tables by name, and opened as the
uncompressed bytes of one CSV.

A file belongs to a table when its name is the table's name, optionally followed by `_` or `-`
and anything, ending in `.csv`, `.csv.gz` or `.csv.zip` (`hired_employees.csv`,
`hired_employees_2021-07.csv.gz`). A table's files are read in name order, so of two rows with
one id in two files the later file's wins, as a later line does within a file; departments and
jobs come before hires. A file that belongs to no table is listed as ignored.

Credentials and endpoints come from each ecosystem's own settings (`AWS_ACCESS_KEY_ID`,
`AWS_ENDPOINT_URL`, `GOOGLE_APPLICATION_CREDENTIALS`, ...), never from the URL the loader
records: every URL shown or stored has user info and secret-looking query values hidden.
"""

from __future__ import annotations

import gzip
import io
import re
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import BinaryIO

from loader.flow.errors import ExportGone, InputError
from loader.storage import StorageUnavailable, is_url, shown_url
from loader.tables import TABLES, Table

COMPRESSIONS = ("", ".gz", ".zip")
ARCHIVE_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error, zipfile.BadZipFile)


@dataclass(frozen=True)
class Export:
    """One export file: where it is, which table it holds, and what identifies its content."""

    url: str  # as fsspec opens it: a local path, or protocol://bucket/key
    table: Table
    size: int
    version: str | None  # the modification time, or the object's ETag

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def shown(self) -> str:
        return shown_url(self.url)

    @property
    def compressed(self) -> bool:
        return not self.name.endswith(".csv")


@dataclass
class Listing:
    """What an input holds: exports in reading order, and the names no table claims."""

    exports: list[Export] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def table_of(name: str) -> Table | None:
    """The table a file named `name` belongs to, or None."""
    for table in TABLES:
        pattern = rf"{re.escape(table.name)}(?:[_-].*)?\.csv(?:\.gz|\.zip)?"
        if re.fullmatch(pattern, name, re.DOTALL):
            return table
    return None


def list_exports(url: str) -> Listing:
    """The exports of a folder, prefix or single file, tables in load order, each table's files
    in name order. Raises InputError when the input is missing or holds no export, and
    StorageUnavailable when the storage cannot be reached or refuses."""
    from fsspec.core import url_to_fs

    try:
        fs, root = url_to_fs(url)
        fs.invalidate_cache()  # a poller must see what arrived since its last listing
        if fs.isfile(root):
            found = {root: fs.info(root)}
        elif fs.isdir(root):
            found = fs.find(root, detail=True, withdirs=False)
        elif is_url(url) and not fs.exists(root.split("/", 1)[0]):
            raise _unavailable(url, FileNotFoundError(), "no such bucket, or no access to it")
        else:
            raise InputError(f"{shown_url(url)}: input folder not found")
    except (InputError, StorageUnavailable):
        raise
    except FileNotFoundError as error:
        raise _unavailable(url, error, "the bucket or folder does not exist") from None
    except Exception as error:  # noqa: BLE001 - any client's failure: one line naming the URL
        raise _unavailable(url, error) from None
    listing = Listing()
    for path, info in sorted(found.items(), key=lambda item: item[0].rsplit("/", 1)[-1]):
        name = path.rsplit("/", 1)[-1]
        table = table_of(name)
        full = path if _is_local(fs) else fs.unstrip_protocol(path)
        if table is None:
            listing.ignored.append(shown_url(full))
            continue
        listing.exports.append(Export(full, table, int(info.get("size") or 0), _version(info)))
    order = {table.name: index for index, table in enumerate(TABLES)}
    listing.exports.sort(key=lambda export: order[export.table.name])  # stable: names kept
    if not listing.exports:
        names = ", ".join(f"{t.name}[_*].csv[.gz|.zip]" for t in TABLES)
        raise InputError(f"{shown_url(url)}: no export file found (expected {names})")
    return listing


@contextmanager
def stored(url: str) -> Iterator[BinaryIO]:
    """The bytes of the file at `url` as stored (compressed or not)."""
    from fsspec.core import url_to_fs

    try:
        fs, path = url_to_fs(url)
        # A local file through the built-in `open`: fsspec's wrapper costs a call per line.
        handle = open(path, "rb") if _is_local(fs) else fs.open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        raise ExportGone(f"{shown_url(url)}: removed after it was listed", url) from None
    except Exception as error:  # noqa: BLE001 - any client's failure: one line naming the URL
        if isinstance(error, OSError) and not is_url(url):
            reason = error.strerror or error
            raise InputError(f"{shown_url(url)}: cannot read ({reason})") from None
        raise _unavailable(url, error) from None
    with handle:
        yield handle


@contextmanager
def opened(url: str, digest=None) -> Iterator[BinaryIO]:
    """The uncompressed bytes of the export at `url` (`.gz` and `.zip` by name, streamed), with
    the stored bytes fed to `digest` as they are read (a `.zip` is hashed whole first: its
    index is at its end)."""
    with stored(url) as handle:
        if url.endswith(".zip"):
            yield _zip_member(handle, shown_url(url), digest)
        elif url.endswith(".gz"):
            yield gzip.GzipFile(fileobj=_hashing(handle, digest), mode="rb")
        else:
            yield _hashing(handle, digest)


def _zip_member(handle: BinaryIO, shown: str, digest) -> BinaryIO:
    if digest is not None:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        handle.seek(0)
    try:
        archive = zipfile.ZipFile(handle)
    except ARCHIVE_ERRORS as error:
        raise InputError(f"{shown}: truncated or corrupt archive ({error})") from None
    members = [member for member in archive.infolist() if not member.is_dir()]
    if len(members) != 1:
        raise InputError(f"{shown}: a .zip export must hold one CSV file, it holds {len(members)}")
    return archive.open(members[0])


class _Hashing(io.RawIOBase):
    """A read-only stream that feeds what passes through it to a digest."""

    def __init__(self, inner: BinaryIO, digest):
        self.inner, self.digest = inner, digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.inner.read(len(buffer))
        buffer[: len(data)] = data
        self.digest.update(data)
        return len(data)


def _hashing(handle: BinaryIO, digest) -> BinaryIO:
    if digest is None:
        return handle
    return io.BufferedReader(_Hashing(handle, digest), 1 << 20)


def _version(info: dict) -> str | None:
    for key in ("ETag", "etag", "md5Hash", "generation", "mtime", "LastModified", "last_modified"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return None


def _is_local(fs) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _unavailable(url: str, error: BaseException, reason: str | None = None) -> StorageUnavailable:
    text = reason or (str(error).strip().splitlines() or [type(error).__name__])[0]
    return StorageUnavailable(f"cannot read {shown_url(url)} from its storage: {text}")
