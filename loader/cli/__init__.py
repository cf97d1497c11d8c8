"""`python -m loader`: parse the command line, run the subcommand, turn every failure into one
line on stderr and its exit code; the work itself lives elsewhere.

Exit codes (`ExitCode`): 0 done, 1 unexpected error, 2 usage (and `bench` refused: its database
holds loader rows), 3 bad input (missing folder, no export, malformed file), 4 database or
storage unreachable, 5 more rejected rows than --max-rejected-rows, 6 dbt build failed,
7 another run holds the database (with --no-wait), 8 the state folder cannot be written, 9 the
Dask scheduler cannot be reached.
"""

from __future__ import annotations

import sys

from pydantic import ValidationError

from loader.cli.commands import COMMANDS
from loader.cli.console import err, use_log_format
from loader.cli.exit_codes import ExitCode
from loader.cli.options import parser, settings_from

__all__ = ["ExitCode", "main", "parser"]


def fail(message: str, error: BaseException) -> None:
    """The one line of a failure, and the hint noted on it, if any."""
    err.print(message, markup=False)
    for note in getattr(error, "__notes__", ()):
        err.print(note, markup=False)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    import psycopg

    from loader.api.tokens import TokenConfigError
    from loader.db.connect import DatabaseUnavailable, reason_of
    from loader.db.embedded import EmbeddedServerError
    from loader.flow.errors import (
        ClusterUnavailable,
        InputError,
        RunBusy,
        StateFolderError,
        StorageUnavailable,
    )

    try:
        if hasattr(args, "log_format"):  # the commands a service or a scheduler runs
            use_log_format(settings_from(args).log_format)
        return COMMANDS[args.command](args)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        fail(f"error: invalid setting: {problems}", error)
        return ExitCode.USAGE
    except InputError as error:
        fail(f"error: {error}", error)
        return ExitCode.INPUT
    except (DatabaseUnavailable, EmbeddedServerError, StorageUnavailable) as error:
        fail(f"error: {error}", error)
        return ExitCode.DATABASE
    except RunBusy as error:
        fail(f"error: {error}", error)
        return ExitCode.BUSY
    except StateFolderError as error:
        fail(f"error: {error}", error)
        return ExitCode.STATE
    except ClusterUnavailable as error:
        fail(f"error: {error}", error)
        return ExitCode.CLUSTER
    except psycopg.OperationalError as error:
        fail(f"error: lost the database: {reason_of(error)}", error)
        return ExitCode.DATABASE
    except TokenConfigError as error:
        fail(f"error: invalid setting: {error}", error)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as error:  # noqa: BLE001 - the last line of defence: one line, no traceback
        fail(f"error: unexpected {type(error).__name__}: {error}", error)
        return ExitCode.ERROR


if __name__ == "__main__":
    sys.exit(main())
