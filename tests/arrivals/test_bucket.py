"""Exports arriving in a bucket of a real S3-compatible server (moto's, as a process):
`python -m loader run --input s3://bucket/prefix/` loads them as it loads a folder, skips them
once loaded, and says in one line why it cannot read a bucket (exit 4) or an archive (exit 3)."""

from __future__ import annotations

import gzip

import psycopg
import pytest

from loader.cli import ExitCode
from tests.arrivals.conftest import (
    IGNORED,
    SPLIT_FILES,
    assert_one_line,
    core_rows,
    drop_loader_schemas,
    environment,
    file_entries,
    ledger_counts,
    loader,
    run_here,
    summary_of,
    upload,
)
from tests.conftest import free_port

pytestmark = pytest.mark.database


def test_exports_in_a_bucket_load_as_from_a_folder_and_a_second_run_skips_each(
    clean, split, object_store, bucket_prefix, tmp_path
):
    run_here(clean, tmp_path / "folder-state", split)
    expected = core_rows(clean)
    drop_loader_schemas(clean)
    urls = upload(object_store, split, bucket_prefix)
    exports = [f"s3://{bucket_prefix}/{name}" for name, _ in SPLIT_FILES]
    env = environment(clean, tmp_path / "state", **object_store.env)
    options = ("run", "--input", f"s3://{bucket_prefix}/", "--json", "--skip-marts")

    first = summary_of(loader(*options, env=env, cwd=tmp_path))

    assert [(f["url"], f["rows"], f["state"]) for f in first["files"]] == [
        (url, rows, "loaded") for url, (_, rows) in zip(exports, SPLIT_FILES)
    ]
    assert sorted(first["files_ignored"]) == sorted(set(urls) - set(exports))
    assert len(first["files_ignored"]) == len(IGNORED)
    assert core_rows(clean) == expected
    assert [(url, state) for url, _, state, *_ in file_entries(clean)] == [
        (url, "loaded") for url in exports
    ]
    before = core_rows(clean), ledger_counts(clean)

    second = summary_of(loader(*options, env=env, cwd=tmp_path))

    assert second["files"] == []
    assert second["files_skipped"] == exports
    assert second["totals"]["rows_read"] == 0
    assert (core_rows(clean), ledger_counts(clean)) == before


def test_a_missing_bucket_is_exit_4_and_one_line_naming_the_url(clean, object_store, tmp_path):
    env = environment(clean, tmp_path / "state", **object_store.env)
    url = "s3://no-such-bucket-here/hr/"

    result = loader("run", "--input", url, env=env, cwd=tmp_path)

    assert result.returncode == ExitCode.DATABASE
    assert_one_line(result, f"cannot read {url} from its storage")


def test_a_storage_endpoint_nobody_answers_is_exit_4_and_one_line(
    clean, object_store, bucket_prefix, one_file, tmp_path
):
    upload(object_store, one_file, bucket_prefix)
    nobody = {
        **object_store.env,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        # botocore retries a refused connection for 15-20 s; one attempt says the same line.
        "AWS_MAX_ATTEMPTS": "1",
    }
    url = f"s3://{bucket_prefix}/"

    result = loader(
        "run", "--input", url, env=environment(clean, tmp_path / "state", **nobody), cwd=tmp_path
    )

    assert result.returncode == ExitCode.DATABASE
    assert_one_line(result, f"cannot read {url} from its storage")


def test_a_truncated_gz_in_the_bucket_is_exit_3_naming_it_and_recorded_malformed(
    clean, object_store, bucket_prefix, one_file, tmp_path
):
    client = object_store.filesystem()
    for name in ("departments.csv", "jobs.csv"):
        client.put_file(str(one_file / name), f"{bucket_prefix}/{name}")
    data = gzip.compress((one_file / "hired_employees.csv").read_bytes())
    client.pipe_file(f"{bucket_prefix}/hired_employees.csv.gz", data[: len(data) // 2])
    broken = f"s3://{bucket_prefix}/hired_employees.csv.gz"
    env = environment(clean, tmp_path / "state", **object_store.env)

    result = loader(
        "run", "--input", f"s3://{bucket_prefix}/", "--skip-marts", env=env, cwd=tmp_path
    )

    assert result.returncode == ExitCode.INPUT
    assert_one_line(result, broken, "truncated or corrupt archive")
    assert [(url, state) for url, _, state, *_ in file_entries(clean)] == [(broken, "malformed")]
    with psycopg.connect(clean) as conn:
        assert conn.execute("select count(*) from core.departments").fetchone() == (0,)
