"""What PostgreSQL's own tools do with the same rows: the references the loader's paths are
measured against.

`reference`: psql's `\\copy` of the file into an unlogged text table, then one
`insert ... select` of the valid rows into the typed table with its primary key, the rules
written in SQL (the loader's regular expressions, a calendar check, the parents by a
semi-join, a repeated id kept once). `pgloader` (when installed): the same file into the same
typed table, its casts and constraints rejecting what fails. `pg_dump -Fc -t` and `pg_restore`
of core.hired_employees. The tools are taken from PATH or from the pgserver wheel, whichever
matches the server's major version (else the newest that is not older than the server).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from loader.bench.measure import PROGRAMS, Work, run_program
from loader.db.connect import connect
from loader.tables import HIRED_EMPLOYEES, POSTGRES_INTEGER_MAX

# The loader's rules (loader/flow/rules.py), repeated rather than imported: importing that
# module loads Great Expectations into the process whose memory is measured.
ISO_INSTANT = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?:Z|[+-](?:0[0-9]|1[0-5])(?::?[0-5][0-9])?)$"
)
BEYOND_MICROSECONDS = r"(:[0-9]{2}\.[0-9]{6})[0-9]+"
DIGITS = r"^ *[0-9]+ *$"


def clean_copy(source: Path, target: Path) -> None:
    """The file as COPY can read it: a NUL byte or invalid UTF-8 anywhere fails a whole COPY
    (and stops pgloader), so those bytes are taken out; line count and order are kept."""
    with source.open("rb") as lines, target.open("wb") as out:
        for line in lines:
            text = line.rstrip(b"\r\n").replace(b"\x00", b"").decode("utf-8", errors="ignore")
            out.write(text.encode() + b"\n")


def program(name: str, url: str) -> str:
    """The path of PostgreSQL program `name` that fits the server at `url`."""
    from loader.db.embedded import POSTGRES_BIN_PATH

    with connect(url) as conn:
        server_major = conn.info.server_version // 10000
    found = {}
    for candidate in (shutil.which(name), str(POSTGRES_BIN_PATH / name)):
        if candidate and Path(candidate).exists():
            version = subprocess.run([candidate, "--version"], capture_output=True, text=True)
            major = re.search(r"(\d+)(?:\.\d+)?", version.stdout)
            if major:
                found.setdefault(int(major.group(1)), candidate)
    fitting = sorted(major for major in found if major >= server_major)
    if not fitting:
        raise RuntimeError(f"no {name} of version {server_major} or newer on PATH or in pgserver")
    return found[server_major] if server_major in found else found[fitting[-1]]


def typed_columns() -> sql.Composed:
    columns = [
        sql.SQL("{} {} not null").format(sql.Identifier(c.name), sql.SQL(c.postgres_type))
        for c in HIRED_EMPLOYEES.columns
    ]
    return sql.SQL(", ").join(
        [*columns, sql.SQL("primary key ({})").format(sql.Identifier(HIRED_EMPLOYEES.primary_key))]
    )


def parent_ids(path: Path) -> list[int]:
    ids = (line.split(b",", 1)[0].strip() for line in path.read_bytes().splitlines())
    return [int(value) for value in ids if value]


def prepare_reference(url: str, sample_dir: Path) -> None:
    """Untimed set-up: the typed table (empty, with its key) and the parents' ids."""
    with connect(url, autocommit=True) as conn:
        conn.execute("create schema reference")
        conn.execute(sql.SQL("create table reference.hired_employees ({})").format(typed_columns()))
        for parent in ("departments", "jobs"):
            conn.execute(
                sql.SQL("create table {} (id integer primary key)").format(
                    sql.Identifier("reference", parent)
                )
            )
            with conn.cursor().copy(
                sql.SQL("copy {} from stdin").format(sql.Identifier("reference", parent))
            ) as copy:
                for value in parent_ids(sample_dir / f"{parent}.csv"):
                    copy.write_row((value,))


def prepare_pgloader(url: str) -> None:
    """Untimed set-up: the typed table pgloader loads into (public.hired_employees)."""
    with connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("create table public.hired_employees ({})").format(typed_columns()))


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def as_integer(column: str) -> str:
    """An integer rule in SQL: ASCII digits (spaces around them allowed: the cast ignores them,
    as the loader's reader trims them) from 1 to 2147483647; NULL otherwise. Shorter than 19
    characters, so that the bigint cast cannot fail: more leading zeros than that are refused."""
    return (
        f"case when {column} ~ '{DIGITS}' and length({column}) < 19 then case when "
        f"{column}::bigint between 1 and {POSTGRES_INTEGER_MAX} then {column}::integer end end"
    )


