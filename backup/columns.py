"""Rows in bulk: a batch of rows held as one numpy array per field, and the byte layout that
both of the backup's encodings share.

PostgreSQL's binary COPY and Avro's binary encoding both write a row as its fields one after
the other, each a short prefix (a length, a varint, a union branch) and maybe a run of bytes
taken from a buffer (a text's UTF-8). `layout` writes a whole batch of rows from such pieces
with a few array operations, so that a million rows cost no million Python steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WIDEST = 16  # the widest prefix any encoding here writes
POSITIONS = np.arange(WIDEST, dtype=np.int64)


@dataclass
class Values:
    """One field's values for a batch of rows: integers in `numbers` (int64), or byte strings,
    row i's being `data[start[i] : start[i] + length[i]]`. `null` marks the NULLs (None: no
    NULL); a NULL's number or string is meaningless (its length is 0)."""

    numbers: np.ndarray | None = None
    data: np.ndarray | None = None
    start: np.ndarray | None = None
    length: np.ndarray | None = None
    null: np.ndarray | None = None

    def nulls(self) -> int:
        return 0 if self.null is None else int(self.null.sum())

    def slice(self, first: int, last: int) -> Values:
        """Rows `first` to `last` (views, not copies)."""

        def part(array: np.ndarray | None) -> np.ndarray | None:
            return None if array is None else array[first:last]

        return Values(
            part(self.numbers), self.data, part(self.start), part(self.length), part(self.null)
        )


@dataclass
class Prefix:
    """Bytes computed per row: row i's are `matrix[i, :width[i]]` (all of its row when
    `width` is None)."""

    matrix: np.ndarray
    width: np.ndarray | None = None

    def sizes(self, rows: int) -> np.ndarray:
        if self.width is None:
            return np.full(rows, self.matrix.shape[1], dtype=np.int64)
        return self.width

    def kept(self, rows: int) -> np.ndarray:
        """Which bytes of `matrix` are written."""
        columns = self.matrix.shape[1]
        if self.width is None:
            return np.ones((rows, columns), dtype=bool)
        return POSITIONS[:columns] < self.width[:, None]


@dataclass
class Run:
    """Bytes copied per row: row i's are `data[start[i] : start[i] + length[i]]`."""

    data: np.ndarray
    start: np.ndarray
    length: np.ndarray

    def sizes(self, rows: int) -> np.ndarray:
        return self.length


def covered(size: int, runs: list[tuple[np.ndarray, np.ndarray]], origin: int = 0) -> np.ndarray:
    """Which of the `size` bytes from `origin` on the runs (starts, lengths) cover. Taken
    row by row, piece by piece, the runs must be in order and must not overlap, as the
    fields of rows laid one after the other are (np.repeat refuses them otherwise)."""
    starts = np.column_stack([starts for starts, _ in runs]).ravel() - origin
    lengths = np.column_stack([lengths for _, lengths in runs]).ravel()
    ends = starts + lengths
    counts = np.empty(2 * len(starts) + 1, dtype=np.int64)
    counts[0:-1:2] = starts - np.concatenate(([0], ends[:-1]))  # the gap before each run
    counts[1::2] = lengths
    counts[-1] = size - (ends[-1] if len(ends) else 0)
    pattern = np.zeros(len(counts), dtype=bool)
    pattern[1::2] = True
    return np.repeat(pattern, counts)


def span(runs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[int, int]:
    """The first byte the runs (in order, as for `covered`) cover and the end of the last."""
    if not len(runs[0][0]):
        return 0, 0
    first = min(int(starts[0]) for starts, _ in runs)
    end = max(int(starts[-1] + lengths[-1]) for starts, lengths in runs)
    return first, end


def layout(rows: int, pieces: list[Prefix | Run]) -> tuple[np.ndarray, np.ndarray]:
    """`rows` rows, each the concatenation of its bytes of every piece in order; returns all
    the rows' bytes (uint8) and where each row ends.

    Every run's bytes lie in one buffer in the order they are laid out (row by row, piece by
    piece), as rows parsed from one buffer do; so a mask over the output and one over the
    buffer move them all in one step, and the prefixes, row by row, fill the rest.
    """
    sizes = [piece.sizes(rows) for piece in pieces]
    total = np.zeros(rows, dtype=np.int64)
    for size in sizes:
        total += size
    ends = np.cumsum(total)
    out = np.empty(int(ends[-1]) if rows else 0, dtype=np.uint8)
    offsets = ends - total
    runs, targets = [], []
    for piece, size in zip(pieces, sizes):
        if isinstance(piece, Run):
            runs.append(piece)
            targets.append((offsets, piece.length))
        offsets = offsets + size
    stream = prefix_bytes(rows, [piece for piece in pieces if isinstance(piece, Prefix)])
    if not runs:
        out[:] = stream
        return out, ends
    data = runs[0].data
    if any(run.data is not data for run in runs):
        raise ValueError("runs from more than one buffer")
    texts = covered(len(out), targets)
    sources = [(run.start, run.length) for run in runs]
    first, end = span(sources)
    out[texts] = data[first:end][covered(end - first, sources, first)]
    out[np.logical_not(texts, out=texts)] = stream
    return out, ends


def prefix_bytes(rows: int, prefixes: list[Prefix]) -> np.ndarray:
    """Every row's prefix bytes, row by row, piece by piece."""
    matrix = np.hstack([piece.matrix for piece in prefixes])
    if all(piece.width is None for piece in prefixes):
        return matrix.ravel()
    return matrix[np.hstack([piece.kept(rows) for piece in prefixes])]


def gather(buffer: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
    """The `width` bytes at each offset, one row per offset (uint8, C order)."""
    return buffer[offsets[:, None] + POSITIONS[:width]]


def words(buffer: np.ndarray, kind: str) -> np.ndarray:
    """The numbers of type `kind` (a numpy type string such as ">i4" or "<u8") that start at
    every offset of `buffer`: views, overlapping (stride 1), never copies."""
    size = np.dtype(kind).itemsize
    return np.ndarray((len(buffer) - size + 1,), dtype=kind, buffer=buffer, strides=(1,))


def big_endian(buffer: np.ndarray, offsets: np.ndarray, width: int) -> np.ndarray:
    """The signed big-endian integer of `width` bytes (2, 4 or 8) at each offset, as int64."""
    return words(buffer, f">i{width}")[offsets].astype(np.int64)


def big_endian_bytes(numbers: np.ndarray, width: int) -> np.ndarray:
    """Each number as `width` big-endian bytes, one row per number."""
    return numbers.astype(f">i{width}").view(np.uint8).reshape(len(numbers), width)
