"""The Great Expectations gate: real checkpoints from expectations/, verdicts per batch."""

from __future__ import annotations

import json
import shutil

import pytest

from loader.flow.judge.checkpoints import InProcessGate
from loader.flow.judge.context import write_context
from loader.flow.judge.rules import instant_helper, suite_for, validation_frame
from loader.flow.model import RawBatch
from loader.flow.source.csv_reader import to_arrow
from loader.settings import EXPECTATIONS_DIR
from loader.tables import DEPARTMENTS, HIRED_EMPLOYEES, JOBS, TABLES

GOOD = ["7", "Ana Silva", "2021-03-01T10:00:00Z", "1", "1"]
KNOWN = {"departments": [1, 2], "jobs": [1]}


@pytest.fixture(scope="module")
def gate(tmp_path_factory):
    return InProcessGate(EXPECTATIONS_DIR, tmp_path_factory.mktemp("gx"))


def batch_of(rows, batch_id="b1", first_line=1, table=HIRED_EMPLOYEES, decode_errors=None):
    lines = list(range(first_line, first_line + len(rows)))
    values = [list(column) for column in zip(*rows)] if rows else [[] for _ in table.columns]
    return RawBatch.from_lists(
        table,
        "test.csv",
        first_line,
        batch_id,
        lines,
        values,
        decode_errors or [None] * len(rows),
    )


def check(gate, table, batches, known):
    """The gate over these batches, as the load job calls it."""
    chunk = to_arrow(table, batches, "run")
    return gate.check(table, chunk, [batch.batch_id for batch in batches], known)


def failures_of(gate, row, known=KNOWN):
    verdict = check(gate, HIRED_EMPLOYEES, [batch_of([row])], known)["b1"]
    return {(f.field, f.rule) for found in verdict.failing_rows.values() for f in found}


def test_a_clean_row_passes(gate):
    assert failures_of(gate, GOOD) == set()


@pytest.mark.parametrize(
    "bad_id", ["١", "１", "1_000", "+1", "-1", "1.0", "0", "2147483648", "99999999999999999999"]
)
def test_ids_must_be_plain_ascii_digits_within_postgres_integer(gate, bad_id):
    found = failures_of(gate, [bad_id, *GOOD[1:]])
    assert found and all(field == "id" for field, _ in found)


def test_largest_postgres_integer_and_leading_zeros_are_accepted(gate):
    assert failures_of(gate, ["2147483647", *GOOD[1:]]) == set()
    assert failures_of(gate, ["007", *GOOD[1:]]) == set()


@pytest.mark.parametrize(
    "when",
    [
        "2021-13-01T00:00:00Z",
        "2021-02-31T00:00:00Z",
        "2021-04-31T10:00:00Z",
        "2021-03-01T25:00:00Z",
        "2021-03-01T10:00:00",
        "2021-03-01",
        "01/03/2021 10:00",
        "yesterday",
        "2021-03-01T10:00:00+18:00",
        "2021-03-01T10:00:00+16:00",
        "2021-03-01T10:00:00+15:60",
        "2021-03-01T10:00:00+05:30:15",
        "2021-03-01 10:00:00Z",
        "2021-03-01t10:00:00z",
        "0000-01-01T00:00:00Z",
        "2021-12-31T23:59:60Z",
        "2021-12-31T24:00:00Z",
        "2021-03-01T10:00:00.1234567890Z",
    ],
)
def test_datetime_must_be_a_real_iso_8601_instant_with_a_zone(gate, when):
    found = failures_of(gate, [*GOOD[:2], when, *GOOD[3:]])
    assert found and all(field == "datetime" for field, _ in found)
    assert len(found) == 1, "a malformed time is reported once"


@pytest.mark.parametrize(
    "when",
    [
        "2021-03-01T10:00:00+05:30",
        "2021-03-01T10:00:00.123456Z",
        "2024-02-29T23:59:59-0300",
        "2021-03-01T10:00:00+05",
        "2021-03-01T10:00:00-15:59",
        "2021-12-31T23:59:59.999999999Z",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-15:59",
    ],
)
def test_datetime_with_offset_or_fraction_passes(gate, when):
    assert failures_of(gate, [*GOOD[:2], when, *GOOD[3:]]) == set()


def test_a_fraction_beyond_microseconds_is_truncated_and_spoils_no_neighbour():
    rows = [
        [*GOOD[:2], "2021-12-31T23:59:59.9999999Z", *GOOD[3:]],
        ["8", *GOOD[1:2], "1500-06-01T12:00:00Z", *GOOD[3:]],
    ]
    chunk = to_arrow(HIRED_EMPLOYEES, [batch_of(rows)], "run")
    instants = validation_frame(HIRED_EMPLOYEES, chunk)[instant_helper("datetime")]
    assert [str(instant) for instant in instants] == [
        "2021-12-31 23:59:59.999999+00:00",
        "1500-06-01 12:00:00+00:00",
    ]


@pytest.mark.parametrize("position", range(5))
def test_every_field_is_required(gate, position):
    row = list(GOOD)
    row[position] = None
    assert (
        HIRED_EMPLOYEES.columns[position].name,
        "required: present and non-empty",
    ) in failures_of(gate, row)