def reference_script(clean_file: Path) -> str:
    """psql input: `\\copy`, then the valid rows into the typed table in one statement.

    Each step ends in `offset 0`, which keeps the planner from copying its expressions into the
    next steps' conditions: inlined, the regular expressions ran a dozen times per row (5x
    slower). Every cast sits in a CASE (or on a value a fenced step already checked): PostgreSQL
    evaluates a CASE in order, but may reorder AND-ed conditions.
    """
    file = literal(str(clean_file))
    return f"""\
create unlogged table reference.lines (
  id text, name text, datetime text, department_id text, job_id text
);
\\copy reference.lines from {file} with (format csv)
insert into reference.hired_employees (id, name, datetime, department_id, job_id)
with trimmed as (
  select
    id,
    department_id,
    job_id,
    nullif(btrim(name), '') as name,
    btrim(datetime) as datetime
  from reference.lines
  offset 0
),

shaped as (
  select
    name,
    {as_integer("id")} as id,
    {as_integer("department_id")} as department_id,
    {as_integer("job_id")} as job_id,
    case when datetime ~ '{ISO_INSTANT}' then datetime end as datetime
  from trimmed
  offset 0
),

parts as (
  select
    *,
    substr(datetime, 1, 4)::int as y,
    substr(datetime, 6, 2)::int as mo,
    substr(datetime, 9, 2)::int as d,
    substr(datetime, 12, 2)::int as h,
    substr(datetime, 15, 2)::int as mi,
    substr(datetime, 18, 2)::int as s
  from shaped
  offset 0
),

judged as (
  select
    id,
    name,
    department_id,
    job_id,
    case
      when y >= 1 and mo between 1 and 12 and h <= 23 and mi <= 59 and s <= 59
        and d between 1 and case
          when mo = 2 and y % 4 = 0 and (y % 100 <> 0 or y % 400 = 0) then 29
          when mo = 2 then 28
          when mo in (4, 6, 9, 11) then 30
          else 31
        end
        then (case
          when strpos(datetime, '.') = 0 then datetime
          else regexp_replace(datetime, '{BEYOND_MICROSECONDS}', '\\1')
        end)::timestamptz
    end as instant
  from parts
  offset 0
),

final as (
  select id, name, instant, department_id, job_id
  from judged
  where
    id is not null and name is not null and instant is not null
    and department_id in (select id from reference.departments)
    and job_id in (select id from reference.jobs)
)

select * from final
on conflict (id) do nothing;
"""  # noqa: S608 - constants and a quoted path, no outside input


def reference(job: dict) -> Work:
    script = Path(job["work_dir"]) / "reference.sql"
    script.write_text(reference_script(Path(job["clean_file"])))
    psql = program("psql", job["url"])
    command = [psql, "-X", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-d", job["url"], "-f", str(script)]
    return Work(lambda: run_program(command), PROGRAMS)


def pgloader_url(url: str) -> str:
    """pgloader's own URL syntax for the database at `url` (which may be a libpq conninfo)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    user = info.get("user", "postgres")
    if info.get("password"):
        user += f":{info['password']}"
    host = info.get("host") or "localhost"
    if host.startswith("/"):
        host = f"unix:{host}"
    return f"postgresql://{user}@{host}:{info.get('port', 5432)}/{info['dbname']}"


def pgloader_command(clean_file: Path, url: str, batch_size: int) -> str:
    """pgloader's command file; its batches are the loader's size: pgloader retries a batch
    that holds a bad row once per bad row, so its default 25,000 took 11 minutes on 1M rows."""
    columns = ", ".join(HIRED_EMPLOYEES.column_names)
    return f"""\
load csv
  from {literal(str(clean_file))} ({columns})
  into {pgloader_url(url)}?tablename=hired_employees ({columns})
  with fields terminated by ',', fields optionally enclosed by '"', batch rows = {batch_size};
"""


def pgloader(job: dict) -> Work:
    command_file = Path(job["work_dir"]) / "hired_employees.load"
    command_file.write_text(
        pgloader_command(Path(job["clean_file"]), job["url"], job["batch_size"])
    )
    found = shutil.which("pgloader")
    arguments = [found, "--root-dir", str(Path(job["work_dir"]) / "pgloader"), str(command_file)]
    return Work(lambda: run_program(arguments), PROGRAMS)


def pg_dump(job: dict) -> Work:
    arguments = [
        program("pg_dump", job["url"]),
        "-Fc",
        "-t",
        f"core.{HIRED_EMPLOYEES.name}",
        "-f",
        job["dump_file"],
        "-d",
        job["url"],
    ]
    return Work(lambda: run_program(arguments), PROGRAMS)


def pg_restore(job: dict) -> Work:
    arguments = [program("pg_restore", job["url"]), "-d", job["url"], job["dump_file"]]
    return Work(lambda: run_program(arguments), PROGRAMS)
