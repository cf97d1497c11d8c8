"""Scheduled backups with APScheduler: a cron expression (UTC) and a retention count."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger

from backup.location import Location

DEFAULT_CRON = "0 0 * * *"  # every midnight, UTC, as the original system did

log = logging.getLogger("backup.schedule")


def trigger(cron: str) -> CronTrigger:
    """A five-field crontab expression, evaluated in UTC; ValueError if malformed."""
    return CronTrigger.from_crontab(cron, timezone="UTC")


def check_keep(keep: int) -> None:
    """Retention keeps at least the backup just made; ValueError otherwise (the CLI refuses
    such a `--keep` as usage before it gets here)."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"a schedule must keep at least 1 backup, not {keep!r}")


def backup_and_prune(url: Callable[[], str], location: Location, keep: int) -> None:
    """One scheduled run: a full backup, then keep the newest `keep` (at least 1). Errors of
    the run are logged, and the scheduler goes on to the next run."""
    check_keep(keep)
    try:
        made = location.create(url())
        removed = location.prune(keep)
        log.info(
            "backup %s written (%d tables); pruned %s",
            made.stamp,
            len(made.tables),
            ", ".join(removed) or "nothing",
        )
    except Exception as error:  # noqa: BLE001 - a failed night must not stop the schedule
        log.error("backup failed: %s", error)


def run_schedule(url: Callable[[], str], location: Location, cron: str, keep: int) -> None:
    """Block, backing up on every firing of `cron` until interrupted, keeping the newest
    `keep` (at least 1)."""
    check_keep(keep)
    scheduler = BlockingScheduler(timezone="UTC")
    scheduler.add_job(
        backup_and_prune,
        trigger(cron),
        args=(url, location, keep),
        id="backup",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=3600,
    )
    log.info("next backup at %s", trigger(cron).get_next_fire_time(None, datetime.now(UTC)))
    scheduler.start()