def test_foreign_keys_must_exist_among_known_ids(gate):
    assert failures_of(gate, [*GOOD[:3], "3", "1"]) == {("department_id", "exists in departments")}
    assert failures_of(gate, [*GOOD[:4], "2"]) == {("job_id", "exists in jobs")}


def test_ids_must_be_unique_within_a_batch_but_not_across_batches(gate):
    twice = check(gate, HIRED_EMPLOYEES, [batch_of([GOOD, GOOD])], KNOWN)["b1"]
    assert sorted(twice.failing_rows) == [1, 2]
    apart = check(
        gate, HIRED_EMPLOYEES, [batch_of([GOOD], "a", 1), batch_of([GOOD], "b", 2)], KNOWN
    )
    assert all(verdict.passed for verdict in apart.values())


def test_a_row_with_bad_bytes_is_rejected(gate):
    batch = batch_of([GOOD], decode_errors=["NUL byte"])
    verdict = check(gate, HIRED_EMPLOYEES, [batch], KNOWN)["b1"]
    assert verdict.failing_rows[1][0].rule == "the line is UTF-8 text without NUL bytes"


def test_an_empty_batch_does_not_pass(gate):
    verdict = check(gate, DEPARTMENTS, [batch_of([], table=DEPARTMENTS)], {})["b1"]
    assert not verdict.passed
    assert verdict.batch_failures[0].rule == "a batch has at least one row"


def test_failing_rows_are_mapped_back_to_their_own_batch(gate):
    first = batch_of([GOOD, ["9", None, *GOOD[2:]]], "first", 1)
    second = batch_of([["8", *GOOD[1:]]], "second", 3)
    verdicts = check(gate, HIRED_EMPLOYEES, [first, second], KNOWN)
    assert list(verdicts["first"].failing_rows) == [2]
    assert verdicts["second"].passed


def test_failing_lines_of_two_files_with_the_same_numbers_keep_their_own_batch(gate):
    """Every file numbers its lines from 1: in a chunk of two files, line 2 is two rows."""
    first = batch_of([GOOD, ["8", *GOOD[1:]]], "first", 1)
    second = batch_of([GOOD, ["9", None, *GOOD[2:]]], "second", 1)
    verdicts = check(gate, HIRED_EMPLOYEES, [first, second], KNOWN)
    assert verdicts["first"].passed
    assert {
        line: [f.field for f in found] for line, found in verdicts["second"].failing_rows.items()
    } == {2: ["name"]}


def test_a_chunk_of_many_broken_rows_is_judged_in_passes_with_the_same_verdicts(gate, tmp_path):
    """A gate allowed two broken-looking rows a pass judges three batches of two each in three
    checkpoint runs (GX's memory grows with the failing rows of one run), and finds what one
    run finds."""
    batches = [
        batch_of(
            [[str(10 * i + j), None if j % 2 else "Ana", *GOOD[2:]] for j in range(1, 5)],
            f"b{i}",
            1 + 4 * i,
        )
        for i in range(3)
    ]
    small = InProcessGate(EXPECTATIONS_DIR, tmp_path, most_failing_rows=2)
    several = check(small, HIRED_EMPLOYEES, batches, KNOWN)
    assert len(small.validated) == 3
    assert several == check(gate, HIRED_EMPLOYEES, batches, KNOWN)
    assert {b: sorted(v.failing_rows) for b, v in several.items()} == {
        "b0": [1, 3],
        "b1": [5, 7],
        "b2": [9, 11],
    }


def test_every_validation_is_stored_and_shown_in_the_data_docs(tmp_path):
    gate = InProcessGate(EXPECTATIONS_DIR, tmp_path)
    check(gate, DEPARTMENTS, [batch_of([["1", "Sales"], ["x", "Legal"]], table=DEPARTMENTS)], {})
    check(gate, JOBS, [batch_of([["1", "Clerk"]], table=JOBS)], {})
    index = gate.build_docs()
    assert index == tmp_path / "data_docs" / "index.html"
    pages = list((tmp_path / "data_docs" / "validations").rglob("*.html"))
    assert len(pages) == 2
    departments_page = next(p for p in pages if "departments" in str(p)).read_text()
    assert (
        "an integer written in plain ASCII digits" in departments_page
        or "^[0-9]+$" in departments_page
    )


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_committed_suites_match_the_data_dictionary(table):
    committed = json.loads((EXPECTATIONS_DIR / "expectations" / f"{table.name}.json").read_text())
    derived = suite_for(table).to_json_dict()

    def rules(suite):
        return [(e["type"], e["kwargs"], e.get("meta")) for e in suite["expectations"]]

    assert rules(committed) == rules(derived), "run `python -m loader expectations` and commit"


def test_regenerating_the_gx_context_changes_no_committed_byte(tmp_path):
    """`python -m loader expectations` on an unchanged dictionary leaves `git status` clean."""
    copy = tmp_path / "expectations"
    shutil.copytree(EXPECTATIONS_DIR, copy, ignore=shutil.ignore_patterns("uncommitted"))
    write_context(copy)
    for committed in sorted(EXPECTATIONS_DIR.rglob("*")):
        relative = committed.relative_to(EXPECTATIONS_DIR)
        if committed.is_file() and "uncommitted" not in relative.parts:
            assert (copy / relative).read_bytes() == committed.read_bytes(), relative
