"""The buffer: vectors added since the snapshot, searched until the next rebuild takes them in.

A small buffer is searched exactly. A large one (a big library rebuilds only every few
thousand new vectors, and a rebuild takes minutes) would cost a full 1280-d scan per query, so
once the snapshot's projection is known each row is also kept projected, and a query scores
exactly only the rows nearest it in the projection: a 64-d scan reads 20 times fewer bytes.

The full vectors stay in the buffer only while it is scanned in full (at most ``exact_up_to``
rows, or no projection yet). Past that the buffer keeps ids and projected rows (about 270
bytes a row, not 5 KB), and the index reads the few rows it scores from the store, as it does
for the snapshot's candidates. Holding every full vector cost the daemon 5 MB per 1,000 new
files until each rebuild (25 MB at the default rebuild size), which counted as memory growth.

Full vectors are held with the values the store holds (its float16, widened to float32: a
float16 matrix would have to be widened at every query, 20 times the cost of the scan), so a
similarity is the same whether its row is scored from memory or from the store.
"""

from __future__ import annotations

import mmap
import time
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dupwatch.snapshot import Projection
from dupwatch.store.records import VECTOR_DTYPE


def _grown(array: NDArray[Any], rows: int) -> NDArray[Any]:
    """``array`` with room for ``rows`` rows, the new ones unwritten.

    Pages of np.empty are taken only when rows are written there, so memory follows the rows
    in use; np.resize fills the whole new capacity at once.
    """
    out = np.empty((rows, *array.shape[1:]), dtype=array.dtype)
    out[: len(array)] = array
    return out


def _grown_mapped(array: NDArray[np.float32], rows: int) -> NDArray[np.float32]:
    """Like ``_grown``, but in an anonymous mapping of its own, unmapped when it is freed.

    From malloc, a matrix of a few MB may come from the heap once glibc's mmap threshold has
    risen (it follows the largest mapped block freed), and freed heap memory stays resident:
    measured, the full rows dropped past ``exact_up_to`` stayed resident after a rebuild.
    """
    # Private: shared anonymous memory would be counted as shmem, apart from the process's own.
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    block = mmap.mmap(-1, rows * array.shape[1] * array.itemsize, flags=flags)
    out = np.frombuffer(block, dtype=array.dtype).reshape(rows, array.shape[1])
    out[: len(array)] = array
    return out


class Buffer:
    """Recent vectors in growable arrays; superseded and removed rows are masked, not moved.

    ``exact_up_to``: with a projection, a buffer of at most this many rows is scanned in full
    from the full vectors it holds; a larger one is shortlisted in the projection and holds
    none. Without a projection every row is scanned, so every full vector is held.
    """

    def __init__(
        self, dim: int, projection: Projection | None = None, *, exact_up_to: int = 1024
    ) -> None:
        self.dim = dim
        self.projection = projection
        self.exact_up_to = exact_up_to
        pdim = 0 if projection is None else projection.dim
        self.full: NDArray[np.float32] | None = np.empty((0, dim), dtype=np.float32)
        self.projected = np.empty((0, pdim), dtype=np.float32)
        self.sq_norms = np.empty(0, dtype=np.float32)  # of the projected rows
        self.file_ids = np.empty(0, dtype=np.int64)
        self.live = np.empty(0, dtype=bool)
        self.n = 0
        self.row_of: dict[int, int] = {}
        self.oldest: float | None = None

    def append(self, file_id: int, vector: NDArray[np.float32]) -> None:
        """Add the vector ``file_id`` has in the store (not a normalised copy of it)."""
        # The values the store holds: put_vector keeps float16.
        stored = np.asarray(vector).astype(VECTOR_DTYPE).astype(np.float32)
        if self.full is not None and self.projection is not None and self.n >= self.exact_up_to:
            self.full = None  # scanned in the projection from now on: rows come from the store
        if self.n == self.file_ids.shape[0]:
            cap = max(1024, self.n * 2)
            if self.full is not None:
                self.full = _grown_mapped(self.full, cap)
            self.projected = _grown(self.projected, cap)
            self.sq_norms = _grown(self.sq_norms, cap)
            self.file_ids = _grown(self.file_ids, cap)
            self.live = _grown(self.live, cap)
        self.discard(file_id)
        if self.full is not None:
            self.full[self.n] = stored
        if self.projection is not None:
            row = self.projection.apply(stored[None, :])[0]
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

    def rows_to_score(self, query: NDArray[np.float32], *, shortlist: int) -> NDArray[np.int64]:
        """Live rows to score exactly against ``query`` (a unit vector).

        All of them while there are at most ``exact_up_to`` rows or no projection; otherwise
        the ``shortlist`` rows nearest the query in the projection.
        """
        n = self.n
        if self.projection is None or n <= max(self.exact_up_to, shortlist):
            return np.asarray(np.flatnonzero(self.live[:n]), dtype=np.int64)
        pq = self.projection.apply(query[None, :])[0]
        # |p - q|^2 without the query's own term, which is the same for every row.
        distances = self.sq_norms[:n] - 2.0 * (self.projected[:n] @ pq)
        distances[~self.live[:n]] = np.inf
        rows = np.argpartition(distances, shortlist - 1)[:shortlist]
        return np.asarray(rows[np.isfinite(distances[rows])], dtype=np.int64)

    def held(self) -> NDArray[np.float32] | None:
        """The full vectors of every row (a view, row by row), or None when the store must
        supply them."""
        if self.full is None:
            return None
        held: NDArray[np.float32] = self.full[: self.n]
        return held

    def live_ids(self, start: int = 0) -> NDArray[np.int64]:
        """Ids of the live rows from ``start`` on, in the order they were added."""
        rows = start + np.flatnonzero(self.live[start : self.n])
        return np.asarray(self.file_ids[rows], dtype=np.int64)

    def refilled(
        self,
        projection: Projection | None,
        file_ids: NDArray[np.int64],
        vectors: NDArray[np.float32],
    ) -> Buffer:
        """A new buffer of the same kind holding ``vectors``, kept in ``projection``.

        For the rows a rebuild left out (``live_ids(start)`` and their vectors from the store);
        the new buffer counts its age from this one's oldest row.
        """
        rest = Buffer(self.dim, projection, exact_up_to=self.exact_up_to)
        for file_id, vector in zip(file_ids.tolist(), vectors, strict=True):
            rest.append(file_id, vector)
        if len(rest):
            rest.oldest = self.oldest
        return rest
