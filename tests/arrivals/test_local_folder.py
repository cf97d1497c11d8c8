"""Exports arriving in a local folder, driven as a user does (`python -m loader run --input`):
files matched to tables by name and read in name order, any subset of tables, other names
ignored, the file ledger that skips what was loaded, and the one-line exit 3 for inputs that
cannot be read."""

from __future__ import annotations

import gzip
import json
import shutil
import zipfile
from pathlib import Path

import psycopg
import pytest

from loader.cli import ExitCode
from loader.flow.errors import InputError
from loader.sample import write_sample
from tests.arrivals.conftest import (
    IGNORED,
    SPLIT_FILES,
    assert_one_line,
    core_rows,
    drop_loader_schemas,
    environment,
    file_entries,
    ledger_counts,
    lines_of,
    loader,
    run_here,
    summary_of,
    write_lines,
)

pytestmark = pytest.mark.database


def test_split_exports_are_read_in_name_order_and_other_names_are_ignored(clean, split, tmp_path):
    result = loader(
        "run",
        "--input",
        str(split),
        "--json",
        "--skip-marts",
        env=environment(clean, tmp_path / "state"),
        cwd=tmp_path,
    )

    summary = summary_of(result)
    assert [(Path(f["url"]).name, f["rows"], f["state"]) for f in summary["files"]] == [
        (name, rows, "loaded") for name, rows in SPLIT_FILES
    ]
    assert sorted(Path(name).name for name in summary["files_ignored"]) == sorted(IGNORED)
    found = core_rows(clean)
    hires = {id_: name for id_, name, *_ in found["hired_employees"]}
    assert hires[5] == "Written Later", "the last file's row for id 5 won: name order"
    assert hires[6] != "Never Read", "no ignored file was read"
    assert len(found["departments"]) == 12, "the zipped departments were read"


# Every file of a table numbers its lines from 1, and a chunk gathers the batches of several
# files: a failing line must be pinned on its own file's batch, not on another file's line N.


def test_hires_split_over_named_files_give_the_core_one_file_gives(
    clean, one_file, split, tmp_path
):
    run_here(clean, tmp_path / "one-state", one_file)
    expected = core_rows(clean)
    drop_loader_schemas(clean)

    run_here(clean, tmp_path / "split-state", split)

    assert core_rows(clean) == expected


def test_each_file_s_rows_are_judged_as_their_own(clean, one_file, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("departments.csv", "jobs.csv"):
        shutil.copyfile(one_file / name, folder / name)
    write_lines(folder / "hired_employees_1.csv", [b"1,No Zone,2021-01-01T10:00:00,1,1"])
    write_lines(folder / "hired_employees_2.csv", [b"2,Valid,2021-01-01T10:00:00Z,1,1"])

    run_here(clean, tmp_path / "state", folder, policy="quarantine_rows")

    with psycopg.connect(clean) as conn:
        promoted = conn.execute("select id from core.hired_employees").fetchall()
        held = conn.execute("select source from audit.rejected_rows").fetchall()
    assert [Path(source).name for (source,) in held] == ["hired_employees_1.csv"]
    assert promoted == [(2,)]


def test_a_second_run_reads_nothing_and_a_changed_file_is_read_again(clean, split, tmp_path):
    env = environment(clean, tmp_path / "state")
    options = ("run", "--input", str(split), "--json", "--skip-marts")
    first = summary_of(loader(*options, env=env, cwd=tmp_path))
    assert len(first["files"]) == len(SPLIT_FILES)
    core_before, ledger_before = core_rows(clean), ledger_counts(clean)

    second = summary_of(loader(*options, env=env, cwd=tmp_path))

    assert second["files"] == []
    assert [Path(url).name for url in second["files_skipped"]] == [n for n, _ in SPLIT_FILES]
    assert second["totals"]["rows_read"] == 0
    assert core_rows(clean) == core_before
    assert ledger_counts(clean) == ledger_before

    changed = split / "hired_employees_2.csv"
    write_lines(changed, [*lines_of(changed), b"3001,Arrived Later,2022-02-02T10:00:00Z,2,2"])
    third = summary_of(loader(*options, env=env, cwd=tmp_path))

    assert [(Path(f["url"]).name, f["rows"]) for f in third["files"]] == [(changed.name, 1001)]
    assert len(third["files_skipped"]) == len(SPLIT_FILES) - 1
    with psycopg.connect(clean) as conn:
        assert conn.execute("select name from core.hired_employees where id = 3001").fetchone() == (
            "Arrived Later",
        )

    runs = json.loads(loader("runs", "--json", env=env, cwd=tmp_path).stdout)
    assert [(run["files_read"], run["files_skipped"]) for run in runs] == [
        (1, len(SPLIT_FILES) - 1),
        (0, len(SPLIT_FILES)),
        (len(SPLIT_FILES), 0),
    ]


def test_hires_alone_load_once_departments_and_jobs_are_in(clean, one_file, tmp_path):
    first = tmp_path / "first"
    first.mkdir()
    for name in ("departments.csv", "jobs.csv"):
        shutil.copyfile(one_file / name, first / name)
    run_here(clean, tmp_path / "state", first)
    hires = tmp_path / "hires"
    hires.mkdir()
    # Without the fixture's last row, which repeats an id: one core row per promoted row.
    write_lines(
        hires / "hired_employees-2024-05.csv", lines_of(one_file / "hired_employees.csv")[:-1]
    )

    result = loader(
        "run",
        "--input",
        str(hires),
        "--json",
        "--skip-marts",
        env=environment(clean, tmp_path / "state"),
        cwd=tmp_path,
    )

    summary = summary_of(result)
    assert [table["table"] for table in summary["tables"]] == ["hired_employees"]
    promoted = summary["totals"]["rows_promoted"]
    assert promoted > 0
    with psycopg.connect(clean) as conn:
        assert conn.execute("select count(*) from core.hired_employees").fetchone()[0] == promoted


def test_a_malformed_file_stops_the_run_with_exit_3_and_is_recorded_malformed(
    clean, split, tmp_path
):
    write_lines(split / "hired_employees_4.csv", [b"4001,Ann,2021-01-01T00:00:00Z,1"])

    result = loader(
        "run",
        "--input",
        str(split),
        "--skip-marts",
        env=environment(clean, tmp_path / "state"),
        cwd=tmp_path,
    )

    assert result.returncode == ExitCode.INPUT
    assert_one_line(result, "hired_employees_4.csv, line 1: expected 5 fields")
    [(url, table, state, reason, *_)] = file_entries(clean)
    assert (Path(url).name, table, state) == (
        "hired_employees_4.csv",
        "hired_employees",
        "malformed",
    )
    assert "line 1: expected 5 fields" in reason
    assert core_rows(clean) == {name: [] for name in core_rows(clean)}, "nothing promoted"


def truncated_gzip(folder: Path, one_file: Path) -> Path:
    data = gzip.compress((one_file / "hired_employees.csv").read_bytes())
    path = folder / "hired_employees_1.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    return path


def two_file_zip(folder: Path, one_file: Path) -> Path:
    path = folder / "jobs_2024.csv.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(one_file / "jobs.csv", "jobs.csv")
        archive.write(one_file / "jobs.csv", "jobs-copy.csv")
    return path


def truncated_zip(folder: Path, one_file: Path) -> Path:
    path = two_file_zip(folder, one_file)
    path.write_bytes(path.read_bytes()[:100])
    return path


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (truncated_gzip, "truncated or corrupt archive"),
        (truncated_zip, "truncated or corrupt archive"),
        (two_file_zip, "a .zip export must hold one CSV file"),
    ],
    ids=["truncated-gz", "truncated-zip", "zip-of-two"],
)
def test_an_unreadable_archive_is_exit_3_and_one_line_naming_it(
    make, words, clean, one_file, tmp_path
):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("departments.csv", "jobs.csv"):
        shutil.copyfile(one_file / name, folder / name)
    archive = make(folder, one_file)

    result = loader(
        "run", "--input", str(folder), env=environment(clean, tmp_path / "state"), cwd=tmp_path
    )

    assert result.returncode == ExitCode.INPUT
    assert_one_line(result, str(archive), words)


