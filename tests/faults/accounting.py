"""What every fault test checks in the database afterwards: each input row ended in exactly one
place (core, or held back in the ledger with its failing lines logged), raw still traces every
row to its file and line, and no run is left `running`."""

from __future__ import annotations

from collections import Counter
from functools import cache
from pathlib import Path

import psycopg

from loader.flow.model import RawBatch
from loader.flow.source.csv_reader import read_batches
from loader.tables import TABLES, Table

PROMOTED, PARTIAL, REJECTED, WAITING = "promoted", "partially_promoted", "rejected", "waiting"
HELD_BACK = {REJECTED, WAITING}
BATCH_SIZE = 1000


@cache
def input_batches(input_dir: Path, table: Table) -> list[RawBatch]:
    """The batches a run of default batch size cuts from the table's file."""
    return list(read_batches(input_dir / table.file_name, table, BATCH_SIZE))


def assert_every_row_once(url: str, input_dir: Path) -> None:
    """Every data row of every input file ends exactly once: in core (its batch promoted), or
    held back (its batch rejected or waiting, its failing lines in audit.rejected_rows)."""
    with psycopg.connect(url) as conn:
        for table in TABLES:
            _assert_table_once(conn, table, input_batches(input_dir, table))


def _assert_table_once(conn: psycopg.Connection, table: Table, batches: list[RawBatch]) -> None:
    ledger = {
        batch_id: (status, rows_read, promoted, rejected)
        for batch_id, status, rows_read, promoted, rejected in conn.execute(
            "select batch_id, status, rows_read, rows_promoted, rows_rejected "
            "from audit.batches where table_name = %s",
            (table.name,),
        )
    }
    assert sorted(ledger) == sorted(b.batch_id for b in batches), (
        f"{table.name}: the ledger holds exactly the input's batches, each once"
    )
    core = {
        str(key): batch_id
        for key, batch_id in conn.execute(f'select id, _batch_id from core."{table.name}"')
    }
    logged = Counter(
        (batch_id, line)
        for batch_id, line in conn.execute(
            "select batch_id, line_number from audit.rejected_rows where table_name = %s",
            (table.name,),
        )
    )
    assert all(count == 1 for count in logged.values()), f"{table.name}: a line logged twice"
    lines = {(b.batch_id, line) for b in batches for line in b.line_numbers}
    assert set(logged) <= lines, f"{table.name}: audit.rejected_rows names lines not in the input"

    in_core = 0
    for batch in batches:
        status, rows_read, promoted, rejected = ledger[batch.batch_id]
        assert status in (PROMOTED, PARTIAL, *HELD_BACK), (batch.batch_id, status)
        assert rows_read == batch.rows and promoted + rejected == rows_read, batch.batch_id
        keys = batch.values[table.column_names.index(table.primary_key)]
        promoted_here = 0
        for line, key in zip(batch.line_numbers, keys):
            here = core.get(key) == batch.batch_id
            failing = (batch.batch_id, line) in logged
            if status == PROMOTED:
                assert here and not failing, f"{table.name} line {line}: promoted batch"
            elif status == PARTIAL:
                assert here != failing, f"{table.name} line {line}: in core xor logged"
            else:
                assert not here, f"{table.name} line {line}: held back and in core"
            promoted_here += here
        assert promoted_here == promoted, f"{table.name} batch {batch.batch_id}: ledger count"
        in_core += promoted_here
    assert len(core) == in_core, f"{table.name}: core holds rows no promoted line accounts for"


def assert_raw_lineage_intact(url: str, input_dir: Path) -> None:
    """raw holds every input row with its file, line and batch; no run landed a row twice; each
    raw row names a run in audit.runs, and each core row has its raw row."""
    with psycopg.connect(url) as conn:
        for table in TABLES:
            raw = f'raw."{table.name}"'
            source = str(input_dir / table.file_name)
            landed = set(
                conn.execute(
                    f"select _batch_id, _line_number from {raw} where _source_file = %s", (source,)
                ).fetchall()
            )
            expected = {
                (b.batch_id, line)
                for b in input_batches(input_dir, table)
                for line in b.line_numbers
            }
            assert landed == expected, f"{table.name}: raw lost rows or holds foreign ones"
            repeats = conn.execute(
                f"select count(*) from (select 1 from {raw} "
                "group by _run_id, _batch_id, _line_number having count(*) > 1) as twice"
            ).fetchone()[0]
            assert repeats == 0, f"{table.name}: one run landed a line twice"
            orphans = conn.execute(
                f"select count(*) from {raw} as r "
                "where not exists (select 1 from audit.runs where run_id = r._run_id)"
            ).fetchone()[0]
            assert orphans == 0, f"{table.name}: raw rows of a run audit.runs does not know"
            untraced = conn.execute(
                f'select count(*) from core."{table.name}" as c where not exists '
                f"(select 1 from {raw} as r where r._batch_id = c._batch_id and r.id = c.id::text)"
            ).fetchone()[0]
            assert untraced == 0, f"{table.name}: core rows without their raw row"


def assert_no_run_left_running(url: str) -> None:
    with psycopg.connect(url) as conn:
        running = conn.execute("select run_id from audit.runs where status = 'running'").fetchall()
    assert running == [], f"runs left running: {running}"


def assert_every_promise(url: str, input_dir: Path) -> None:
    assert_every_row_once(url, input_dir)
    assert_raw_lineage_intact(url, input_dir)
    assert_no_run_left_running(url)
