"""Every input file's structure checked before anything lands, beside the run's own reading,
so a run may land and settle its first chunks before it has read its last ones.

A file that is not the table it claims to be (wrong field count, unclosed quote) must stop the
run with nothing written. Reading is what finds that; without this pass nothing could land
before the whole input had been read, and promotion (PostgreSQL's work) could not overlap
judging (Python's). The pass is `csv_reader.check_structure`: the reader's own blocks and its
own `split_fields` for every line it would split the slow way, with numpy counting commas and
quotes on the rest (about 0.3 s a million rows, mostly outside the GIL), so the two cannot
disagree. It runs in a thread of the run's process: no second interpreter to start or to hold
in memory. The run lands nothing until the pass said the input is whole.
"""

from __future__ import annotations

import threading
from contextlib import suppress

from loader.flow.errors import ExportGone
from loader.flow.source.csv_reader import check_structure
from loader.flow.source.exports import Export
from loader.flow.source.lines import DEFAULT_ENCODING

# About 20,000 rows of hired_employees uncompressed, or 150,000 gzipped: an input this small is
# usually read whole before the first land (`Settings.land_rows` rows) is due.
EAGER_BYTES = 1_000_000


class StructureCheck:
    """The pass over `exports`; calling it waits for its verdict.

    Started at once when the input is larger than EAGER_BYTES (it then runs beside the run's
    first chunks), else only when a land is due before the run has read its input whole: a
    small input is read whole before its first land, and the run's own reader has then
    checked it (`pipeline.Run` asks only for lands before that).
    """

    def __init__(self, exports: list[Export], batch_size: int, encoding: str = DEFAULT_ENCODING):
        """`batch_size` is the run's: a structure error does not depend on it."""
        self.exports = exports
        self.encoding = encoding
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        if sum(export.size for export in exports) > EAGER_BYTES:
            self._start()

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._check, name="structure-check", daemon=True)
        self._thread.start()

    def _check(self) -> None:
        try:
            for export in self.exports:
                with suppress(ExportGone):  # the run skips it too, and says so
                    check_structure(export.url, export.table, self.encoding, self._stop.is_set)
        except BaseException as error:  # noqa: BLE001 - raised in the run's thread
            self._error = error

    def __call__(self) -> None:
        """Return once every file read whole; raise its InputError (naming the export) or
        the storage's error if one did not."""
        if self._thread is None:
            self._start()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        """Stop the pass if it still runs (the run failed for another reason, or read its
        input whole itself)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
