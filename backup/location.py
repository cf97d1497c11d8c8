"""Where backups are kept: a local folder, or any URL fsspec opens (`s3://backups/nightly`).

The store (backup/store.py) works on a local folder. For a URL, a backup is made in a local
staging folder and uploaded file by file, the manifest last: a backup whose upload stopped
halfway has no manifest, and a listing takes only backups with one, so a partly uploaded backup
is never taken for a complete one. Listing fetches the manifests; verifying or restoring fetches
the whole backup first and checks every file as for a local one.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from backup.restore import Restored, restore_table
from backup.store import (
    MANIFEST,
    BackupInfo,
    check_stamp,
    create_backup,
    find_backup,
    list_backups,
    new_stamp,
    prune,
    verify_backup,
)
from loader.observe.events import Job, Observers
from loader.storage import StorageUnavailable, is_url, shown_url
from loader.tables import TABLES, Table


class Location:
    """Backups at `where`; `staging` is a local folder this location may use as its cache.
    `observers` hear every backup, restore and verify start and end."""

    def __init__(self, where: str | Path, staging: Path, observers: Observers | None = None):
        self.where = str(where)
        self.observers = observers or Observers()
        if is_url(where):
            key = hashlib.sha256(self.where.encode()).hexdigest()[:12]
            self.local = staging / f"remote-{key}"
        else:
            self.local = Path(where).resolve()

    @property
    def shown(self) -> str:
        return shown_url(self.where) if is_url(self.where) else str(self.local)

    def _shown_backup(self, stamp: str | None) -> str:
        """The backup `stamp` as shown (None: the folder or URL of them all)."""
        return self.shown if stamp is None else f"{self.shown.rstrip('/')}/{stamp}"

    def create(self, database: str, tables: list[Table] | None = None) -> BackupInfo:
        """A new backup; for a URL, uploaded (the manifest last) and its staging copy kept as
        the cache of that backup."""
        stamp = new_stamp()
        names = [table.name for table in tables or TABLES]
        target = [self._shown_backup(stamp)]
        with self.observers.job(Job.BACKUP, stamp, tables=names, outputs=target) as (_, finished):
            made = create_backup(database, self.local, tables, stamp)
            if is_url(self.where):
                self._upload(made.path)
            finished.backup = made
        return made

    def restore(
        self, database: str, table: str, stamp: str | None, with_dependents: bool = False
    ) -> list[Restored]:
        """Restore `table` from the backup `stamp` (None: the latest), see
        `restore.restore_table`."""
        read = [self._shown_backup(stamp)]
        with self.observers.job(Job.RESTORE, stamp or "latest", tables=[table], inputs=read) as (
            job,
            end,
        ):
            chosen = self.find(stamp).stamp
            job.run_id, job.inputs = chosen, [self._shown_backup(chosen)]
            end.restored = restore_table(database, self.local, table, chosen, with_dependents)
        return end.restored

    def verify(self, stamp: str | None) -> tuple[BackupInfo, dict[str, int]]:
        """The backup `stamp` (None: the latest) and its rows per table, once every file is
        checked against the manifest (`store.verify_backup`)."""
        read = [self._shown_backup(stamp)]
        with self.observers.job(Job.VERIFY, stamp or "latest", inputs=read) as (job, finished):
            backup = self.find(stamp)
            job.run_id, job.inputs = backup.stamp, [self._shown_backup(backup.stamp)]
            finished.backup, finished.verified = backup, verify_backup(backup)
        return backup, finished.verified

    def backups(self) -> list[BackupInfo]:
        """Every backup with a manifest, oldest first (see store.list_backups)."""
        if is_url(self.where):
            self._fetch_manifests()
        return list_backups(self.local)

    def find(self, stamp: str | None) -> BackupInfo:
        """The backup `stamp` (None: the latest), fetched whole for a URL."""
        if is_url(self.where):
            self._fetch_manifests()
            chosen = find_backup(self.local, stamp)
            self._fetch(chosen.stamp)
        return find_backup(self.local, stamp)

    def prune(self, keep: int) -> list[str]:
        """Remove all but the newest `keep` backups; their stamps."""
        if not is_url(self.where):
            return prune(self.local, keep)
        removed = [backup.stamp for backup in self.backups()[:-keep]]
        fs, root = self._fs()
        for stamp in removed:
            with _storage(self.where):
                fs.rm(f"{root}/{stamp}", recursive=True)
            shutil.rmtree(self.local / stamp, ignore_errors=True)
        return removed

    def _fs(self):
        from fsspec.core import url_to_fs

        with _storage(self.where):
            fs, root = url_to_fs(self.where)
        return fs, root.rstrip("/")

    def _upload(self, folder: Path) -> None:
        fs, root = self._fs()
        files = sorted(path for path in folder.iterdir() if path.name != MANIFEST)
        with _storage(self.where):
            for path in [*files, folder / MANIFEST]:
                fs.put_file(str(path), f"{root}/{folder.name}/{path.name}")

    def _fetch_manifests(self) -> None:
        fs, root = self._fs()
        with _storage(self.where):
            fs.invalidate_cache()
            try:
                found = fs.ls(root, detail=False)
            except FileNotFoundError:
                if not fs.exists(root.split("/", 1)[0]):
                    raise  # no such bucket: said as such
                found = []  # a prefix nothing was written to yet
            names = [path.rstrip("/").rsplit("/", 1)[-1] for path in found]
            if self.local.is_dir():
                cached = {p.name for p in self.local.iterdir() if not p.name.startswith(".")}
                for gone in cached - set(names):
                    shutil.rmtree(self.local / gone, ignore_errors=True)  # pruned elsewhere
            for stamp in names:
                manifest = f"{root}/{stamp}/{MANIFEST}"
                if not fs.exists(manifest):
                    continue  # an upload under way or cut off: not a backup
                (self.local / stamp).mkdir(parents=True, exist_ok=True)
                fs.get_file(manifest, str(self.local / stamp / MANIFEST))

    def _fetch(self, stamp: str) -> None:
        check_stamp(stamp)
        fs, root = self._fs()
        with _storage(self.where):
            for path in fs.ls(f"{root}/{stamp}", detail=False):
                name = path.rstrip("/").rsplit("/", 1)[-1]
                target = self.local / stamp / name
                if name != MANIFEST and not target.exists():
                    fs.get_file(path, str(target))


class _storage:
    """Any client failure against the backup URL as one StorageUnavailable line."""

    def __init__(self, where: str):
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, trace) -> bool:
        if error is None or isinstance(error, StorageUnavailable):
            return False
        if isinstance(error, Exception):
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise StorageUnavailable(
                f"cannot use the backups at {shown_url(self.where)}: {reason}"
            ) from None
        return False
