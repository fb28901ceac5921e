"""The buffer: vectors added since the snapshot, searched exactly until the next rebuild."""

from __future__ import annotations

import time

import numpy as np
from numpy.typing import NDArray


class Buffer:
    """Recent vectors in a growable matrix; superseded and removed rows are masked, not moved."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.vectors = np.empty((0, dim), dtype=np.float32)
        self.file_ids = np.empty(0, dtype=np.int64)
        self.live = np.empty(0, dtype=bool)
        self.n = 0
        self.row_of: dict[int, int] = {}
        self.oldest: float | None = None

    def append(self, file_id: int, vector: NDArray[np.float32]) -> None:
        if self.n == self.vectors.shape[0]:
            cap = max(1024, self.n * 2)
            self.vectors = np.resize(self.vectors, (cap, self.dim))
            self.file_ids = np.resize(self.file_ids, cap)
            self.live = np.resize(self.live, cap)
        self.discard(file_id)
        self.vectors[self.n] = vector
        self.file_ids[self.n] = file_id
        self.live[self.n] = True
        self.row_of[file_id] = self.n
        self.n += 1
        if self.oldest is None:
            self.oldest = time.monotonic()

    def discard(self, file_id: int) -> None:
        row = self.row_of.pop(file_id, None)
        if row is not None:
            self.live[row] = False

    def __len__(self) -> int:
        return len(self.row_of)

    def after(self, start: int) -> Buffer:
        """A new buffer holding the live rows from ``start`` on."""
        rest = Buffer(self.dim)
        for row in range(start, self.n):
            if self.live[row]:
                rest.append(int(self.file_ids[row]), self.vectors[row])
        if len(rest):
            rest.oldest = self.oldest
        return rest
