"""`python -m loader run --input s3://... --workers 2`: the workers of a Dask LocalCluster read the
exports from the bucket themselves, and the run leaves what an in-process run of the same
bucket leaves."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.arrivals.conftest import (
    core_rows,
    drop_loader_schemas,
    environment,
    loader,
    run_here,
    summary_of,
    upload,
)

pytestmark = [pytest.mark.cluster, pytest.mark.database]


def outcome(summary: dict) -> dict:
    """What two runs of the same input must agree on: totals, and each file's rows and state."""
    files = [(f["url"], f["table"], f["rows"], f["state"]) for f in summary["files"]]
    return {"totals": summary["totals"], "files": files}


@pytest.mark.parametrize(
    "exports",
    [
        "one_file",
        "split",
    ],
)
def test_a_cluster_run_from_the_bucket_equals_the_run_in_this_process(
    exports, request, clean, aws, bucket_prefix, tmp_path
):
    folder: Path = request.getfixturevalue(exports)
    upload(aws, folder, bucket_prefix)
    url = f"s3://{bucket_prefix}/"
    here = run_here(clean, tmp_path / "here", url).as_dict()
    expected = core_rows(clean), outcome(here)
    drop_loader_schemas(clean)

    result = loader(
        "run",
        "--input",
        url,
        "--workers",
        "2",
        "--json",
        "--skip-marts",
        env=environment(clean, tmp_path / "cluster", **aws.env),
        cwd=tmp_path,
    )

    on_cluster = summary_of(result)
    assert on_cluster["files"], "the cluster read the bucket's files"
    assert all(f["url"].startswith(url) for f in on_cluster["files"])
    assert (core_rows(clean), outcome(on_cluster)) == expected
