"""Settling one table's batches on several connections without changing what a sequential run
leaves in core.

Two batches settled at once may only disagree where they hold the same key: promotion is an
upsert, and of two rows with one id the later one in the file wins. So batches whose key ranges
(smallest to largest accepted id) overlap go to the same lane, in file order; batches that share
no key can settle in any order, on any connection. Exports with increasing ids (the usual case)
spread evenly; ids in random order overlap into one lane, which is the sequential run.

Tables are settled one after another (a hire's department must be in core before the hire),
so lanes are only ever cut within one table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from loader.tables import BATCH_ID, POSTGRES_INTEGER_MAX, Table

Item = TypeVar("Item")
Keys = tuple[int, int] | None  # a batch's smallest and largest accepted key; None: no row


def lanes(items: Sequence[Item], keys: Sequence[Keys], rows: Sequence[int], count: int):
    """`items` (one table's batches, in file order) cut into at most `count` lanes, each in
    file order; batches whose `keys` ranges overlap share a lane, and lanes get about the same
    number of `rows`."""
    groups = _overlapping(keys)
    sizes: Counter[int] = Counter()
    for group, size in zip(groups, rows, strict=True):
        sizes[group] += size
    loads = [0] * count
    lane_of_group = {}
    for group, size in sizes.most_common():  # largest first: the greedy split evens out
        lane = loads.index(min(loads))
        lane_of_group[group] = lane
        loads[lane] += size
    cut: list[list[Item]] = [[] for _ in range(count)]
    for item, group in zip(items, groups, strict=True):
        cut[lane_of_group[group]].append(item)
    return [lane for lane in cut if lane]


def key_ranges(table: Table, chunk: pa.Table) -> dict[str, Keys]:
    """Each batch's smallest and largest key among its rows whose key reads as a number within
    the rules' range (1 to PostgreSQL's integer maximum): all the ids it can promote (and maybe
    a few it will not), which is what the lane rule needs. A key out of range is never promoted,
    and counted, one such key in a batch (2147483648, say) would overlap every later batch and
    put them all in one lane."""
    text = chunk[table.primary_key]
    numeric = pc.match_substring_regex(text, r"^0*[0-9]{1,18}$")  # zeros first: the rules' too
    keys = pc.cast(pc.if_else(numeric, text, pa.scalar(None, pa.string())), pa.int64())
    promotable = pc.and_(pc.greater_equal(keys, 1), pc.less_equal(keys, POSTGRES_INTEGER_MAX))
    keys = pc.if_else(promotable, keys, pa.scalar(None, pa.int64()))
    found = (
        pa.table({BATCH_ID: chunk[BATCH_ID], "key": keys})
        .group_by(BATCH_ID)
        .aggregate([("key", "min"), ("key", "max")])
    )
    return {
        batch: None if low is None else (low, high)
        for batch, low, high in zip(
            found[BATCH_ID].to_pylist(),
            found["key_min"].to_pylist(),
            found["key_max"].to_pylist(),
            strict=True,
        )
    }


def _overlapping(keys: Sequence[Keys]) -> list[int]:
    """A group number per batch: batches whose ranges overlap, directly or through others,
    share one; a batch with no range is a group of its own."""
    groups = list(range(len(keys)))
    ranged = sorted((k[0], k[1], index) for index, k in enumerate(keys) if k is not None)
    group, reach = None, None
    for low, high, index in ranged:
        if reach is None or low > reach:
            group, reach = index, high
        else:
            reach = max(reach, high)
        groups[index] = group
    return groups
