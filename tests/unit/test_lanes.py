"""Cutting one table's batches into settle lanes: batches that may hold the same key stay in one
lane in file order, the others are spread."""

from __future__ import annotations

import pyarrow as pa

from loader.flow.settle.lanes import key_ranges, lanes
from loader.tables import HIRED_EMPLOYEES


def test_increasing_ids_spread_evenly_over_the_lanes():
    keys = [(i * 100 + 1, i * 100 + 100) for i in range(10)]
    cut = lanes(list(range(10)), keys, [100] * 10, 2)
    assert sorted(len(lane) for lane in cut) == [5, 5]
    assert all(lane == sorted(lane) for lane in cut), "file order kept within a lane"


def test_batches_sharing_a_key_range_stay_in_one_lane_in_file_order():
    # 0 and 3 overlap directly, 3 and 5 through 3's range: one group; 1, 2 and 4 stand apart.
    keys = [(1, 10), (100, 110), (200, 210), (5, 50), (300, 310), (40, 60)]
    cut = lanes(list(range(6)), keys, [10] * 6, 3)
    together = next(lane for lane in cut if 0 in lane)
    assert [item for item in together if item in (0, 3, 5)] == [0, 3, 5]
    assert sorted(item for lane in cut for item in lane) == list(range(6))


def test_ids_in_random_order_settle_in_one_lane_like_a_sequential_run():
    keys = [(1, 900), (2, 950), (3, 990), (4, 1000)]
    assert lanes(list(range(4)), keys, [10] * 4, 4) == [[0, 1, 2, 3]]


def test_batches_without_accepted_rows_go_anywhere_and_none_is_lost():
    keys = [None, (1, 10), None, (11, 20)]
    cut = lanes(["a", "b", "c", "d"], keys, [5, 5, 5, 5], 2)
    assert sorted(item for lane in cut for item in lane) == ["a", "b", "c", "d"]
    assert len(cut) == 2


def test_one_lane_is_the_file_order():
    keys = [(5, 6), (1, 2), None, (3, 4)]
    assert lanes(["a", "b", "c", "d"], keys, [1, 1, 1, 1], 1) == [["a", "b", "c", "d"]]


def test_key_ranges_read_only_keys_written_as_numbers():
    chunk = pa.table(
        {
            "id": ["7", "3", "x1", None, "12", "0009"],
            "_batch_id": ["a", "a", "a", "b", "c", "c"],
        }
    )
    found = key_ranges(HIRED_EMPLOYEES, chunk)
    assert found == {"a": (3, 7), "b": None, "c": (9, 12)}


def test_keys_that_can_never_be_promoted_do_not_widen_a_batch_range():
    chunk = pa.table(
        {
            "id": ["5", "2147483648", "6", "0", "99999999999", "2147483647", "0" * 20 + "4"],
            "_batch_id": ["a", "a", "a", "b", "b", "c", "c"],
        }
    )
    found = key_ranges(HIRED_EMPLOYEES, chunk)
    assert found == {"a": (5, 6), "b": None, "c": (4, 2147483647)}
    keys = [found["a"], (7, 8), (9, 10)]
    assert len(lanes(["a", "x", "y"], keys, [3, 3, 3], 2)) == 2
