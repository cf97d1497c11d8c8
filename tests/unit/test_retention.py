"""The state folder keeps the latest LOADER_DOCS_KEEP runs' GX validations, data docs pages, log
folders and dlt packages, whatever number of runs came before: a `watch` running for weeks
stores no more than its first days did."""

from __future__ import annotations

from pathlib import Path

from loader.flow.runtime.retention import prune_state

SUITES = ("departments", "jobs", "hired_employees")


def run_ids(count: int) -> list[str]:
    """Run ids as `ledger.new_run_id` makes them, oldest first."""
    return [
        f"20261204T{hour:02d}{minute:02d}00Z-{n:06x}"
        for n, (hour, minute) in enumerate(divmod(index, 60) for index in range(count))
    ]


def stored_runs(state: Path, ids: list[str]) -> None:
    for number, run_id in enumerate(ids):
        for root in (state / "gx" / "validations", state / "gx" / "data_docs" / "validations"):
            for suite in SUITES:
                folder = root / suite / f"lines 1-1000 of run {run_id}"
                folder.mkdir(parents=True)
                (folder / "result.json").write_text("{}")
        (state / "logs" / run_id).mkdir(parents=True)
        (state / "dlt" / "loaded" / f"1796400{number:03d}.5").mkdir(parents=True)


def left(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


def test_only_the_newest_runs_are_kept_whatever_came_before(tmp_path):
    ids = run_ids(300)
    stored_runs(tmp_path, ids)
    (tmp_path / "gx" / "validations" / ".ge_store_backend_id").write_text("kept")
    gx, logs, loaded = tmp_path / "gx", tmp_path / "logs", tmp_path / "dlt" / "loaded"

    prune_state(gx, logs, loaded, keep=10)

    kept = ids[-10:]
    assert left(logs) == set(kept)
    for suite in SUITES:
        for root in (gx / "validations", gx / "data_docs" / "validations"):
            assert left(root / suite) == {f"lines 1-1000 of run {run_id}" for run_id in kept}
    assert len(left(loaded)) == 10 and max(left(loaded)) == "1796400299.5"
    assert (gx / "validations" / ".ge_store_backend_id").read_text() == "kept"


def test_fewer_runs_than_kept_are_left_alone(tmp_path):
    ids = run_ids(5)
    stored_runs(tmp_path, ids)
    removed = prune_state(tmp_path / "gx", tmp_path / "logs", tmp_path / "dlt" / "loaded", 10)
    assert removed == 0 and left(tmp_path / "logs") == set(ids)
