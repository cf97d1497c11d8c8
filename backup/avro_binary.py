"""Avro's binary encoding of the backup's flat records, a batch at a time: columns
(backup/columns.py) become the bodies of Avro blocks, and block bodies become columns.

The bytes are those fastavro's own record writer makes (tests/unit/test_avro_binary.py holds
them to it): an "int" or a "long" is a zig-zag varint, a "string" its byte length as a varint
and then its UTF-8, a nullable field the union branch (0 for null, 1 for the value) as a varint
before the value. The file around the blocks (header, schema, codec, sync markers) is
fastavro's (backup/avro.py).

Encoding validates what fastavro's `validator=True` does: no NULL where the schema has none, an
"int" within 32 bits, a "string" that is UTF-8. Records in a block carry no boundaries, so
decoding walks the blocks side by side, one record of every block per step, and refuses a block
that ends inside a record or has bytes left over.
"""

from __future__ import annotations

import numpy as np

from backup.columns import (
    POSITIONS,
    WIDEST,
    Prefix,
    Run,
    Values,
    covered,
    gather,
    layout,
    span,
    words,
)

INT_RANGE = (-(2**31), 2**31 - 1)
LONGEST = 10  # bytes of the longest varint (a 64-bit long)
SHIFTS = (7 * POSITIONS[:LONGEST]).astype(np.uint64)
CONTINUATION = 0x80
NULL_BRANCH, VALUE_BRANCH = 0, 2  # union branches 0 and 1, zig-zag encoded
NUMBER_KINDS = ("integer", "timestamp")
TEXT_KINDS = ("text", "json")

# A varint of up to 8 bytes (a number below 2**56) is handled as one little-endian uint64
# word: its 7-bit groups are spread to (or gathered from) the word's bytes in three steps
# of shifts and masks. Longer ones, which these tables never hold, go byte by byte.
WORD_LIMIT = np.uint64(1 << 56)
HIGH_BITS = np.uint64(0x8080808080808080)
LOW_BITS = np.uint64(0x7F7F7F7F7F7F7F7F)
ONE, EIGHT = np.uint64(1), np.uint64(8)
SPREAD = tuple(  # (bits kept in place, bits moved, shift), widest groups first
    (np.uint64(keep), np.uint64(move), np.uint64(shift))
    for keep, move, shift in (
        (0x0000_0000_0FFF_FFFF, 0x00FF_FFFF_F000_0000, 4),
        (0x0000_3FFF_0000_3FFF, 0x0FFF_C000_0FFF_C000, 2),
        (0x007F_007F_007F_007F, 0x3F80_3F80_3F80_3F80, 1),
    )
)
GATHER = tuple(  # the same steps backwards
    (np.uint64(keep), np.uint64(move), np.uint64(shift))
    for keep, move, shift in (
        (0x007F_007F_007F_007F, 0x7F00_7F00_7F00_7F00, 1),
        (0x0000_3FFF_0000_3FFF, 0x3FFF_0000_3FFF_0000, 2),
        (0x0000_0000_0FFF_FFFF, 0x0FFF_FFFF_0000_0000, 4),
    )
)
# A step is needed once a varint is longer than 1, 2 or 4 bytes: once its last byte's high
# bit (`last` below) is at or beyond byte 1, 2 or 4.
GATHER_BOUNDS = tuple(0x80 << (8 * index) for index in (1, 2, 4))
FIRST_HIGH_BIT, FIRST_LOW_BITS = np.uint64(0x80), np.uint64(0x7F)


class Undecodable(ValueError):
    """Block bodies that are not records of the schema."""


class Invalid(ValueError):
    """Values the schema does not allow (what fastavro's validator refuses)."""


def zigzag(numbers: np.ndarray) -> np.ndarray:
    return ((numbers << 1) ^ (numbers >> 63)).astype(np.uint64)


def unzigzag(unsigned: np.ndarray) -> np.ndarray:
    return ((unsigned >> ONE) ^ np.negative(unsigned & ONE)).view(np.int64)


UNZIGZAGGED_BYTES = unzigzag(np.arange(128, dtype=np.uint64))  # every one-byte varint


def varints(unsigned: np.ndarray, null: np.ndarray | None) -> Prefix:
    """Each unsigned number as a varint (none for a NULL)."""
    width = np.ones(len(unsigned), dtype=np.int64)
    for index in range(1, LONGEST):
        width += unsigned >= np.uint64(1 << (7 * index))
    if len(unsigned) and unsigned.max() >= WORD_LIMIT:
        matrix = ((unsigned[:, None] >> SHIFTS) & 0x7F).astype(np.uint8)
        matrix[POSITIONS[:LONGEST] < (width - 1)[:, None]] |= CONTINUATION
    else:
        word = unsigned
        for keep, move, shift in SPREAD:
            word = (word & keep) | ((word & move) << shift)
        flags = ((ONE << (EIGHT * (width - 1).astype(np.uint64))) - ONE) & HIGH_BITS
        matrix = (word | flags).astype("<u8").view(np.uint8).reshape(len(unsigned), 8)
    if null is not None:
        width[null] = 0
    return Prefix(matrix, width)


