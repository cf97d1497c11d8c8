"""One function per subcommand: each imports what it needs (GX, dlt and Dask only where the
command uses them), does its work elsewhere, and returns its exit code."""

from __future__ import annotations

import argparse
import json
import secrets
import shlex

from loader.cli.console import (
    LIBRARY_LOG,
    err,
    json_logs,
    libraries_quiet,
    out,
    progress_display,
)
from loader.cli.exit_codes import ExitCode
from loader.cli.options import settings_from


def command_run(args: argparse.Namespace) -> int:
    from loader.flow.file_run import run_files
    from loader.observe.setup import Process, observers_for

    settings = settings_from(args)
    observers = observers_for(settings, Process.RUN)
    try:
        with libraries_quiet(settings.state_path / LIBRARY_LOG), progress_display() as progress:
            summary = run_files(
                settings,
                progress,
                wait=not args.no_wait,
                notify=lambda text: err.print(text),
                observers=observers,
            )
    finally:
        observers.close()  # pushed or written, whatever the run's end
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    elif not json_logs():  # in JSON, the log's `file_run.finished` line is the summary
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
    from loader.observe.setup import Process, observers_for

    settings = settings_from(args)
    stop = threading.Event()

    def stop_asked(number, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        # Said by a thread of its own: the signal may have interrupted this thread in the middle
        # of writing a log line, and a write from inside that write is refused (the message
        # was lost); the thread writes once that line is out.
        threading.Thread(
            target=err.print, args=("stopping after the current run (again to abandon it)",)
        ).start()

    signal.signal(signal.SIGTERM, stop_asked)
    signal.signal(signal.SIGINT, stop_asked)
    err.print(f"watching {settings.input_dir} every {args.every:g} s", markup=False)
    gate = None
    if settings.workers is None and settings.scheduler is None:
        from loader.flow.judge.gate_process import ForkedGate
        from loader.settings import EXPECTATIONS_DIR

        # Forked before any thread starts (the metrics server's), warm before the first export.
        gate = ForkedGate(EXPECTATIONS_DIR, settings.gx_state_dir)
    observers = observers_for(settings, Process.WATCH)
    watch = Watch(
        settings,
        args.every,
        said=lambda text: err.print(text, markup=False),
        # In JSON, each run's `watch_run.finished` log line says it.
        ran=(lambda summary: None) if json_logs() else lambda s: print(one_line(s), flush=True),
        stop=stop,
        observers=observers,
        gate=gate,
    )
    with libraries_quiet(settings.state_path / LIBRARY_LOG):
        try:
            watch.run()
        except KeyboardInterrupt:
            err.print("stopped: the current run was abandoned (its row says failed)")
        finally:
            observers.close()
            if gate is not None:
                gate.close()
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
    from loader.observe.setup import Process, observers_for

    settings = settings_from(args)
    check_writable(settings.state_path)  # dbt writes its target there: exit 8, not a dbt error
    observers = observers_for(settings, Process.RUN)
    try:
        build = build_marts(database_url(settings), settings.state_path, observers)
    finally:
        observers.close()
    if not build.success:
        err.print("error: dbt build failed: " + "; ".join(build.failures))
        return ExitCode.DBT
    err.print("marts rebuilt: " + ", ".join(f"marts.{k} {v} rows" for k, v in build.rows.items()))
    return ExitCode.OK


def command_serve(args: argparse.Namespace) -> int:
    from loader.api.server import serve

    return serve(
        settings_from(args),
        args.host,
        args.port,
        args.insecure_dev,
        say=lambda text: err.print(text, markup=False),
    )


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
