"""PostgreSQL's binary COPY format, a batch of rows at a time: rows read from
`COPY ... TO STDOUT (FORMAT binary)` become columns (backup/columns.py), and columns become the
rows `COPY ... FROM STDIN (FORMAT binary)` takes.

A field kind (loader/tables.py, backup/ledger.py) is carried as a PostgreSQL type: "integer" as
int4, "text" as text, "json" as jsonb (its version byte 1, then its JSON text), "timestamp" as
timestamptz (microseconds since 2000-01-01 UTC, which columns hold as microseconds since
1970-01-01 UTC, the Avro `timestamp-micros` value). Every field's size is checked against its
type and every row's against its fields, so a column whose type is not the one expected is
refused rather than misread.
"""

from __future__ import annotations

import queue
import selectors
import threading
from collections.abc import Iterator

import numpy as np
import psycopg
import psycopg.copy

from backup.columns import WIDEST, Prefix, Run, Values, big_endian, big_endian_bytes, layout

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags 0, no header extension
TRAILER = b"\xff\xff"
UNIX_EPOCH = 946_684_800_000_000  # 1970-01-01 in PostgreSQL's microseconds since 2000-01-01
NUMBER_SIZES = {"integer": 4, "timestamp": 8}
INFINITIES = (np.iinfo(np.int64).min, np.iinfo(np.int64).max)  # timestamptz ±infinity
NULL = -1  # a NULL field's length
QUEUED_BATCHES = 2  # batches of rows waiting between a COPY's thread and the encoder
WAKE_SECONDS = 0.1  # how often a waiting thread looks whether it was told to stop


class Refused(ValueError):
    """Rows that do not have the shape the fields say."""


class Ended(Exception):
    """The COPY ended before its trailer (the server's error follows)."""


DONE = object()  # the receiver's last item


class Receiver:
    """The rows of a binary `COPY ... TO STDOUT`, taken from libpq on a thread of its own in
    batches of `rows` rows, so that the server keeps sending while earlier rows are encoded.

    The CopyData messages (one per row, the signature before the first) come straight from
    `Connection.pgconn`, psycopg's documented way down to libpq: psycopg's own `Copy`
    iteration costs about a microsecond of Python per row, more than all the rest of a
    backup's work on it. The connection is not touched by anyone else meanwhile; the receiver
    stops at the trailer and leaves the end of the COPY to psycopg.
    """

    def __init__(self, pgconn, rows: int):
        self.pgconn = pgconn
        self.rows = rows
        self.received: queue.Queue = queue.Queue(maxsize=QUEUED_BATCHES)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="copy-receiver", daemon=True)

    def __iter__(self) -> Iterator[tuple[bytearray, list[int]]]:
        self.thread.start()
        try:
            while (item := self.received.get()) is not DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.stopping.set()
            self.thread.join()

    def run(self) -> None:
        try:
            for batch in self.receive():
                if not self.hand_over(batch):
                    return
            self.hand_over(DONE)
        except BaseException as error:  # noqa: BLE001 - raised again on the caller's thread
            self.hand_over(error)

    def hand_over(self, item: object) -> bool:
        """Queue `item` unless the caller stopped listening; False if it did."""
        while not self.stopping.is_set():
            try:
                self.received.put(item, timeout=WAKE_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def receive(self) -> Iterator[tuple[bytearray, list[int]]]:
        pgconn = self.pgconn
        data, lengths = bytearray(), []
        first = True
        with selectors.DefaultSelector() as readable:
            readable.register(pgconn.socket, selectors.EVENT_READ)
            while not self.stopping.is_set():
                size, message = pgconn.get_copy_data(1)
                if size == 0:  # nothing in libpq's buffer yet
                    readable.select(WAKE_SECONDS)
                    pgconn.consume_input()
                    continue
                if size < 0:
                    raise Ended
                if first:
                    if bytes(message[: len(SIGNATURE)]) != SIGNATURE:
                        raise Refused("the COPY does not start with the binary signature")
                    message, size, first = message[len(SIGNATURE) :], size - len(SIGNATURE), False
                if size == len(TRAILER) and message == TRAILER:
                    if lengths:
                        yield data, lengths
                    return
                data += message
                lengths.append(size)
                if len(lengths) == self.rows:
                    yield data, lengths
                    data, lengths = bytearray(), []


def batches(
    conn: psycopg.Connection, copy: psycopg.Copy, kinds: list[str], rows: int
) -> Iterator[tuple[int, list[Values]]]:
    """The rows of `copy`, a binary `COPY ... TO STDOUT` on `conn`, in batches of at most
    `rows` rows: (how many, their columns)."""
    try:
        for data, lengths in Receiver(conn.pgconn, rows):
            yield len(lengths), parse(data, lengths, kinds)
    except Ended:
        copy.read()  # raises the server's error
        raise Refused("the COPY ended before its trailer") from None
    if copy.read():
        raise Refused("data after the binary COPY's trailer")


class QueuedWriter(psycopg.copy.LibpqWriter):
    """psycopg's writer for `COPY ... FROM STDIN`, sending on a thread of its own behind a
    short queue, so that the next rows are decoded while these travel (psycopg's own
    QueuedLibpqWriter would hold up to 128 MB)."""

    def __init__(self, cursor: psycopg.Cursor):
        super().__init__(cursor)
        self.waiting: queue.Queue = queue.Queue(maxsize=QUEUED_BATCHES)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self.send, name="copy-sender", daemon=True)
        self.thread.start()

    def send(self) -> None:
        while (data := self.waiting.get()) is not None:
            if self.error is None:
                try:
                    super().write(data)
                except BaseException as error:  # noqa: BLE001 - raised on the caller's thread
                    self.error = error

    def write(self, data) -> None:
        if self.error is not None:
            raise self.error
        self.waiting.put(data)

    def finish(self, exc: BaseException | None = None) -> None:
        self.waiting.put(None)
        self.thread.join()
        if self.error is not None and exc is None:
            raise self.error
        super().finish(exc)


