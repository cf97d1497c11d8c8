"""The CSV reader: line endings, BOM, trimming, blank lines, strict quoting, bad bytes, batches."""

from __future__ import annotations

import pytest

from loader.flow.errors import InputError
from loader.flow.model import ReadCounts
from loader.flow.source.csv_reader import read_batches
from loader.flow.source.lines import NOT_UTF8, NUL_BYTE
from loader.tables import DEPARTMENTS, HIRED_EMPLOYEES

ROW = b"1,Ana Silva,2021-03-01T10:00:00Z,2,3"


def batches_of(tmp_path, content: bytes, table=HIRED_EMPLOYEES, size=1000, counts=None):
    path = tmp_path / table.file_name
    path.write_bytes(content)
    return list(read_batches(path, table, size, counts))


def rows(batches):
    return [list(values) for batch in batches for values in zip(*batch.values)]


def test_crlf_lf_bom_and_missing_final_newline_read_the_same_rows_and_batch_ids(tmp_path):
    lf = batches_of(tmp_path, b"1,Sales\n2,Legal\n", DEPARTMENTS)
    variants = [b"1,Sales\r\n2,Legal\r\n", b"\xef\xbb\xbf1,Sales\n2,Legal\n", b"1,Sales\n2,Legal"]
    for content in variants:
        other = batches_of(tmp_path, content, DEPARTMENTS)
        assert rows(other) == rows(lf) == [["1", "Sales"], ["2", "Legal"]]
        assert [b.batch_id for b in other] == [b.batch_id for b in lf]


def test_values_are_trimmed_and_empty_fields_become_missing(tmp_path):
    (batch,) = batches_of(tmp_path, b"  1 ,  Supply Chain \n2,   \n", DEPARTMENTS)
    assert rows([batch]) == [["1", "Supply Chain"], ["2", None]]


def test_blank_lines_are_skipped_counted_and_keep_line_numbers(tmp_path):
    counts = ReadCounts()
    (batch,) = batches_of(tmp_path, b"1,A\n\n   \r\n2,B\n", DEPARTMENTS, counts=counts)
    assert batch.line_numbers == [1, 4]
    assert (counts.rows, counts.blank_lines, counts.lines) == (2, 2, 4)


def test_quoted_fields_may_hold_commas_and_doubled_quotes(tmp_path):
    (batch,) = batches_of(tmp_path, b'1,"Research, ""R&D"""\n', DEPARTMENTS)
    assert rows([batch]) == [["1", 'Research, "R&D"']]


def test_unclosed_quote_is_an_error_at_its_own_line(tmp_path):
    with pytest.raises(InputError, match=r"departments.csv, line 2: unclosed quote"):
        batches_of(tmp_path, b'1,A\n2,"B\n3,C\n4,"D"\n', DEPARTMENTS)


def test_wrong_field_count_names_file_line_and_expected_fields(tmp_path):
    content = ROW + b"\n" + b"2,Bo,2021-03-01T10:00:00Z,2\n"
    with pytest.raises(InputError) as error:
        batches_of(tmp_path, content)
    message = str(error.value)
    assert "hired_employees.csv, line 2" in message
    assert "expected 5 fields (id, name, datetime, department_id, job_id), found 4" in message


def test_bytes_that_are_not_utf8_or_nul_keep_the_row_escaped_and_named(tmp_path):
    content = b"1,Jos\xe9\n2,A\x00B\n3,Fine\n"
    (batch,) = batches_of(tmp_path, content, DEPARTMENTS)
    assert rows([batch]) == [["1", "Jos\\xe9"], ["2", "A\\x00B"], ["3", "Fine"]]
    assert batch.decode_errors == [NOT_UTF8, NUL_BYTE, None]


def test_batches_hold_consecutive_rows_and_the_last_may_be_short(tmp_path):
    content = b"".join(f"{i},D{i}\n".encode() for i in range(1, 8))
    batches = batches_of(tmp_path, content, DEPARTMENTS, size=3)
    assert [b.rows for b in batches] == [3, 3, 1]
    assert [(b.first_line, b.last_line) for b in batches] == [(1, 3), (4, 6), (7, 7)]


def test_batch_id_changes_with_content_or_position_only(tmp_path):
    first = batches_of(tmp_path, b"1,A\n2,B\n3,C\n4,D\n", DEPARTMENTS, size=2)
    fixed = batches_of(tmp_path, b"1,A\n2,B\n3,C\n4,E\n", DEPARTMENTS, size=2)
    assert first[0].batch_id == fixed[0].batch_id
    assert first[1].batch_id != fixed[1].batch_id
    shifted = batches_of(tmp_path, b"\n1,A\n2,B\n", DEPARTMENTS, size=2)
    assert shifted[0].batch_id != first[0].batch_id


def test_reading_streams_batches_before_the_end_of_the_file(tmp_path):
    path = tmp_path / "departments.csv"
    path.write_bytes(b"1,A\n2,B\n3,C,extra\n")
    reader = read_batches(path, DEPARTMENTS, 2)
    assert next(reader).rows == 2
    with pytest.raises(InputError, match="line 3"):
        next(reader)


def test_unreadable_path_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        list(read_batches(tmp_path, DEPARTMENTS, 10))
