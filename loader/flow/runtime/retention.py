"""Keeping the state folder as small and as fast on the thousandth run as on the first.

Every run adds GX validation results and their data docs pages (GX lists every stored result
when it builds its index, so checkpoints and docs slow down as they pile up), a log folder, and
a dlt load package. A `watch` runs every few seconds for weeks: only the latest
`LOADER_DOCS_KEEP` runs' of each are kept. The ledger in `audit.*` keeps the full history.

GX names each validation's folder by its run name, `lines A-B of run <run id>`, and run ids
sort by time (`ledger.new_run_id`), so the runs to keep are the newest ids found.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

RUN_IN_NAME = re.compile(r"of run (\d{8}T\d{6}Z-[0-9a-f]+)$")
RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]+$")


def prune_state(gx_state: Path, logs: Path, dlt_loaded: Path, keep: int) -> int:
    """Remove validations, docs pages, run log folders and loaded dlt packages of all but the
    newest `keep` runs (dlt packages: all but the newest `keep`); how many folders went."""
    removed = 0
    validations = [
        folder
        for root in (gx_state / "validations", gx_state / "data_docs" / "validations")
        if root.is_dir()
        for suite in root.iterdir()
        if suite.is_dir()
        for folder in suite.iterdir()
        if RUN_IN_NAME.search(folder.name)
    ]
    runs = {RUN_IN_NAME.search(folder.name).group(1) for folder in validations}
    if logs.is_dir():
        runs |= {folder.name for folder in logs.iterdir() if RUN_ID.match(folder.name)}
    kept = set(sorted(runs)[-keep:])
    for folder in validations:
        if RUN_IN_NAME.search(folder.name).group(1) not in kept:
            removed += _remove(folder)
    if logs.is_dir():
        for folder in logs.iterdir():
            if RUN_ID.match(folder.name) and folder.name not in kept:
                removed += _remove(folder)
    if dlt_loaded.is_dir():
        packages = sorted(dlt_loaded.iterdir(), key=lambda folder: folder.name)
        for folder in packages[:-keep]:
            removed += _remove(folder)
    return removed


def _remove(folder: Path) -> int:
    shutil.rmtree(folder, ignore_errors=True)
    return 1
