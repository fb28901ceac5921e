"""The buffer: vectors added since the snapshot, searched until the next rebuild takes them in.

A small buffer is searched exactly. A large one (a big library rebuilds only every few
thousand new vectors, and a rebuild takes minutes) would cost a full 1280-d scan per query, so
once the snapshot's projection is known each row is also kept projected, and a query scores
exactly only the rows nearest it in the projection: a 64-d scan reads 20 times fewer bytes.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dupwatch.snapshot import Projection


def _grown(array: NDArray[Any], rows: int) -> NDArray[Any]:
    """``array`` with room for ``rows`` rows, the new ones unwritten.

    Pages of np.empty are taken only when rows are written there, so memory follows the rows
    in use; np.resize fills the whole new capacity at once (a 1280-d buffer doubling from
    4,096 rows took 40 MiB more at one stroke).
    """
    out = np.empty((rows, *array.shape[1:]), dtype=array.dtype)
    out[: len(array)] = array
    return out


class Buffer:
    """Recent vectors in a growable matrix; superseded and removed rows are masked, not moved."""

    def __init__(self, dim: int, projection: Projection | None = None) -> None:
        self.dim = dim
        self.projection = projection
        pdim = 0 if projection is None else projection.dim
        self.vectors = np.empty((0, dim), dtype=np.float32)
        self.projected = np.empty((0, pdim), dtype=np.float32)
        self.sq_norms = np.empty(0, dtype=np.float32)  # of the projected rows
        self.file_ids = np.empty(0, dtype=np.int64)
        self.live = np.empty(0, dtype=bool)
        self.n = 0
        self.row_of: dict[int, int] = {}
        self.oldest: float | None = None

    def append(self, file_id: int, vector: NDArray[np.float32]) -> None:
        if self.n == self.vectors.shape[0]:
            cap = max(1024, self.n * 2)
            self.vectors = _grown(self.vectors, cap)
            self.projected = _grown(self.projected, cap)
            self.sq_norms = _grown(self.sq_norms, cap)
            self.file_ids = _grown(self.file_ids, cap)
            self.live = _grown(self.live, cap)
        self.discard(file_id)
        self.vectors[self.n] = vector
        if self.projection is not None:
            row = self.projection.apply(np.asarray(vector, dtype=np.float32)[None, :])[0]
            self.projected[self.n] = row
            self.sq_norms[self.n] = row @ row
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

    def rows_to_score(
        self, query: NDArray[np.float32], *, exact_up_to: int, shortlist: int
    ) -> NDArray[np.int64]:
        """Live rows to score exactly against ``query`` (a unit vector).

        All of them while there are at most ``exact_up_to`` rows or no projection; otherwise
        the ``shortlist`` rows nearest the query in the projection.
        """
        n = self.n
        if self.projection is None or n <= max(exact_up_to, shortlist):
            return np.asarray(np.flatnonzero(self.live[:n]), dtype=np.int64)
        pq = self.projection.apply(query[None, :])[0]
        # |p - q|^2 without the query's own term, which is the same for every row.
        distances = self.sq_norms[:n] - 2.0 * (self.projected[:n] @ pq)
        distances[~self.live[:n]] = np.inf
        rows = np.argpartition(distances, shortlist - 1)[:shortlist]
        return np.asarray(rows[np.isfinite(distances[rows])], dtype=np.int64)

    def after(self, start: int, projection: Projection | None) -> Buffer:
        """A new buffer holding the live rows from ``start`` on, kept in ``projection``."""
        rest = Buffer(self.dim, projection)
        for row in range(start, self.n):
            if self.live[row]:
                rest.append(int(self.file_ids[row]), self.vectors[row])
        if len(rest):
            rest.oldest = self.oldest
        return rest
