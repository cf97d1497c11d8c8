"""Every input file read once through the strict reader, in a process of its own, so a run may
land and settle its first chunks before it has read its last ones.

A file that is not the table it claims to be (wrong field count, unclosed quote) must stop the
run with nothing written. Reading is what finds that; without this pass nothing could land
before the whole input had been read, and promotion (PostgreSQL's work) could not overlap
judging (Python's). The pass runs the very reader the run uses (`read_batches`), so the two
cannot disagree, on the second core while the run judges its first chunk; the run lands nothing
until the pass said the input is whole.

`python -m loader.flow.source.prescan TABLE=URL ... --batch-size B` exits 0 when every file
reads, or `INPUT_ERROR` with the reader's one line (file, line, field) on stderr.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from contextlib import suppress

from loader.flow.errors import ExportGone, InputError, StorageUnavailable
from loader.flow.source.csv_reader import DEFAULT_ENCODING, read_batches
from loader.flow.source.exports import Export
from loader.tables import table_named

INPUT_ERROR = 3
STORAGE_ERROR = 4
# About 20,000 rows of hired_employees uncompressed, or 150,000 gzipped: an input this small is
# usually read whole before the first land (`Settings.land_rows` rows) is due.
EAGER_BYTES = 1_000_000


class StructureCheck:
    """The pass over `exports`; calling it waits for its verdict.

    Started at once when the input is larger than EAGER_BYTES (it then runs beside the run's
    first chunks), else only when a land is due before the run has read its input whole: a
    small input is read whole before its first land, and the run's own reader has then
    checked it (`pipeline.Run` asks only for lands before that). A small run, or a `watch`
    cycle, does not start a Python process for nothing.
    """

    def __init__(self, exports: list[Export], batch_size: int, encoding: str = DEFAULT_ENCODING):
        self.exports = exports
        self._arguments = [
            sys.executable,
            "-m",
            __name__,
            *[f"{export.table.name}={export.url}" for export in exports],
            "--batch-size",
            str(batch_size),
            "--encoding",
            encoding,
        ]
        self._process: subprocess.Popen | None = None
        self._passed = False
        if sum(export.size for export in exports) > EAGER_BYTES:
            self._start()

    def _start(self) -> None:
        self._process = subprocess.Popen(
            self._arguments,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )

    def __call__(self) -> None:
        """Return once every file read whole; raise its InputError (with the export as its
        `source`) if one did not."""
        if self._passed:
            return
        if self._process is None:
            self._start()
        _, errors = self._process.communicate()
        said = errors.strip().splitlines()[-1:] or [f"exit {self._process.returncode}"]
        if self._process.returncode == INPUT_ERROR:
            raise InputError(said[0], source=self._export_named_in(said[0]))
        if self._process.returncode == STORAGE_ERROR:
            raise StorageUnavailable(said[0])
        if self._process.returncode != 0:
            raise RuntimeError(f"the input's structure check failed: {said[0]}")
        self._passed = True

    def cancel(self) -> None:
        """Stop the pass if it still runs (the run failed for another reason, or read its
        input whole itself)."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            self._process.communicate()

    def _export_named_in(self, message: str) -> str | None:
        """The URL of the export whose name starts the reader's message."""
        return next(
            (e.url for e in self.exports if message.startswith((e.shown + ":", e.shown + ","))),
            None,
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    parser.add_argument("files", nargs="+", metavar="TABLE=URL")
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--encoding", default=DEFAULT_ENCODING)
    options = parser.parse_args(argv)
    try:
        for argument in options.files:
            name, _, url = argument.partition("=")
            with suppress(ExportGone):  # the run skips it too, and says so
                for _ in read_batches(
                    url, table_named(name), options.batch_size, None, options.encoding
                ):
                    pass
    except InputError as error:
        print(error, file=sys.stderr)
        return INPUT_ERROR
    except StorageUnavailable as error:
        print(error, file=sys.stderr)
        return STORAGE_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
