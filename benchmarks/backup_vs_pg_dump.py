"""Benchmark: AVRO backup and restore of core.hired_employees next to pg_dump -Fc / pg_restore.

    python benchmarks/backup_vs_pg_dump.py [--rows 1000000]

Builds a scratch database (`bench_backup`) on the server in use (DATABASE_URL, else the embedded
one), fills it with ROWS hires, then measures in the same run: `python -m backup`'s functions
(create, restore into the emptied table) and pg_dump -Fc -t / pg_restore into a fresh database
(the pg_dump of the pgserver wheel). Prints seconds, file sizes and the ratios.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from pgserver._commands import POSTGRES_BIN_PATH

from backup.restore import restore_table
from backup.store import create_backup
from loader.db.connect import database_url
from loader.db.schema import ensure_schemas
from loader.settings import Settings
from loader.tables import HIRED_EMPLOYEES


def on_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def recreate(server: str, name: str) -> str:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')
        conn.execute(f'create database "{name}"')
    return on_database(server, name)


def fill(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_schemas(conn)
        conn.execute(
            "insert into core.departments select i, 'Department ' || i, 'bench', now() "
            "from generate_series(1, 12) i"
        )
        conn.execute(
            "insert into core.jobs select i, 'Job ' || i, 'bench', now() "
            "from generate_series(1, 200) i"
        )
        conn.execute(
            "insert into core.hired_employees select i, 'Employee ' || i, "
            "timestamptz '2020-01-01' + i * interval '61 seconds', 1 + i %% 12, 1 + i %% 200, "
            "'bench', now() from generate_series(1, %s) i",
            (rows,),
        )
        conn.execute("vacuum analyze core.hired_employees")


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run(rows: int) -> None:
    server = database_url(Settings())
    url = recreate(server, "bench_backup")
    fill(url, rows)
    work = Path(tempfile.mkdtemp(prefix="bench-backup-"))
    info = {}
    avro_create = timed(
        lambda: info.update(made=create_backup(url, work / "avro", [HIRED_EMPLOYEES]))
    )
    avro_bytes = info["made"].tables["hired_employees"]["bytes"]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("delete from core.hired_employees")
    avro_restore = timed(
        lambda: restore_table(url, work / "avro", "hired_employees", info["made"].stamp)
    )
    dump = work / "hired_employees.dump"
    pg_dump = timed(
        lambda: subprocess.run(
            [
                str(POSTGRES_BIN_PATH / "pg_dump"),
                "-Fc",
                "-t",
                "core.hired_employees",
                "-f",
                str(dump),
                url,
            ],
            check=True,
        )
    )
    target = recreate(server, "bench_backup_restore")
    fill(target, 0)  # the parents its foreign keys need; pg_restore creates the table itself
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("drop table core.hired_employees")
    pg_restore = timed(
        lambda: subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_restore"), "-d", target, str(dump)], check=True
        )
    )
    print(f"rows: {rows:,}")
    print(f"{'':22}{'AVRO (fastavro)':>18}{'pg_dump -Fc':>14}{'ratio':>8}")
    print(f"{'backup seconds':22}{avro_create:>18.2f}{pg_dump:>14.2f}{avro_create / pg_dump:>8.2f}")
    print(
        f"{'backup MB':22}{avro_bytes / 1e6:>18.1f}{dump.stat().st_size / 1e6:>14.1f}"
        f"{avro_bytes / dump.stat().st_size:>8.2f}"
    )
    print(
        f"{'restore seconds':22}{avro_restore:>18.2f}{pg_restore:>14.2f}"
        f"{avro_restore / pg_restore:>8.2f}"
    )
    print(
        "(AVRO restore: verify sha256 and rows, stage with COPY, upsert into the existing "
        "table with its key; pg_restore: create the table in a fresh database, COPY, build "
        "the key.)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    run(parser.parse_args().rows)
