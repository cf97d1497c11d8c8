"""`python -m loader`: subcommands, options and exit codes; the work itself lives elsewhere.

Exit codes: 0 done, 1 unexpected error, 2 usage (and `bench` refused: its database holds
loader rows), 3 bad input (missing or malformed file), 4 database unreachable, 5 more rejected
rows than --max-rejected-rows, 6 dbt build failed, 7 another run holds the database (with
--no-wait), 8 the state folder cannot be written.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shlex
import sys
from contextlib import contextmanager
from enum import IntEnum
from importlib.metadata import version
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError
from rich.console import Console

from loader.settings import Policy
from loader.tables import TABLES


class ExitCode(IntEnum):
    """The exit statuses of `python -m loader`, as the module docstring and README list them.
    Scripts and tests compare against these numbers: a value never changes once released."""

    OK = 0
    ERROR = 1
    USAGE = 2
    INPUT = 3
    DATABASE = 4
    REJECTED = 5
    DBT = 6
    BUSY = 7
    STATE = 8
    CLUSTER = 9


out = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Parser(argparse.ArgumentParser):
    """argparse, with a command-line mistake told in one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def batch_size(text: str) -> int:
    from loader.settings import MAX_BATCH_SIZE

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 1 <= value <= MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_BATCH_SIZE}, got {value}")
    return value


def non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return int(text)


BUNDLED_SEED = 7  # loader/sample_data/ is `sample --rows 5000 --seed 7`


