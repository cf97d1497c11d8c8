"""The load job against a real PostgreSQL, dlt and GX: where every row ends up, idempotence,
recovery after a fix, and bad input that must leave nothing half-written."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import Future

import psycopg
import pytest

from loader.flow.errors import InputError
from loader.flow.file_run import run_files
from loader.flow.judge.checkpoints import InProcessGate
from loader.sample import write_sample
from loader.settings import EXPECTATIONS_DIR
from loader.tables import TABLES
from tests.conftest import settings_for

pytestmark = pytest.mark.database


def scalar(url, query, *args):
    with psycopg.connect(url) as conn:
        return conn.execute(query, args).fetchone()[0]


def fingerprint(url):
    """Every table's row count and content checksum: what 'changes nothing' is checked against."""
    with psycopg.connect(url) as conn:
        found = {}
        for schema in ("core", "raw"):
            for table in TABLES:
                found[f"{schema}.{table.name}"] = conn.execute(
                    "select count(*), "
                    "md5(coalesce(string_agg(t::text, '|' order by t::text), '')) "
                    f'from {schema}."{table.name}" t'
                ).fetchone()
        for table in ("batches", "rejected_rows"):
            found[f"audit.{table}"] = conn.execute(f"select count(*) from audit.{table}").fetchone()
        return found


def run(url, tmp_path, input_dir, **overrides):
    """The load job without its dbt build (tests/integration/test_marts.py covers that)."""
    settings = settings_for(url, tmp_path / "state", input_dir, build_marts=False, **overrides)
    return run_files(settings)


def test_quarantine_promotes_exactly_the_good_rows_and_logs_each_bad_one(clean, tmp_path):
    written = write_sample(tmp_path / "in", rows=3000)
    summary = run(clean, tmp_path, tmp_path / "in", policy="quarantine_rows")
    hired = next(t for t in summary.tables if t.table == "hired_employees")
    broken = written["broken_lines"]
    assert hired.rows_read == 3000
    assert hired.rows_promoted == 3000 - len(broken)
    assert scalar(clean, "select count(*) from core.hired_employees") == 3000 - len(broken)
    with psycopg.connect(clean) as conn:
        logged = [
            r[0]
            for r in conn.execute(
                "select line_number from audit.rejected_rows where table_name = 'hired_employees' "
                "order by 1"
            )
        ]
        missing_name = conn.execute(
            "select failures from audit.rejected_rows where raw_values->>'name' is null "
            "and table_name = 'hired_employees' limit 1"
        ).fetchone()[0]
    assert logged == broken
    assert {
        "field": "name",
        "rule": "required: present and non-empty",
        "expectation": "expect_column_values_to_not_be_null",
    } in missing_name


def test_reject_batch_holds_back_every_batch_with_a_bad_row(clean, tmp_path):
    written = write_sample(tmp_path / "in", rows=3000)
    run(clean, tmp_path, tmp_path / "in", batch_size=250)
    with psycopg.connect(clean) as conn:
        batches = conn.execute(
            "select first_line, last_line, status, rows_read, rows_promoted, rows_rejected "
            "from audit.batches where table_name = 'hired_employees'"
        ).fetchall()
    for first, last, status, read, promoted, rejected in batches:
        has_bad = any(first <= line <= last for line in written["broken_lines"])
        assert status == ("rejected" if has_bad else "promoted")
        assert read == promoted + rejected
    promoted_rows = sum(b[4] for b in batches)
    assert scalar(clean, "select count(*) from core.hired_employees") == promoted_rows


def test_rows_read_equal_rows_promoted_plus_rows_held_back_in_summary_and_audit(clean, tmp_path):
    write_sample(tmp_path / "in", rows=2000)
    summary = run(clean, tmp_path, tmp_path / "in", batch_size=300)
    for table in summary.tables:
        assert table.rows_read == table.rows_promoted + table.rows_held_back
        assert scalar(clean, f'select count(*) from raw."{table.table}"') == table.rows_read
        audited = scalar(
            clean,
            "select sum(rows_promoted + rows_rejected) from audit.batches where table_name = %s",
            table.table,
        )
        assert audited == table.rows_read


def test_a_second_run_of_the_same_input_reads_no_file_and_changes_nothing(clean, tmp_path):
    write_sample(tmp_path / "in", rows=2000)
    first = run(clean, tmp_path, tmp_path / "in")
    assert [entry["state"] for entry in first.files] == ["loaded"] * 3
    before = fingerprint(clean)
    again = run(clean, tmp_path, tmp_path / "in")
    assert fingerprint(clean) == before
    assert again.files == [] and again.total("rows_read") == 0
    assert again.files_skipped == [entry["url"] for entry in first.files]