def check(fields: list[tuple[str, str, bool]], columns: list[Values]) -> None:
    """Refuse what the record schema does not allow, as fastavro's validator would."""
    texts = []
    for (name, kind, nullable), values in zip(fields, columns):
        if not nullable and values.nulls():
            raise Invalid(f"{name} is NULL in {values.nulls()} rows; its schema allows no null")
        if kind == "integer" and len(values.numbers):
            low, high = INT_RANGE
            if values.numbers.min() < low or values.numbers.max() > high:
                raise Invalid(f"{name} holds a number outside an Avro int's 32 bits")
        if kind in TEXT_KINDS:
            texts.append((values.start, values.length))
    if not texts:
        return
    data = columns[[kind in TEXT_KINDS for _, kind, _ in fields].index(True)].data
    # Texts that are UTF-8 one after the other, none starting inside a character, are each
    # UTF-8: the boundaries between them fall between characters.
    firsts = np.concatenate([starts[lengths > 0] for starts, lengths in texts])
    first, end = span(texts)
    try:
        data[first:end][covered(end - first, texts, first)].tobytes().decode("utf-8")
        inside = ((data[firsts] & 0xC0) == CONTINUATION).any()
    except UnicodeDecodeError:
        inside = True
    if inside:
        raise Invalid("a text that is not UTF-8")


def encode(
    fields: list[tuple[str, str, bool]], columns: list[Values], count: int
) -> tuple[np.ndarray, np.ndarray]:
    """`count` records, as Avro encodes them one after the other; `fields` are (name, kind,
    nullable). Returns the bytes and where each record ends."""
    check(fields, columns)
    pieces: list[Prefix | Run] = []
    for (_, kind, nullable), values in zip(fields, columns):
        null = values.null
        if nullable:
            branch = np.full((count, 1), VALUE_BRANCH, dtype=np.uint8)
            if null is not None:
                branch[null, 0] = NULL_BRANCH
            pieces.append(Prefix(branch))
        if kind in NUMBER_KINDS:
            pieces.append(varints(zigzag(values.numbers), null))
        else:
            length = values.length if null is None else np.where(null, 0, values.length)
            pieces.append(varints(zigzag(length), null))
            pieces.append(Run(values.data, values.start, length))
    return layout(count, pieces)


def blocks(encoded: np.ndarray, ends: np.ndarray, records: int) -> list[tuple[int, bytes]]:
    """Encoded records cut into blocks of `records` records: (record count, body) each."""
    cuts = [0, *ends[records - 1 :: records].tolist()]
    if cuts[-1] != len(encoded):
        cuts.append(len(encoded))
    counts = [records] * (len(cuts) - 1)
    if counts:
        counts[-1] = len(ends) - records * (len(counts) - 1)
    data = encoded.tobytes()
    return [(n, data[a:b]) for n, a, b in zip(counts, cuts, cuts[1:])]


def read_varints(lanes: Lanes, at: np.ndarray) -> tuple[np.ndarray, np.ndarray | int]:
    """The zig-zag varints at `at`: their values (int64) and byte widths. Fewest array
    operations where every lane's varint has one byte (lengths, small numbers), or the same
    number of bytes (times), which is most of a table."""
    word = lanes.words[at]
    if not (word & FIRST_HIGH_BIT).any():
        return UNZIGZAGGED_BYTES[word & FIRST_LOW_BITS], 1
    ends = ~word & HIGH_BITS  # the high bit of each byte that ends a varint
    last = ends & np.negative(ends)  # the first of them
    top = int(last.max())
    if top and (last == top).all():
        kept = (top << 1) - 1  # the varint's bytes, the same in every lane
        width = kept.bit_count() >> 3
        unsigned = word & np.uint64(kept & int(LOW_BITS))
    else:
        kept = (last << ONE) - ONE
        width = np.bitwise_count(kept).astype(np.int64) >> 3
        unsigned = word & kept & LOW_BITS
    for bound, (keep, move, shift) in zip(GATHER_BOUNDS, GATHER):
        if top < bound:
            break
        unsigned = (unsigned & keep) | ((unsigned & move) >> shift)
    if not isinstance(width, int) and not ends.all():  # some longer than 8 bytes
        longer = ends == 0
        unsigned[longer], width[longer] = read_long_varints(lanes.buffer, at[longer])
    return unzigzag(unsigned), width