def load_options(command: argparse.ArgumentParser) -> None:
    """The options `run` and `watch` share: what to read and how."""
    command.add_argument(
        "--input",
        metavar="FOLDER|URL",
        help="a folder or any URL fsspec opens (s3://bucket/prefix/, gs://, az://) holding "
        "export files named <table>[_-anything].csv[.gz|.zip] (default: the bundled sample, or "
        "LOADER_INPUT_DIR)",
    )
    command.add_argument(
        "--encoding",
        help="the exports' text encoding, e.g. cp1252 or latin-1 (default utf-8, LOADER_ENCODING)",
    )
    command.add_argument(
        "--batch-size", type=batch_size, help="rows per batch, 1..1000 (default 1000)"
    )
    command.add_argument(
        "--policy",
        choices=[policy.value for policy in Policy],
        help="reject_batch (default): one failing row holds back its whole batch; "
        "quarantine_rows: only failing rows are held back",
    )
    command.add_argument(
        "--skip-marts",
        action="store_true",
        help="do not run `dbt build` after a run (LOADER_BUILD_MARTS=false)",
    )
    spread = command.add_mutually_exclusive_group()
    spread.add_argument(
        "--workers",
        type=positive,
        metavar="N",
        help="read, validate and land on a Dask LocalCluster of N single-threaded worker "
        "processes (LOADER_WORKERS)",
    )
    spread.add_argument(
        "--scheduler",
        metavar="URL",
        help="run on the Dask cluster of this scheduler, e.g. tcp://HOST:8786; every worker "
        "reads the input URL itself, and the state folder at the same path (LOADER_SCHEDULER)",
    )


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    root = Parser(
        prog="python -m loader",
        description="Load CSV exports into PostgreSQL, validating every batch.",
        epilog="Exit codes: 0 done, 1 unexpected error, 2 usage (or bench refused: its database "
        "holds loader rows), 3 bad input, "
        "4 database unreachable, 5 rejected rows over --max-rejected-rows, 6 dbt build failed, "
        "7 another run holds the database (--no-wait), 8 the state folder cannot be written.",
    )
    root.add_argument("--version", action="version", version=f"%(prog)s {version('csv-migrate')}")
    verbs = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = verbs.add_parser("run", help="load, validate and promote the CSV files")
    load_options(run)
    run.add_argument(
        "--max-rejected-rows",
        type=non_negative,
        metavar="N",
        help=f"exit {ExitCode.REJECTED} when more than N rows were held back",
    )
    run.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    run.add_argument(
        "--no-wait",
        action="store_true",
        help=f"when another run holds the database, exit {ExitCode.BUSY} at once instead of "
        "waiting",
    )
    watch = verbs.add_parser(
        "watch",
        help="list the input every few seconds and run over new or changed files, until "
        "stopped (SIGTERM, Ctrl-C): one line per run on stdout",
    )
    load_options(watch)
    watch.add_argument(
        "--every",
        type=positive_seconds,
        default=10.0,
        metavar="SECONDS",
        help="seconds between listings (default 10)",
    )

    runs = verbs.add_parser("runs", help="list recent runs and API requests (audit.runs)")
    runs.add_argument("--limit", type=non_negative, default=20, help="how many (default 20)")
    runs.add_argument("--json", action="store_true", help="print them as JSON on stdout")

    rejects = verbs.add_parser(
        "rejects",
        help="write a run's held-back rows as an export to correct (FILE.csv) and their "
        "reasons beside it (FILE.reasons.csv)",
    )
    rejects.add_argument("--run", help="the run (default: the latest that held rows back)")
    rejects.add_argument("--table", choices=[table.name for table in TABLES], help="one table")
    rejects.add_argument("--out", type=Path, required=True, help="the CSV file to write")

    sample = verbs.add_parser("sample", help="write a deterministic sample set of the three files")
    sample.add_argument("--rows", type=non_negative, default=5000, help="hired_employees rows")
    sample.add_argument("--out", type=Path, required=True, help="folder to write into")
    sample.add_argument(
        "--seed",
        type=int,
        help=f"the same seed writes the same files (the bundled sample is --rows 5000 --seed "
        f"{BUNDLED_SEED}); default: a fresh seed, printed",
    )

    db = verbs.add_parser("db", help="the database in use")
    db_verbs = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_verbs.add_parser("url", help="print the connection URL (starts the embedded server)")
    db_verbs.add_parser("start", help="start the embedded server")
    db_verbs.add_parser("stop", help="stop the embedded server")
    db_verbs.add_parser("env", help="print `export PG...` lines for libpq, psql and dbt")
    bi_role = db_verbs.add_parser(
        "bi-role",
        help="create or update a login role that can read the marts schema and nothing else",
    )
    bi_role.add_argument("--name", default="bi_reader", help="role name (default bi_reader)")
    bi_role.add_argument("--password", required=True, help="the role's password")

    verbs.add_parser("marts", help="run `dbt build` on the database in use (exit 6 on failure)")
    serve = verbs.add_parser("serve", help="the REST API (FastAPI; OpenAPI at /docs)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--insecure-dev",
        action="store_true",
        help="start with no LOADER_API_TOKENS: every endpoint open (development)",
    )
    report = verbs.add_parser("report", help="write the dashboard as one self-contained HTML file")
    report.add_argument("--html", type=Path, required=True, help="file to write")
    report.add_argument(
        "--with-docs",
        action="store_true",
        help="copy the data docs into data_docs/ beside the file and link the validations "
        "there (without it they are listed unlinked)",
    )
    verbs.add_parser("docs", help="print where the Great Expectations data docs are")
    verbs.add_parser(
        "expectations",
        help="regenerate the GX suites and checkpoints in expectations/ from the data dictionary",
    )
    bench = verbs.add_parser(
        "bench",
        help="time the loader, dbt, backup, restore and API next to PostgreSQL's own tools, in "
        "scratch databases (bench_*) on the server in use; refuses to run if its database "
        f"holds loader rows (exit {ExitCode.USAGE})",
    )
    bench.add_argument(
        "--rows", type=positive, default=1_000_000, metavar="N", help="rows to generate (1000000)"
    )
    bench.add_argument(
        "--batch-size", type=batch_size, metavar="B", help="rows per batch, 1..1000 (1000)"
    )
    bench.add_argument(
        "--repeat", type=positive, default=3, metavar="K", help="rounds; medians are shown (3)"
    )
    bench.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    return root


def settings_from(args: argparse.Namespace):
    from loader.settings import Settings

    overrides = {
        "input_dir": getattr(args, "input", None),
        "encoding": getattr(args, "encoding", None),
        "batch_size": getattr(args, "batch_size", None),
        "policy": getattr(args, "policy", None),
        "build_marts": False if getattr(args, "skip_marts", False) else None,
        "workers": getattr(args, "workers", None),
        "scheduler": getattr(args, "scheduler", None),
    }
    return Settings(**{key: value for key, value in overrides.items() if value is not None})


LIBRARY_LOG = "libraries.log"  # in the state folder: what dlt, psycopg2, GX and Dask print


@contextmanager
def libraries_quiet(log: Path):
    """Libraries' output into `log` while a command works; `err` keeps the terminal. A command
    that fails with something logged says where, in one more line."""
    from loader.flow.runtime.library_output import library_output_to

    size = log.stat().st_size if log.exists() else 0
    with library_output_to(log) as terminal:
        if terminal is None:
            yield
            return
        err.file = terminal
        try:
            yield
        except BaseException as error:
            if log.exists() and log.stat().st_size > size:
                error.add_note(f"details: {log}")  # printed under the error's own line
            raise
        finally:
            err.file = None


