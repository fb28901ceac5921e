"""The in-memory index of perceptual hashes: what it finds, and what a file costs it."""

from __future__ import annotations

import tracemalloc

import numpy as np

from dupwatch.hashindex import HashIndex


def index_of(pairs: dict[int, int]) -> HashIndex:
    ids = np.array(list(pairs), dtype=np.int64)
    hashes = np.array(list(pairs.values()), dtype=np.uint64)
    return HashIndex(ids, hashes)


def found(index: HashIndex, query: int, distance: int = 4) -> dict[int, int]:
    return {m.file_id: m.distance for m in index.near([query], distance)}


def test_near_hashes_are_found_with_their_distance_and_variant() -> None:
    index = index_of({7: 0b1111, 3: 0b0111, 9: 2**62})
    assert found(index, 0b1111) == {7: 0, 3: 1}
    matches = index.near([2**62 + 1, 0b1111], 1)
    assert [(m.file_id, m.distance, m.variant) for m in matches] == [
        (7, 0, 1),
        (9, 1, 0),
        (3, 1, 1),
    ]


def test_a_removed_file_is_not_found_and_comes_back_when_added_again() -> None:
    index = index_of({1: 5, 2: 5, 3: 5})
    index.remove(2)
    index.remove(2)  # twice: no effect
    index.remove(99)  # unknown: no effect
    assert len(index) == 2
    assert found(index, 5) == {1: 0, 3: 0}
    index.add(2, 6)
    assert len(index) == 3
    assert found(index, 5, 0) == {1: 0, 3: 0}
    assert found(index, 6, 0) == {2: 0}


def test_a_new_hash_for_a_known_file_replaces_its_old_one() -> None:
    index = index_of({4: 0})
    index.add(4, 2**40 - 1)  # 40 bits away
    assert len(index) == 1
    assert found(index, 0) == {}
    assert found(index, 2**40 - 1) == {4: 0}


def test_files_added_in_any_order_and_past_the_first_capacity_are_all_found() -> None:
    index = index_of({})
    rng = np.random.default_rng(3)
    ids = [int(i) for i in rng.permutation(10_000) + 1]  # an older id may be indexed late
    for file_id in ids:
        index.add(file_id, file_id * 8)
    assert len(index) == len(ids)
    for file_id in ids[:50]:
        assert found(index, file_id * 8, 0) == {file_id: 0}


def test_a_file_costs_the_index_a_few_bytes_and_no_python_object() -> None:
    # The daemon holds this index for its whole life: its memory grows with the library.
    index = index_of({i: i for i in range(1, 1001)})
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for file_id in range(1001, 21_001):
        index.add(file_id, file_id)
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown / 20_000 < 40  # bytes a file, arrays' room to grow included