def test_a_file_read_again_settles_nothing_twice(clean, tmp_path):
    """The batch ledger stays the authority: a file whose bytes are unchanged but whose ledger
    entry is gone (or whose time changed: its sha256 then decides) settles nothing again."""
    write_sample(tmp_path / "in", rows=2000)
    run(clean, tmp_path, tmp_path / "in")
    before = fingerprint(clean)
    (tmp_path / "in" / "jobs.csv").touch()  # a new modification time, the same bytes
    touched = run(clean, tmp_path, tmp_path / "in")
    assert touched.files == [] and len(touched.files_skipped) == 3
    with psycopg.connect(clean, autocommit=True) as conn:
        conn.execute("delete from audit.files")
    again = run(clean, tmp_path, tmp_path / "in")
    assert fingerprint(clean) == before
    assert again.total("batches_read") == 0
    assert again.total("batches_skipped") > 0
    assert again.total("rows_skipped") == again.total("rows_read") > 0


def test_fixing_bad_rows_promotes_the_fixed_batch_and_skips_the_settled_ones(clean, tmp_path):
    written = write_sample(tmp_path / "in", rows=3000)
    run(clean, tmp_path, tmp_path / "in")
    path = tmp_path / "in" / "hired_employees.csv"
    lines = path.read_bytes().split(b"\r\n")
    for number in written["broken_lines"]:
        lines[number - 1] = f"{number},Fixed Person,2021-05-05T05:05:05Z,1,1".encode()
    path.write_bytes(b"\r\n".join(lines))
    second = run(clean, tmp_path, tmp_path / "in")
    hired = next(t for t in second.tables if t.table == "hired_employees")
    assert hired.batches_promoted == 1 and hired.batches_rejected == 0
    assert hired.batches_skipped == 2
    assert scalar(clean, "select count(*) from core.hired_employees") == 3000


def test_a_malformed_file_stops_the_run_with_nothing_written(clean, tmp_path, sample_dir):
    run(clean, tmp_path, sample_dir)
    before = fingerprint(clean)
    bad = tmp_path / "bad"
    shutil.copytree(sample_dir, bad)
    with (bad / "departments.csv").open("ab") as handle:
        handle.write(b"99,New Department\r\n")
    with (bad / "hired_employees.csv").open("ab") as handle:
        handle.write(b"9999,Ann,2021-01-01T00:00:00Z,1\r\n")
    with pytest.raises(InputError, match=r"hired_employees.csv, line 3001: expected 5 fields"):
        run(clean, tmp_path, bad)
    assert fingerprint(clean) == before
    assert (
        scalar(clean, "select status from audit.runs order by started_at desc limit 1") == "failed"
    )


def test_times_are_stored_as_utc_instants_whatever_the_offset(clean, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "departments.csv").write_text("1,Sales\n")
    (folder / "jobs.csv").write_text("1,Clerk\n")
    (folder / "hired_employees.csv").write_text(
        "1,A,2021-03-31T23:30:00-02:00,1,1\n2,B,2021-01-01T00:00:00Z,1,1\n"
    )
    run(clean, tmp_path, folder)
    with psycopg.connect(clean) as conn:
        conn.execute("set timezone = 'America/Lima'")
        stamps = conn.execute(
            "select to_char(datetime at time zone 'UTC', 'YYYY-MM-DD HH24:MI') "
            "from core.hired_employees order by id"
        ).fetchall()
    assert stamps == [("2021-04-01 01:30",), ("2021-01-01 00:00",)]


def test_rejected_batches_are_logged_as_json_with_their_failing_rows(clean, tmp_path):
    write_sample(tmp_path / "in", rows=3000)
    summary = run(clean, tmp_path, tmp_path / "in")
    logs = list((tmp_path / "state" / "logs" / summary.run_id / "batches").glob("*.json"))
    assert len(logs) == 1
    entry = json.loads(logs[0].read_text())
    assert entry["status"] == "rejected" and entry["rows_promoted"] == 0
    assert entry["rows"] == entry["rows_rejected"] == 1000
    assert entry["failing_rows"] and all(row["failures"] for row in entry["failing_rows"])
    saved = json.loads((tmp_path / "state" / "logs" / summary.run_id / "summary.json").read_text())
    assert saved["totals"]["rows_read"] == summary.total("rows_read")


def test_a_department_held_back_makes_its_hires_fail_the_foreign_key(clean, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "departments.csv").write_text("1,Sales\n2,\n")
    (folder / "jobs.csv").write_text("1,Clerk\n")
    (folder / "hired_employees.csv").write_text("1,A,2021-01-01T00:00:00Z,1,1\n")
    summary = run(clean, tmp_path, folder)
    assert summary.total("rows_promoted") == 1  # only the job
    assert (
        scalar(
            clean,
            "select failures->0->>'rule' from audit.rejected_rows "
            "where table_name = 'hired_employees'",
        )
        == "exists in departments"
    )


# Batches of 100, judged 5 at a time, landed 10 at a time: five lands settled while judging.
SMALL_CHUNKS = {"batch_size": 100, "chunk_rows": 500, "land_rows": 1000}


