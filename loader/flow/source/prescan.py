"""Every input file read once through the strict reader, in a process of its own, so a run may
land and settle its first chunks before it has read its last ones.

A file that is not the table it claims to be (wrong field count, unclosed quote) must stop the
run with nothing written. Reading is what finds that; without this pass nothing could land
before the whole input had been read, and promotion (PostgreSQL's work) could not overlap
judging (Python's). The pass runs the very reader the run uses (`read_batches`), so the two
cannot disagree, on the second core while the run judges its first chunk; the run lands nothing
until the pass said the input is whole.

`python -m loader.flow.source.prescan TABLE=PATH ... --batch-size B` exits 0 when every file reads,
or `INPUT_ERROR` with the reader's one line (file, line, field) on stderr.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from loader.flow.errors import InputError
from loader.flow.source.csv_reader import read_batches
from loader.tables import TABLES, Table

INPUT_ERROR = 3


class StructureCheck:
    """The pass over `files`, started at once; calling it waits for its verdict."""

    def __init__(self, files: dict[Table, Path], batch_size: int):
        arguments = [f"{table.name}={path}" for table, path in files.items()]
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, *arguments, "--batch-size", str(batch_size)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self._passed = False

    def __call__(self) -> None:
        """Return once every file read whole; raise its InputError if one did not."""
        if self._passed:
            return
        _, errors = self._process.communicate()
        if self._process.returncode == INPUT_ERROR:
            raise InputError(errors.strip().splitlines()[-1])
        if self._process.returncode != 0:
            last = errors.strip().splitlines()[-1:] or [f"exit {self._process.returncode}"]
            raise RuntimeError(f"the input's structure check failed: {last[0]}")
        self._passed = True

    def cancel(self) -> None:
        """Stop the pass if it still runs (the run failed for another reason)."""
        if self._process.returncode is None:
            self._process.kill()
            self._process.communicate()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    parser.add_argument("files", nargs="+", metavar="TABLE=PATH")
    parser.add_argument("--batch-size", type=int, required=True)
    options = parser.parse_args(argv)
    tables = {table.name: table for table in TABLES}
    try:
        for argument in options.files:
            name, _, path = argument.partition("=")
            for _ in read_batches(Path(path), tables[name], options.batch_size):
                pass
    except InputError as error:
        print(error, file=sys.stderr)
        return INPUT_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