def parse(data: bytearray, lengths: list[int], kinds: list[str]) -> list[Values]:
    """Rows (their bytes one after the other, and each one's length) as columns of the
    fields' kinds."""
    sizes = np.array(lengths, dtype=np.int64)
    data += bytes(WIDEST)
    buffer = np.frombuffer(data, dtype=np.uint8)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    if (big_endian(buffer, starts, 2) != len(kinds)).any():
        raise Refused(f"a row whose field count is not {len(kinds)}")
    position = starts + 2
    columns = []
    for kind in kinds:
        length = big_endian(buffer, position, 4)
        null = length == NULL
        if (length < NULL).any():
            raise Refused("a field of negative length")
        columns.append(field(buffer, kind, position + 4, length, null))
        position = position + 4 + np.maximum(length, 0)
    if (position != ends).any():
        raise Refused("a row whose size is not that of its fields")
    return columns


def field(
    buffer: np.ndarray, kind: str, body: np.ndarray, length: np.ndarray, null: np.ndarray
) -> Values:
    nulls = null if null.any() else None
    size = NUMBER_SIZES.get(kind)
    if size is not None:
        if ((length != size) & ~null).any():
            raise Refused(f"a {kind} field that is not {size} bytes")
        numbers = big_endian(buffer, body, size)
        if kind == "timestamp":
            if np.isin(numbers[~null], INFINITIES).any():
                raise Refused("an infinite time, which Avro's timestamp-micros cannot hold")
            numbers += UNIX_EPOCH
        if nulls is not None:
            numbers[nulls] = 0
        return Values(numbers=numbers, null=nulls)
    length = np.maximum(length, 0)
    if kind == "json":  # jsonb: a version byte, 1, before the text
        if (buffer[body[~null]] != 1).any() or (length[~null] < 1).any():
            raise Refused("a jsonb field of an unknown version")
        body, length = body + ~null, length - ~null
    return Values(data=buffer, start=body, length=length, null=nulls)


def rows(kinds: list[str], columns: list[Values], count: int) -> np.ndarray:
    """`count` rows of the fields' kinds as binary COPY rows (no signature, no trailer)."""
    pieces: list[Prefix | Run] = [
        Prefix(np.broadcast_to(big_endian_bytes(np.array([len(kinds)]), 2), (count, 2)))
    ]
    for kind, values in zip(kinds, columns):
        null = values.null
        size = NUMBER_SIZES.get(kind)
        if size is not None:
            numbers = postgres_times(values.numbers) if kind == "timestamp" else values.numbers
            header = np.full(count, size) if null is None else np.where(null, NULL, size)
            matrix = np.hstack([big_endian_bytes(header, 4), big_endian_bytes(numbers, size)])
            pieces.append(Prefix(matrix, widths(null, 4 + size)))
            continue
        extra = 1 if kind == "json" else 0
        length = values.length if null is None else np.where(null, 0, values.length)
        header = length + extra if null is None else np.where(null, NULL, length + extra)
        matrix = big_endian_bytes(header, 4)
        if extra:
            matrix = np.hstack([matrix, np.ones((count, 1), dtype=np.uint8)])
        pieces.append(Prefix(matrix, widths(null, 4 + extra)))
        pieces.append(Run(values.data, values.start, length))
    return layout(count, pieces)[0]


def widths(null: np.ndarray | None, width: int) -> np.ndarray | None:
    """A field's prefix widths: `width`, but only the length (-1) for a NULL."""
    return None if null is None else np.where(null, 4, width)


def postgres_times(unix: np.ndarray) -> np.ndarray:
    """Microseconds since 1970 as PostgreSQL's since 2000; a time too far out for int64 or
    taken for ±infinity there is refused (PostgreSQL refuses the rest of its range itself)."""
    if len(unix) and unix.min() < INFINITIES[0] + UNIX_EPOCH:
        raise Refused("a time before any PostgreSQL can hold")
    times = unix - UNIX_EPOCH
    if np.isin(times, INFINITIES).any():
        raise Refused("a time PostgreSQL would take for infinity")
    return times
