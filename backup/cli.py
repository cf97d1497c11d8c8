"""`python -m backup`: create, list, verify, restore and schedule AVRO backups of core.

Exit codes: 0 done, 1 unexpected error, 2 usage (a command-line mistake or an invalid setting),
3 backup missing, damaged or refused, 4 database or storage unreachable, 5 backup folder
unusable. Every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import TYPE_CHECKING, NoReturn

from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

if TYPE_CHECKING:
    from backup.restore import Restored
    from backup.store import BackupInfo

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_REFUSED, EXIT_DATABASE, EXIT_FOLDER = range(6)

# No markup: stamps, paths and error texts are printed as they are, brackets included.
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)


def one_line(text: str) -> str:
    return " ".join(text.split())


class Parser(argparse.ArgumentParser):
    """argparse, with a command-line mistake told in one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see {self.prog} -h)\n")


def at_least_one(text: str) -> int:
    """`--keep`: a whole number of backups, at least 1 (the backup just made always stays)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"must be at least 1, got {value} (the backup just made is always kept)"
        )
    return value


def cron_expression(text: str) -> str:
    """`--cron`: a five-field crontab expression."""
    from backup.schedule import trigger

    try:
        trigger(text)
    except (ValueError, TypeError, KeyError) as error:
        raise argparse.ArgumentTypeError(f"not a crontab expression {text!r}: {error}") from None
    return text


def parser() -> argparse.ArgumentParser:
    from backup.schedule import DEFAULT_CRON
    from loader.tables import TABLES

    names = [table.name for table in TABLES]
    root = Parser(
        prog="python -m backup",
        description="AVRO backups of the core tables.",
        epilog="Exit codes: 0 done, 1 unexpected error, 2 usage, 3 backup missing, damaged or "
        "refused (an unreadable newest backup included), 4 database or storage unreachable, "
        "5 backup folder unusable.",
    )
    root.add_argument(
        "--dir",
        help="backup folder or URL, e.g. s3://backups/nightly (default BACKUP_DIR, else "
        "<state folder>/backups)",
    )
    root.add_argument(
        "--log-format",
        choices=["human", "json"],
        help="human (default) or json: one JSON object a line on stderr (LOADER_LOG_FORMAT)",
    )
    verbs = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    create = verbs.add_parser("create", help="back up tables (all of core by default)")
    create.add_argument("--table", action="append", choices=names, help="repeatable")
    listing = verbs.add_parser("list", help="backups with time, tables, rows and size")
    listing.add_argument("--json", action="store_true")
    verify = verbs.add_parser("verify", help="re-read a backup and check it (default: newest)")
    verify.add_argument("stamp", nargs="?", help="a backup's name as `list` shows it")
    restore = verbs.add_parser("restore", help="replace a table's rows from a backup, atomically")
    restore.add_argument("--table", required=True, choices=names)
    restore.add_argument(
        "--from", dest="stamp", help="backup stamp as `list` shows it (default: newest)"
    )
    restore.add_argument(
        "--with-dependents",
        action="store_true",
        help="also restore the tables that reference it, from the same backup",
    )
    schedule = verbs.add_parser("schedule", help="back up on a cron schedule (UTC) until stopped")
    schedule.add_argument(
        "--cron", type=cron_expression, default=DEFAULT_CRON, help=f"default {DEFAULT_CRON!r}"
    )
    schedule.add_argument(
        "--keep", type=at_least_one, default=7, help="backups to keep, at least 1 (default 7)"
    )
    return root


def command(args: argparse.Namespace) -> int:
    from loader.observe.setup import Process, observers_for
    from loader.settings import Settings

    settings = Settings(**({"log_format": args.log_format} if args.log_format else {}))
    use_log_format(settings.log_format)
    observers = observers_for(settings, Process.BACKUP)
    try:
        return _command(args, settings, observers)
    finally:
        observers.close()


def use_log_format(log_format: str) -> None:
    """Our loggers' lines, and in JSON everything `err` prints, as `log_format` says."""
    from loader.observe.logs import LogLines, configure_logging

    configure_logging(log_format)
    if log_format == "json":
        err.file = LogLines(logging.getLogger("backup.cli"))


