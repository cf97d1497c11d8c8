"""The command line: every subcommand and option, argument types that refuse in one line, and
the settings the options override."""

from __future__ import annotations

import argparse
from importlib.metadata import version
from pathlib import Path
from typing import NoReturn

from loader.cli.exit_codes import ExitCode
from loader.settings import Policy
from loader.tables import TABLES


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


def log_options(command: argparse.ArgumentParser, metrics: bool = False) -> None:
    """How a long-lived or unattended command is watched: its log format, its metrics port."""
    from loader.settings import LogFormat

    command.add_argument(
        "--log-format",
        choices=[log_format.value for log_format in LogFormat],
        help="human (default) or json: one JSON object a line on stderr (LOADER_LOG_FORMAT)",
    )
    if metrics:
        command.add_argument(
            "--metrics-port",
            type=port,
            metavar="PORT",
            help="serve Prometheus metrics at /metrics on this port, read token required "
            "(LOADER_METRICS_PORT)",
        )


def port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 1..65535, got {text!r}")
    return int(text)


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
        "4 database or storage unreachable, 5 rejected rows over --max-rejected-rows, 6 dbt "
        "build failed, 7 another run holds the database (--no-wait), 8 the state folder cannot "
        "be written, 9 the Dask scheduler cannot be reached.",
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
    log_options(run)
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
    log_options(watch, metrics=True)

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

    marts = verbs.add_parser(
        "marts", help="run `dbt build` on the database in use (exit 6 on failure)"
    )
    log_options(marts)
    serve = verbs.add_parser("serve", help="the REST API (FastAPI; OpenAPI at /docs)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--insecure-dev",
        action="store_true",
        help="start with no LOADER_API_TOKENS: every endpoint open (development)",
    )
    log_options(serve, metrics=True)
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


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(text)


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
        "log_format": getattr(args, "log_format", None),
        "metrics_port": getattr(args, "metrics_port", None),
    }
    return Settings(**{key: value for key, value in overrides.items() if value is not None})
