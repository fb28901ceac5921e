"""Perceptual hashes of the library in memory, searched by Hamming distance.

The embedding finds copies that look alike; it does not find a copy that was rotated by a
quarter turn or mirrored, whose features differ. Such a copy's hash, taken under the right one
of the eight symmetries of a square, is close to the original's. 17 bytes a file: a million
photos take 17 MB (34 MB while the arrays have room to grow) and one query (eight hashes)
scans them in a few milliseconds.
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
    """File ids and their 64-bit perceptual hashes; add, remove, find near ones.

    Three arrays in file-id order (id, hash, whether the file is still in): 17 bytes a file
    and no Python object per file, so a growing library costs the daemon next to nothing.
    """

    def __init__(self, file_ids: NDArray[np.int64], hashes: NDArray[np.uint64]) -> None:
        self._lock = threading.Lock()
        order = np.argsort(file_ids, kind="stable")
        n = int(file_ids.shape[0])
        capacity = max(_GROW, n * 2)
        self._ids = np.zeros(capacity, dtype=np.int64)
        self._hashes = np.zeros(capacity, dtype=np.uint64)
        self._alive = np.zeros(capacity, dtype=bool)
        self._ids[:n] = file_ids[order]
        self._hashes[:n] = hashes[order]
        self._alive[:n] = True
        self._size = n  # slots used, removed files' included
        self._count = n

    def __len__(self) -> int:
        return self._count

    def add(self, file_id: int, phash: int) -> None:
        with self._lock:
            slot = int(np.searchsorted(self._ids[: self._size], file_id))
            if slot == self._size or self._ids[slot] != file_id:
                self._insert(slot, file_id)
            if not self._alive[slot]:
                self._alive[slot] = True
                self._count += 1
            self._hashes[slot] = np.uint64(phash)

    def _insert(self, slot: int, file_id: int) -> None:
        """A new slot for ``file_id`` at ``slot``: at the end, as new files get the highest
        ids; earlier only for a file that was never indexed before (rare)."""
        if self._size == self._ids.shape[0]:
            self._ids = np.concatenate([self._ids, np.zeros_like(self._ids)])
            self._hashes = np.concatenate([self._hashes, np.zeros_like(self._hashes)])
            self._alive = np.concatenate([self._alive, np.zeros_like(self._alive)])
        end = self._size
        for array in (self._ids, self._hashes, self._alive):
            array[slot + 1 : end + 1] = array[slot:end]  # numpy copies overlaps safely
        self._ids[slot] = file_id
        self._alive[slot] = False
        self._size += 1

    def remove(self, file_id: int) -> None:
        with self._lock:
            slot = int(np.searchsorted(self._ids[: self._size], file_id))
            if slot < self._size and self._ids[slot] == file_id and self._alive[slot]:
                self._alive[slot] = False  # the slot stays, should the file come back
                self._count -= 1

    def near(self, queries: Sequence[int], max_distance: int) -> list[HashMatch]:
        """Files within ``max_distance`` bits of any query hash, the closest variant each."""
        with self._lock:
            ids = self._ids[: self._size]
            hashes = self._hashes[: self._size]
            alive = self._alive[: self._size]
            best: dict[int, HashMatch] = {}
            for variant, query in enumerate(queries):
                distances = np.bitwise_count(hashes ^ np.uint64(query))
                for slot in np.flatnonzero((distances <= max_distance) & alive).tolist():
                    file_id, distance = int(ids[slot]), int(distances[slot])
                    known = best.get(file_id)
                    if known is None or distance < known.distance:
                        best[file_id] = HashMatch(file_id, distance, variant)
        return sorted(best.values(), key=lambda m: m.distance)
