"""When `watch` takes an export as complete (`Watch._ready`), without a database or a clock: a
local file once two listings agree on its size and modification time, an object in a bucket at
once, a name of no table (`.part`) never."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from loader.flow.source.exports import Export, Listing, list_exports
from loader.flow.watch import Watch
from loader.settings import Settings
from loader.tables import HIRED_EMPLOYEES, JOBS

HIRE = b"1,Ann Lee,2021-01-01T10:00:00Z,1,1\r\n"


def watch_of(folder: Path) -> Watch:
    said: list[str] = []
    return Watch(
        Settings(input_dir=str(folder)),
        every=1,
        said=said.append,
        ran=lambda summary: None,
        stop=threading.Event(),
    )


def names(listing: Listing) -> list[str]:
    return [export.name for export in listing.exports]


@pytest.fixture()
def inbox(tmp_path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "hired_employees_1.csv").write_bytes(HIRE)
    return folder


def test_a_local_export_is_ready_once_two_listings_agree(inbox):
    watch = watch_of(inbox)

    assert names(watch._ready(list_exports(str(inbox)))) == []
    assert names(watch._ready(list_exports(str(inbox)))) == ["hired_employees_1.csv"]


def test_a_local_export_that_grew_or_was_touched_waits_for_another_listing(inbox):
    watch = watch_of(inbox)
    path = inbox / "hired_employees_1.csv"
    watch._ready(list_exports(str(inbox)))

    with path.open("ab") as still_writing:
        still_writing.write(HIRE)
    assert names(watch._ready(list_exports(str(inbox)))) == []
    assert names(watch._ready(list_exports(str(inbox)))) == ["hired_employees_1.csv"]

    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # same size
    assert names(watch._ready(list_exports(str(inbox)))) == []
    assert names(watch._ready(list_exports(str(inbox)))) == ["hired_employees_1.csv"]


def test_only_the_new_file_waits_while_the_others_stay_ready(inbox):
    watch = watch_of(inbox)
    watch._ready(list_exports(str(inbox)))
    (inbox / "hired_employees_2.csv").write_bytes(HIRE)

    assert names(watch._ready(list_exports(str(inbox)))) == ["hired_employees_1.csv"]


def test_a_part_file_is_ignored_until_renamed(inbox):
    watch = watch_of(inbox)
    part = inbox / "hired_employees_2.csv.part"
    part.write_bytes(HIRE)

    for _ in range(2):
        listing = watch._ready(list_exports(str(inbox)))
    assert names(listing) == ["hired_employees_1.csv"]
    assert listing.ignored == [str(part)]

    part.rename(inbox / "hired_employees_2.csv")
    assert names(watch._ready(list_exports(str(inbox)))) == ["hired_employees_1.csv"]
    assert names(watch._ready(list_exports(str(inbox)))) == [
        "hired_employees_1.csv",
        "hired_employees_2.csv",
    ]


def test_objects_in_a_bucket_are_ready_in_the_first_listing(tmp_path):
    watch = watch_of(tmp_path)
    objects = [
        Export("s3://exports/hr/jobs.csv", JOBS, 120, "etag-1"),
        Export("s3://exports/hr/hired_employees.csv.gz", HIRED_EMPLOYEES, 5000, "etag-2"),
    ]

    ready = watch._ready(Listing(objects, ["s3://exports/hr/notes.txt"]))

    assert ready.exports == objects
    assert ready.ignored == ["s3://exports/hr/notes.txt"]
