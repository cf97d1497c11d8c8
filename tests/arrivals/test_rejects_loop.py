"""The reject loop as a user goes round it: `python -m loader rejects` writes the rows a run held
back as an export with their reasons beside it, the user corrects the failing rows, and the
corrected file dropped into an input loads them like any export."""

from __future__ import annotations

import csv
from itertools import groupby

import psycopg
import pytest

from loader.sample import write_sample
from loader.tables import HIRED_EMPLOYEES
from tests.arrivals.conftest import environment, loader, summary_of

pytestmark = pytest.mark.database

WITH_ITS_BATCH = "held back with its batch"  # the rule of a sound row in a batch held back


def corrected(rows: list[list[str]], reasons: list[dict]) -> list[list[str]]:
    """The held-back rows with each failing one replaced by sound values under its own id.

    The two files list the same rows in the same order, a row's reasons on consecutive lines.
    The sample numbers its hires by line, so a row's id is its line: the id it was meant to
    have even where the failure is in the id itself."""
    per_row = [list(group) for _, group in groupby(reasons, lambda r: (r["source"], r["line"]))]
    assert len(per_row) == len(rows)
    fixed = []
    for row, failures in zip(rows, per_row):
        line = failures[0]["line"]
        if all(failure["rule"] == WITH_ITS_BATCH for failure in failures):
            assert row[0] == line, "a sound row comes back as it was"
            fixed.append(row)
        else:
            fixed.append([line, f"Corrected Row {line}", "2021-06-01T09:00:00Z", "1", "1"])
    return fixed


def test_held_back_rows_written_out_corrected_and_dropped_back_in_reach_core(clean, tmp_path):
    env = environment(clean, tmp_path / "state")
    sample = tmp_path / "sample"
    written = write_sample(sample, rows=1000, seed=3)
    run = summary_of(
        loader(
            "run",
            "--input",
            str(sample),
            "--json",
            "--skip-marts",
            "--batch-size",
            "100",
            env=env,
            cwd=tmp_path,
        )
    )
    [hires] = [table for table in run["tables"] if table["table"] == "hired_employees"]
    assert hires["rows_held_back"] > len(written["broken_lines"]), "whole batches held back"
    out = tmp_path / "fix" / "hired_employees_fix.csv"

    result = loader(
        "rejects", "--table", "hired_employees", "--out", str(out), env=env, cwd=tmp_path
    )

    assert result.returncode == 0, result.stderr
    with out.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    with out.with_name("hired_employees_fix.reasons.csv").open(newline="") as handle:
        reasons = list(csv.DictReader(handle))
    assert len(rows) == hires["rows_held_back"]
    assert all(len(row) == len(HIRED_EMPLOYEES.columns) for row in rows), "the export's layout"
    assert list(reasons[0]) == ["table", "source", "line", "field", "rule"]
    assert len(reasons) >= len(rows)
    assert {int(r["line"]) for r in reasons if r["rule"] != WITH_ITS_BATCH} == set(
        written["broken_lines"]
    ), "every broken line of the sample, and only those, has a failing rule"
    ids = sorted({int(r["line"]) for r in reasons})
    with psycopg.connect(clean) as conn:
        assert conn.execute(
            "select count(*) from core.hired_employees where id = any(%s)", (ids,)
        ).fetchone() == (0,)

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    with (inbox / out.name).open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\r\n").writerows(corrected(rows, reasons))
    fix_run = summary_of(
        loader("run", "--input", str(inbox), "--json", "--skip-marts", env=env, cwd=tmp_path)
    )

    assert fix_run["totals"]["rows_held_back"] == 0
    with psycopg.connect(clean) as conn:
        found = conn.execute(
            "select id from core.hired_employees where id = any(%s) order by id", (ids,)
        ).fetchall()
    assert [id_ for (id_,) in found] == ids
    # A held-back row counts as fixed once core has a later row with its id; a row whose id
    # was what failed (non-ASCII digits, a sign, out of range) has no id to be matched by.
    matched = sum(row[0] in {str(id_) for id_ in ids} for row in rows)
    assert matched < len(rows), "the sample breaks some ids"
    again = loader("rejects", "--out", str(tmp_path / "again.csv"), env=env, cwd=tmp_path)
    assert f"hired_employees {len(rows)} ({matched} fixed since)" in again.stderr, again.stderr
