"""Perceptual hashes of the library in memory, searched by Hamming distance.

The embedding finds copies that look alike; it does not find a copy that was rotated by a
quarter turn or mirrored, whose features differ. Such a copy's hash, taken under the right one
of the eight symmetries of a square, is close to the original's. 8 bytes a file: a million
photos take 8 MB and one query (eight hashes) scans them in a few milliseconds.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

_GROW = 4096


@dataclass(frozen=True, slots=True)
class HashMatch:
    file_id: int
    distance: int  # differing bits of the 64
    variant: int  # index into phash.DIHEDRAL of the query hash that matched


class HashIndex:
    """File ids and their 64-bit perceptual hashes; add, remove, find near ones."""

    def __init__(self, file_ids: NDArray[np.int64], hashes: NDArray[np.uint64]) -> None:
        self._lock = threading.Lock()
        n = int(file_ids.shape[0])
        capacity = max(_GROW, n * 2)
        self._ids = np.full(capacity, -1, dtype=np.int64)
        self._hashes = np.zeros(capacity, dtype=np.uint64)
        self._ids[:n] = file_ids
        self._hashes[:n] = hashes
        self._size = n
        self._slot = {int(f): i for i, f in enumerate(file_ids.tolist())}

    def __len__(self) -> int:
        return len(self._slot)

    def add(self, file_id: int, phash: int) -> None:
        with self._lock:
            slot = self._slot.get(file_id)
            if slot is None:
                if self._size == self._ids.shape[0]:
                    self._ids = np.concatenate([self._ids, np.full(self._size, -1, np.int64)])
                    self._hashes = np.concatenate([self._hashes, np.zeros(self._size, np.uint64)])
                slot = self._size
                self._size += 1
                self._slot[file_id] = slot
            self._ids[slot] = file_id
            self._hashes[slot] = np.uint64(phash)

    def remove(self, file_id: int) -> None:
        with self._lock:
            slot = self._slot.pop(file_id, None)
            if slot is not None:
                self._ids[slot] = -1  # the slot stays; ids of -1 never match

    def near(self, queries: Sequence[int], max_distance: int) -> list[HashMatch]:
        """Files within ``max_distance`` bits of any query hash, the closest variant each."""
        with self._lock:
            ids = self._ids[: self._size]
            hashes = self._hashes[: self._size]
            best: dict[int, HashMatch] = {}
            for variant, query in enumerate(queries):
                distances = np.bitwise_count(hashes ^ np.uint64(query))
                for slot in np.flatnonzero((distances <= max_distance) & (ids >= 0)).tolist():
                    file_id, distance = int(ids[slot]), int(distances[slot])
                    known = best.get(file_id)
                    if known is None or distance < known.distance:
                        best[file_id] = HashMatch(file_id, distance, variant)
        return sorted(best.values(), key=lambda m: m.distance)