def _command(args: argparse.Namespace, settings, observers) -> int:
    from backup.location import Location
    from backup.schedule import run_schedule
    from loader.db.connect import database_url
    from loader.tables import table_named

    location = Location(args.dir or settings.backups_at, settings.backups_staging, observers)
    if args.command == "create":
        tables = [table_named(name) for name in args.table] if args.table else None
        made = location.create(database_url(settings), tables)
        rows = ", ".join(f"{name} {entry['rows']}" for name, entry in made.tables.items())
        ledger = made.ledger
        err.print(
            f"backup {made.stamp} written to {location.shown}: {rows} rows; their ledger: "
            f"{ledger['batches']['rows']} batches, {ledger['rejected_rows']['rows']} rejected rows"
        )
        print(made.stamp)
    elif args.command == "list":
        backups = location.backups()
        if args.json:
            print(json.dumps([listed(b) for b in backups], indent=2))
        else:
            out.print(listing_table(location.shown, backups))
    elif args.command == "verify":
        backup, checked = location.verify(args.stamp)
        err.print(
            f"backup {backup.stamp} is sound: "
            + ", ".join(f"{name} {rows} rows" for name, rows in checked.items())
        )
    elif args.command == "restore":
        done = location.restore(
            database_url(settings), args.table, args.stamp, args.with_dependents
        )
        for each in done:
            err.print(
                f"restored {each.table}: {each.rows} rows written, {each.deleted} deleted; "
                + ledger_words(each)
            )
    else:
        err.print(f"backing up to {location.shown} on {args.cron!r} (UTC), keeping {args.keep}")
        run_schedule(lambda: database_url(settings), location, args.cron, args.keep)
    return EXIT_OK


def listed(backup: BackupInfo) -> dict:
    """A backup as `list --json` gives it; an unusable one has `unreadable` (why) and nulls."""
    if backup.problem:
        return {
            "stamp": backup.stamp,
            "path": str(backup.path),
            "unreadable": backup.problem,
            "bytes": None,
            "snapshot_at": None,
            "tables": None,
            "ledger": None,
        }
    return {
        "stamp": backup.stamp,
        "path": str(backup.path),
        "unreadable": None,
        "bytes": backup.bytes,
        "snapshot_at": backup.manifest["snapshot_at"],
        "tables": {n: e["rows"] for n, e in backup.tables.items()},
        "ledger": {f"audit.{n}": e["rows"] for n, e in (backup.ledger or {}).items()} or None,
    }


def listing_table(folder: str, backups: list[BackupInfo]) -> RichTable:
    grid = RichTable(title=f"Backups in {folder}")
    for header in ("stamp", "snapshot (UTC)", "tables and rows", "bytes"):
        grid.add_column(header)
    for b in backups:
        if b.problem:
            grid.add_row(b.stamp, "?", Text(f"UNREADABLE: {b.problem}", style="red"), "?")
            continue
        grid.add_row(
            b.stamp,
            b.manifest["snapshot_at"],
            ", ".join(f"{n} {e['rows']}" for n, e in b.tables.items()),
            f"{b.bytes:,}",
        )
    return grid


def ledger_words(restored: Restored) -> str:
    """What a restore did to a table's ledger, in words."""
    if restored.redo is None:
        return (
            f"its ledger is back as at the backup ({restored.batches} batches, "
            f"{restored.rejected_rows} rejected rows)"
        )
    return (
        f"backup {restored.stamp} has no ledger (made by an earlier release): "
        f"{restored.redo} batches settled since it was taken were taken out of the ledger, "
        "so the next run of the same input redoes them"
    )


def fail(message: str) -> None:
    err.print(f"error: {one_line(message)}")


def main(argv: list[str] | None = None) -> int:
    """Run the command; exit 2 only for what argparse or the settings refuse, never for a stray
    ValueError from the work itself."""
    args = parser().parse_args(argv)
    import psycopg
    from pydantic import ValidationError

    from backup.store import BackupError
    from loader.db.connect import DatabaseUnavailable, reason_of
    from loader.db.embedded import EmbeddedServerError
    from loader.storage import StorageUnavailable

    try:
        return command(args)
    except BackupError as error:
        fail(str(error))
        return EXIT_REFUSED
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        fail(f"invalid setting: {problems}")
        return EXIT_USAGE
    except (DatabaseUnavailable, EmbeddedServerError, StorageUnavailable) as error:
        fail(str(error))
        return EXIT_DATABASE
    except psycopg.OperationalError as error:
        fail(f"lost the database: {reason_of(error)}")
        return EXIT_DATABASE
    except OSError as error:
        if error.filename is None:
            fail(f"unexpected {type(error).__name__}: {error}")
            return EXIT_ERROR
        fail(f"cannot use the backup folder: {error.filename}: {error.strerror}; nothing changed")
        return EXIT_FOLDER
    except KeyboardInterrupt:
        return EXIT_OK if args.command == "schedule" else 130
    except Exception as error:  # noqa: BLE001 - the last line of defence: one line, no traceback
        fail(f"unexpected {type(error).__name__}: {error}")
        return EXIT_ERROR