@contextmanager
def progress_display():
    """Rows read per table, on a terminal only."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    if not err.is_terminal:
        yield lambda table, rows: None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        tasks: dict[str, int] = {}

        def update(table: str, rows: int) -> None:
            if table not in tasks:
                tasks[table] = progress.add_task(table)
            progress.update(tasks[table], description=f"{table}: {rows:,} rows read")

        yield update


def command_run(args: argparse.Namespace) -> int:
    from loader.flow.file_run import run_files

    settings = settings_from(args)
    with libraries_quiet(settings.state_path / LIBRARY_LOG), progress_display() as progress:
        summary = run_files(
            settings, progress, wait=not args.no_wait, notify=lambda text: err.print(text)
        )
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        summary.render(out)
    if summary.marts_status == "dbt build failed":
        err.print("error: dbt build failed: " + "; ".join(summary.marts_failures))
        return ExitCode.DBT
    held_back = summary.total("rows_held_back")
    if args.max_rejected_rows is not None and held_back > args.max_rejected_rows:
        err.print(
            f"error: {held_back} rows held back, more than --max-rejected-rows "
            f"{args.max_rejected_rows}"
        )
        return ExitCode.REJECTED
    failed = summary.total("batches_failed")
    if failed:
        err.print(
            f"warning: {failed} batches failed on transient database errors; "
            "run again to retry them"
        )
    return ExitCode.OK


def command_watch(args: argparse.Namespace) -> int:
    """Until SIGTERM or Ctrl-C: the first lets the current run finish, a second abandons it."""
    import signal
    import threading

    from loader.flow.watch import Watch, one_line

    settings = settings_from(args)
    stop = threading.Event()

    def stop_asked(number, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        err.print("stopping after the current run (again to abandon it)")

    signal.signal(signal.SIGTERM, stop_asked)
    signal.signal(signal.SIGINT, stop_asked)
    err.print(f"watching {settings.input_dir} every {args.every:g} s", markup=False)
    watch = Watch(
        settings,
        args.every,
        said=lambda text: err.print(text, markup=False),
        ran=lambda summary: print(one_line(summary), flush=True),
        stop=stop,
    )
    with libraries_quiet(settings.state_path / LIBRARY_LOG):
        try:
            watch.run()
        except KeyboardInterrupt:
            err.print("stopped: the current run was abandoned (its row says failed)")
    return ExitCode.OK


def command_runs(args: argparse.Namespace) -> int:
    from rich.table import Table as RichTable

    from loader.db.connect import connect, database_url
    from loader.db.schema import ensure_schemas
    from loader.flow.ledger import mark_abandoned, recent_runs

    with connect(database_url(settings_from(args)), autocommit=True) as conn:
        ensure_schemas(conn)
        mark_abandoned(conn)
        runs = recent_runs(conn, args.limit)
    if args.json:
        print(json.dumps(runs, indent=2, default=str))
        return ExitCode.OK
    grid = RichTable(title="Recent runs (newest first)")
    headers = (
        "run",
        "input",
        "status",
        "started (UTC)",
        "seconds",
        "files read",
        "files skipped",
        "rows read",
        "promoted",
        "held",
    )
    for header in headers:
        right = header in headers[4:]
        # The run id whole, whatever the width: it is what `rejects --run` and the API take.
        grid.add_column(header, justify="right" if right else "left", no_wrap=header == "run")
    for run in runs:
        grid.add_row(
            run["run_id"],
            run["input"],
            run["status"],
            f"{run['started_at']:%Y-%m-%d %H:%M:%S}",
            f"{run['seconds']:.1f}",
            *(
                str(run[name] if run[name] is not None else "")
                for name in (
                    "files_read",
                    "files_skipped",
                    "rows_read",
                    "rows_promoted",
                    "rows_held_back",
                )
            ),
        )
    out.print(grid)
    return ExitCode.OK


def command_rejects(args: argparse.Namespace) -> int:
    from loader.db.connect import connect, database_url
    from loader.db.schema import ensure_schemas
    from loader.flow.rejects import write_rejects

    with connect(database_url(settings_from(args)), autocommit=True) as conn:
        ensure_schemas(conn)
        written = write_rejects(conn, args.out, args.run, args.table)
    if written.run_id is None:
        err.print(f"no run has held rows back; wrote an empty {args.out}", markup=False)
        return ExitCode.OK
    counts = ", ".join(
        f"{table} {rows} ({written.fixed[table]} fixed since)"
        for table, rows in written.rows.items()
    )
    err.print(f"run {written.run_id}: held back {counts}; wrote {args.out}", markup=False)
    return ExitCode.OK


def command_sample(args: argparse.Namespace) -> int:
    from loader.sample import write_sample

    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    written = write_sample(args.out, args.rows, seed)
    err.print(
        f"wrote {args.out}: {written['departments']} departments, {written['jobs']} jobs, "
        f"{written['hired_employees']} hired employees "
        f"({len(written['broken_lines'])} broken on purpose), seed {seed}"
    )
    return ExitCode.OK


def command_db(args: argparse.Namespace) -> int:
    from loader.db.connect import (
        connect,
        database_url,
        embedded_server,
        libpq_environment,
        with_user,
    )
    from loader.db.roles import grant_marts_reader

    settings = settings_from(args)
    if args.db_command == "url":
        print(database_url(settings))
    elif args.db_command == "env":
        for variable, value in libpq_environment(database_url(settings)).items():
            print(f"export {variable}={shlex.quote(value)}")
    elif args.db_command == "bi-role":
        url = database_url(settings)
        with connect(url, autocommit=True) as conn:
            grant_marts_reader(conn, args.name, args.password)
        err.print(
            f"role {args.name} can read schema marts and nothing else; connect with "
            f"{with_user(url, args.name)}"
        )
    elif args.db_command == "start":
        err.print(f"running: {embedded_server(settings).start()}")
    elif settings.database_url:
        err.print("DATABASE_URL is set: there is no embedded server to stop")
    else:
        stopped = embedded_server(settings).stop()
        err.print("stopped" if stopped else "the embedded server was not running")
    return ExitCode.OK


def command_marts(args: argparse.Namespace) -> int:
    from loader.db.connect import database_url
    from loader.flow.runtime.state_folder import check_writable
    from loader.marts.build import build_marts

    settings = settings_from(args)
    check_writable(settings.state_path)  # dbt writes its target there: exit 8, not a dbt error
    build = build_marts(database_url(settings), settings.state_path)
    if not build.success:
        err.print("error: dbt build failed: " + "; ".join(build.failures))
        return ExitCode.DBT
    err.print("marts rebuilt: " + ", ".join(f"marts.{k} {v} rows" for k, v in build.rows.items()))
    return ExitCode.OK


def command_serve(args: argparse.Namespace) -> int:
    from loader.api.server import serve

    return serve(settings_from(args), args.host, args.port, args.insecure_dev)


def command_report(args: argparse.Namespace) -> int:
    from loader.db.connect import connect, database_url
    from loader.db.schema import ensure_schemas
    from loader.web.dashboard import dashboard_data, write_report

    settings = settings_from(args)
    with connect(database_url(settings), autocommit=True) as conn:
        ensure_schemas(conn)
        data = dashboard_data(conn)
    docs = write_report(args.html, data, settings.gx_state_dir, with_docs=args.with_docs)
    size = args.html.stat().st_size // 1024
    err.print(
        f"wrote {args.html} ({size} KiB, works offline)"
        + (f", data docs in {docs}" if docs else ""),
        markup=False,
    )
    return ExitCode.OK


def command_docs(args: argparse.Namespace) -> int:
    index = settings_from(args).data_docs_dir / "index.html"
    if not index.exists():
        err.print(f"no data docs yet at {index}: run `python -m loader run` first")
        return ExitCode.INPUT
    print(index.as_uri())
    return ExitCode.OK


def command_expectations(args: argparse.Namespace) -> int:
    from loader.flow.judge.context import write_context
    from loader.settings import EXPECTATIONS_DIR

    write_context(EXPECTATIONS_DIR)
    err.print(f"wrote the suites and checkpoints in {EXPECTATIONS_DIR}")
    return ExitCode.OK


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(text)


def command_bench(args: argparse.Namespace) -> int:
    from loader.bench.measure import StepFailed
    from loader.bench.report import render, write_json
    from loader.bench.scratch import BenchRefused
    from loader.bench.suite import Plan, run_bench

    settings = settings_from(args)
    plan = Plan(args.rows, settings.batch_size, args.repeat)
    try:
        results = run_bench(settings, plan, lambda text: err.print(text, markup=False))
    except BenchRefused as error:
        err.print(f"error: {error}", markup=False)
        return ExitCode.USAGE
    except StepFailed as error:
        err.print(f"error: {error}", markup=False)
        return ExitCode.ERROR
    render(out, plan.title(), results)
    if args.json:
        write_json(args.json, plan.rows, results)
        err.print(f"wrote {args.json}", markup=False)
    return ExitCode.OK


COMMANDS = {
    "run": command_run,
    "watch": command_watch,
    "runs": command_runs,
    "sample": command_sample,
    "db": command_db,
    "marts": command_marts,
    "serve": command_serve,
    "report": command_report,
    "docs": command_docs,
    "rejects": command_rejects,
    "expectations": command_expectations,
    "bench": command_bench,
}


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
