"""The project's own paths as measured steps: a file run without dbt, the marts build, an AVRO
backup and a restore. Each `prepare` imports what the step needs (untimed) and returns the
work; the imports sit inside the functions so that a step's process holds only its own.
"""

from __future__ import annotations

from pathlib import Path

from psycopg import sql

from loader.bench.measure import TREE, Work, descendants_watched
from loader.db.connect import connect
from loader.tables import DEPARTMENTS, HIRED_EMPLOYEES, JOBS


def load_files(job: dict) -> Work:
    """`python -m loader run --skip-marts [--workers N] [--policy P]` on job["input_dir"], into
    a fresh database: in this process, or with job["workers"] on a LocalCluster of that many
    single-threaded processes, started and closed inside the timed work as `run` does; their
    peaks then count in the step's (TREE)."""
    from loader.flow.file_run import run_files
    from loader.settings import Policy, Settings

    # Given, not read from the environment: LOADER_WORKERS there would put the in-process run
    # on a cluster, and LOADER_SCHEDULER would refuse the LocalCluster's.
    workers = job.get("workers")
    settings = Settings(
        database_url=job["url"],
        state_dir=Path(job["state_dir"]),
        input_dir=Path(job["input_dir"]),
        batch_size=job["batch_size"],
        policy=job.get("policy", Policy.REJECT_BATCH),
        build_marts=False,
        workers=workers,
        scheduler=None,
    )

    def run() -> None:
        summary = run_files(settings)
        failed = summary.total("batches_failed")
        if summary.status != "completed" or failed:
            raise RuntimeError(f"the run ended {summary.status} with {failed} failed batches")

    def run_watched() -> None:
        with descendants_watched():
            run()

    return Work(run_watched, TREE) if workers else Work(run)


def build_marts(job: dict) -> Work:
    """`dbt build` of the marts on the database a file run filled."""
    from loader.marts.build import build_marts as build

    def run() -> None:
        result = build(job["url"], Path(job["state_dir"]))
        if not result.success:
            raise RuntimeError("dbt build failed: " + "; ".join(result.failures))

    return Work(run)


def backup(job: dict) -> Work:
    """`python -m backup create` of core.hired_employees (and its ledger) into job["folder"]."""
    from backup.store import create_backup

    def run() -> None:
        create_backup(job["url"], Path(job["folder"]), [HIRED_EMPLOYEES])

    return Work(run)


def restore(job: dict) -> Work:
    """`python -m backup restore hired_employees` of the newest backup in job["folder"]."""
    from backup.restore import restore_table

    def run() -> None:
        (restored,) = restore_table(job["url"], Path(job["folder"]), HIRED_EMPLOYEES.name)
        if restored.rows != job["rows"]:
            raise RuntimeError(f"restored {restored.rows} rows, expected {job['rows']}")

    return Work(run)


def core_rows(url: str) -> int:
    with connect(url) as conn:
        return conn.execute("select count(*) from core.hired_employees").fetchone()[0]


def prepare_restore_target(source: str, target: str, with_table: bool) -> None:
    """Untimed set-up of a fresh database to restore into: the loader's schemas and the
    parents' rows from `source`; without core.hired_employees for pg_restore, which makes it."""
    from loader.db.schema import ensure_schemas

    with connect(source) as origin, connect(target, autocommit=True) as conn:
        ensure_schemas(conn)
        for parent in (DEPARTMENTS, JOBS):
            name = sql.Identifier("core", parent.name)
            with (
                origin.cursor().copy(sql.SQL("copy {} to stdout").format(name)) as rows,
                conn.cursor().copy(sql.SQL("copy {} from stdin").format(name)) as into,
            ):
                for block in rows:
                    into.write(block)
        if not with_table:
            conn.execute("drop table core.hired_employees")