def read_long_varints(buffer: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Varints of 9 or 10 bytes, byte by byte: unsigned values and widths."""
    raw = gather(buffer, at, LONGEST)
    last = raw < CONTINUATION
    if not last.any(axis=1).all():
        raise Undecodable(f"a varint longer than {LONGEST} bytes")
    width = last.argmax(axis=1) + 1
    bits = (raw & 0x7F).astype(np.uint64) << SHIFTS
    bits[POSITIONS[:LONGEST] >= width[:, None]] = 0
    return np.bitwise_or.reduce(bits, axis=1), width


class Lanes:
    """Blocks decoded side by side: lane i walks block i, one record per step."""

    def __init__(self, data: bytearray, sizes: list[int], counts: list[int]):
        sizes = np.array(sizes, dtype=np.int64)
        records = np.array(counts, dtype=np.int64)
        if int(sizes.sum()) != len(data):
            raise ValueError("block sizes that do not add up to the data")
        data += bytes(WIDEST)
        self.buffer = np.frombuffer(data, dtype=np.uint8)
        # The 8 bytes from every offset as a little-endian word (rows overlap: stride 1).
        self.words = words(self.buffer, "<u8")
        order = np.argsort(-records, kind="stable")  # busiest first: the lanes still walking
        self.counts = records[order]  # are always the first ones
        self.at = (np.cumsum(sizes) - sizes)[order]
        self.ends = np.cumsum(sizes)[order]
        self.first = (np.cumsum(records) - records)[order]
        self.total = int(records.sum())

    def walking(self) -> list[int]:
        """How many lanes have a record at each step."""
        steps = int(self.counts[0]) if len(self.counts) else 0
        return np.searchsorted(-self.counts, -np.arange(steps), side="left").tolist()


def decode(
    fields: list[tuple[str, str, bool]], data: bytearray, sizes: list[int], counts: list[int]
) -> tuple[list[Values], int]:
    """The records of Avro block bodies laid one after the other in `data` (block i holds
    `counts[i]` records in `sizes[i]` bytes), as columns whose texts point into `data`."""
    lanes = Lanes(data, sizes, counts)
    total = lanes.total
    columns = []
    for _, kind, nullable in fields:
        null = np.zeros(total, dtype=bool) if nullable else None
        if kind in NUMBER_KINDS:
            columns.append(Values(numbers=np.zeros(total, dtype=np.int64), null=null))
        else:
            zeros = np.zeros(total, dtype=np.int64)
            columns.append(Values(data=lanes.buffer, start=zeros, length=zeros.copy(), null=null))
    for step, walking in enumerate(lanes.walking()):
        record = lanes.first[:walking] + step
        at = lanes.at[:walking]
        for (_, kind, nullable), values in zip(fields, columns):
            at = read_field(lanes, kind, nullable, values, record, at)
        lanes.at[:walking] = at
    # A lane whose block is damaged may have read on past its end (into the padding or the
    # next block, never out of the buffer: an index past it raises, and positions only
    # grow); none of what it read is used, as its position is not its block's end.
    if (lanes.at != lanes.ends).any():
        raise Undecodable("a block whose records do not end where it does")
    for (name, kind, _), values in zip(fields, columns):
        if kind == "integer" and total:
            low, high = INT_RANGE
            if values.numbers.min() < low or values.numbers.max() > high:
                raise Undecodable(f"{name}: an int outside 32 bits")
        if values.null is not None and not values.null.any():
            values.null = None
    return columns, total


def read_field(
    lanes: Lanes, kind: str, nullable: bool, values: Values, record: np.ndarray, at: np.ndarray
) -> np.ndarray:
    """Read one field of one record in each walking lane; return where each lane is next."""
    if nullable:
        branch = lanes.buffer[at]
        if not np.isin(branch, (NULL_BRANCH, VALUE_BRANCH)).all():
            raise Undecodable("a union branch the schema does not have")
        at = at + 1
        present = branch == VALUE_BRANCH
        values.null[record[~present]] = True
        if values.start is not None:  # a NULL text's place: runs stay in order (columns.py)
            values.start[record[~present]] = at[~present]
        if not present.all():
            chosen = np.flatnonzero(present)
            after = at.copy()
            if len(chosen):
                after[chosen] = read_value(lanes, kind, values, record[chosen], at[chosen])
            return after
    return read_value(lanes, kind, values, record, at)


def read_value(
    lanes: Lanes, kind: str, values: Values, record: np.ndarray, at: np.ndarray
) -> np.ndarray:
    if kind in NUMBER_KINDS:
        numbers, width = read_varints(lanes, at)
        values.numbers[record] = numbers
        return at + width
    length, width = read_varints(lanes, at)
    if length.view(np.uint64).max() > len(lanes.buffer):  # a negative one is huge here
        raise Undecodable("a string longer than its block, or of negative length")
    values.start[record] = at + width
    values.length[record] = length
    return at + width + length