def test_a_folder_without_exports_or_without_existence_is_exit_3(clean, tmp_path):
    env = environment(clean, tmp_path / "state")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("the exports come on Mondays\n")

    nothing = loader("run", "--input", str(empty), env=env, cwd=tmp_path)
    missing = loader("run", "--input", str(tmp_path / "absent"), env=env, cwd=tmp_path)

    assert nothing.returncode == ExitCode.INPUT
    assert_one_line(nothing, str(empty), "no export file found")
    assert missing.returncode == ExitCode.INPUT
    assert_one_line(missing, str(tmp_path / "absent"), "not found")


def test_cp1252_exports_decode_with_encoding_and_spoil_only_their_row_without(clean, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_lines(folder / "departments.csv", [b"1,Sales", "2,Caf\u00e9 Bar".encode("cp1252")])
    env = environment(clean, tmp_path / "state")
    options = ("run", "--input", str(folder), "--json", "--skip-marts")

    as_utf8 = summary_of(loader(*options, "--policy", "quarantine_rows", env=env, cwd=tmp_path))

    assert as_utf8["totals"]["rows_held_back"] == 1
    assert list(as_utf8["tables"][0]["reasons"]) == ["*: the line is UTF-8 text without NUL bytes"]
    with psycopg.connect(clean) as conn:
        assert conn.execute("select id from core.departments").fetchall() == [(1,)]

    # Changed bytes: the same file again would be skipped as loaded, whatever the encoding.
    write_lines(folder / "departments.csv", [b"1,Sales", "2,Caf\u00e9".encode("cp1252")])
    as_cp1252 = loader(*options, "--encoding", "cp1252", env=env, cwd=tmp_path)

    assert summary_of(as_cp1252)["totals"]["rows_held_back"] == 0
    with psycopg.connect(clean) as conn:
        assert conn.execute("select department from core.departments where id = 2").fetchone() == (
            "Caf\u00e9",
        )


def test_a_malformed_line_deep_in_a_file_is_recorded_malformed_too(clean, tmp_path):
    folder = tmp_path / "in"
    write_sample(folder, rows=20_000, seed=5, broken_share=0)
    hires = folder / "hired_employees.csv"
    lines = lines_of(hires)
    lines[14_999] = b"15000,Ann,2021-01-01T00:00:00Z,1"
    write_lines(hires, lines)

    # Small chunks and lands: the run waits for the pre-scan's verdict after its first chunk,
    # so the pre-scan (not the run's own reader) is what finds line 15000, every time; with
    # the defaults the same happens to any line past the first ~150,000 rows.
    with pytest.raises(InputError, match="line 15000: expected 5 fields"):
        run_here(clean, tmp_path / "state", folder, chunk_rows=1000, land_rows=1000)

    assert [(Path(url).name, state) for url, _, state, *_ in file_entries(clean)] == [
        ("hired_employees.csv", "malformed")
    ]