def settled_state(url):
    """What a run settled, independent of its run id: core's rows and the ledger's verdicts."""
    with psycopg.connect(url) as conn:
        core = {
            table.name: conn.execute(
                f'select {", ".join(table.column_names)}, _batch_id from core."{table.name}" '
                "order by 1"
            ).fetchall()
            for table in TABLES
        }
        ledger = conn.execute(
            "select batch_id, table_name, first_line, last_line, status, rows_promoted, "
            "rows_rejected, reasons from audit.batches order by batch_id"
        ).fetchall()
        rejected = conn.execute(
            "select batch_id, line_number, failures from audit.rejected_rows "
            "order by batch_id, line_number"
        ).fetchall()
    return core, ledger, rejected


@pytest.mark.parametrize("policy", ["reject_batch", "quarantine_rows"])
def test_settling_while_judging_settles_exactly_what_one_chunk_settles(clean, tmp_path, policy):
    write_sample(tmp_path / "in", rows=5000)
    overlapped = run(clean, tmp_path, tmp_path / "in", policy=policy, **SMALL_CHUNKS)
    assert overlapped.total("batches_read") == 1 + 2 + 50  # 12 departments, 120 jobs
    small = settled_state(clean)
    with psycopg.connect(clean, autocommit=True) as conn:
        for schema in ("core", "audit", "raw"):
            conn.execute(f"drop schema {schema} cascade")
    run(clean, tmp_path, tmp_path / "in", policy=policy, batch_size=100, chunk_rows=10_000)
    assert settled_state(clean) == small
    assert small[0]["hired_employees"], "hires were promoted after their departments and jobs"


def test_a_malformed_last_line_writes_nothing_though_earlier_chunks_were_judged(clean, tmp_path):
    write_sample(tmp_path / "in", rows=5000)
    with (tmp_path / "in" / "hired_employees.csv").open("ab") as handle:
        handle.write(b"9999,Ann,2021-01-01T00:00:00Z,1\r\n")
    with pytest.raises(InputError, match=r"hired_employees.csv, line 5001: expected 5 fields"):
        run(clean, tmp_path, tmp_path / "in", **SMALL_CHUNKS)
    with psycopg.connect(clean) as conn:
        landed = conn.execute(
            "select count(*) from information_schema.tables where table_schema = 'raw' "
            "and table_name = any(%s)",
            ([table.name for table in TABLES],),
        ).fetchone()[0]
        assert landed == 0, "nothing reached raw"
        assert conn.execute("select count(*) from audit.batches").fetchone()[0] == 0
        for table in TABLES:
            assert conn.execute(f'select count(*) from core."{table.name}"').fetchone()[0] == 0


class HeldVerdict(Future):
    """A verdict the gate gives only when the run asks for it (`result`), never before:
    whatever the run does before asking, it does while the gate has said nothing."""

    def __init__(self, judge, asked):
        super().__init__()
        self.judge, self.asked = judge, asked

    def result(self, timeout=None):
        if not self.done():
            self.asked()
            self.set_result(self.judge().result())
        return super().result(timeout)


class HoldingGate:
    """The real in-process gate, holding every verdict until the run asks for it, and noting
    how many hires raw holds each time the run asks for a hires verdict."""

    def __init__(self, url, state):
        self.url = url
        self.gate = InProcessGate(EXPECTATIONS_DIR, state)
        self.raw_hires_when_asked: list[int] = []

    def submit(self, table, chunk, batch_ids, known_ids):
        def asked():
            if table.name == "hired_employees":
                self.raw_hires_when_asked.append(raw_hires(self.url))

        return HeldVerdict(lambda: self.gate.submit(table, chunk, batch_ids, known_ids), asked)

    def submit_docs(self):
        return self.gate.submit_docs()

    def build_docs(self):
        return self.gate.build_docs()

    def close(self):
        self.gate.close()


def raw_hires(url) -> int:
    try:
        return scalar(url, "select count(*) from raw.hired_employees")
    except psycopg.errors.UndefinedTable:
        return 0


def test_the_run_lands_chunks_before_the_gate_gives_their_verdicts(clean, tmp_path):
    write_sample(tmp_path / "in", rows=5000)
    settings = settings_for(
        clean, tmp_path / "state", tmp_path / "in", build_marts=False, **SMALL_CHUNKS
    )
    gate = HoldingGate(clean, settings.gx_state_dir)
    summary = run_files(settings, gate=gate)
    assert gate.raw_hires_when_asked[0] >= 2 * SMALL_CHUNKS["chunk_rows"], (
        "the run landed the first hires chunks before it asked for their verdicts"
    )
    assert summary.total("rows_promoted") + summary.total("rows_held_back") == 5000 + 132
    assert summary.total("batches_waiting") == 0
    assert raw_hires(clean) == 5000
