"""Vectors: one float16 BLOB per (file, model), read back in bulk into preallocated arrays."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import numpy as np
from numpy.typing import NDArray

from dupwatch.errors import StoreError
from dupwatch.store.base import StoreBase
from dupwatch.store.records import VECTOR_DTYPE, VectorBatch, decode_vector, encode_vector

# Only vectors of files still in the library are searched; gone, quarantined and failed files
# keep their rows (restores bring them back) but never come back as neighbours.
_INDEXED = "JOIN files ON files.id = vectors.file_id AND files.status = 'indexed'"
_LOOKUP_CHUNK = 500  # bound parameters per IN (...) lookup, well under SQLite's limit


def _fill(rows: Iterator[tuple[int, int, bytes]], n: int, dim: int | None) -> VectorBatch:
    """Copy rows into arrays allocated once: far cheaper than fetchall() then stacking."""
    file_ids = np.empty(n, dtype=np.int64)
    seqs = np.empty(n, dtype=np.int64)
    vectors: NDArray[np.float32] | None = None
    half: NDArray[np.float16] | None = None
    i = 0
    for file_id, seq, blob in rows:
        if half is None:
            dim = dim or len(blob) // VECTOR_DTYPE.itemsize
            half = np.empty((n, dim), dtype=VECTOR_DTYPE)
        if i >= n:
            break
        half[i] = np.frombuffer(blob, dtype=VECTOR_DTYPE)
        file_ids[i] = file_id
        seqs[i] = seq
        i += 1
    if half is None:
        vectors = np.empty((0, dim or 0), dtype=np.float32)
    else:
        vectors = half[:i].astype(np.float32)
    return VectorBatch(file_ids[:i], seqs[:i], vectors)


class VectorsMixin(StoreBase):
    def put_vector(self, file_id: int, model_id: str, vector: NDArray[np.float32]) -> int:
        """Store (or replace) the vector of ``file_id`` under ``model_id``; returns its seq.

        A replaced vector gets a new, larger seq, so it counts as newer than any snapshot.
        """
        blob = encode_vector(vector)
        with self._write() as conn:
            conn.execute(
                "DELETE FROM vectors WHERE file_id = ? AND model_id = ?", (file_id, model_id)
            )
            row = conn.execute(
                "INSERT INTO vectors (file_id, model_id, vector, created_at) VALUES (?, ?, ?, ?) "
                "RETURNING seq",
                (file_id, model_id, blob, time.time()),
            ).fetchone()
        return int(row[0])

    def vector(self, file_id: int, model_id: str) -> NDArray[np.float32] | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT vector FROM vectors WHERE file_id = ? AND model_id = ?",
                (file_id, model_id),
            ).fetchone()
        return None if row is None else decode_vector(row[0])

    def vectors_for(self, file_ids: Sequence[int], model_id: str) -> VectorBatch:
        """The vectors of ``file_ids`` that exist, in the order asked (missing ones left out)."""
        found: dict[int, tuple[int, bytes]] = {}
        unique = list(dict.fromkeys(int(i) for i in file_ids))
        with self._read() as conn:
            for start in range(0, len(unique), _LOOKUP_CHUNK):
                chunk = unique[start : start + _LOOKUP_CHUNK]
                marks = ", ".join("?" * len(chunk))
                sql = (
                    "SELECT file_id, seq, vector FROM vectors "
                    f"WHERE model_id = ? AND file_id IN ({marks})"
                )
                for file_id, seq, blob in conn.execute(sql, [model_id, *chunk]):
                    found[file_id] = (seq, blob)
        rows = ((i, *found[i]) for i in unique if i in found)
        return _fill(rows, len(found), None)

    def vector_count(self, model_id: str, *, after_seq: int = 0, indexed_only: bool = True) -> int:
        join = _INDEXED if indexed_only else ""
        with self._read() as conn:
            (n,) = conn.execute(
                f"SELECT count(*) FROM vectors {join} WHERE model_id = ? AND seq > ?",
                (model_id, after_seq),
            ).fetchone()
        return int(n)

    def max_vector_seq(self, model_id: str) -> int:
        """The largest seq stored for ``model_id`` (0 if none)."""
        with self._read() as conn:
            (seq,) = conn.execute(
                "SELECT max(seq) FROM vectors WHERE model_id = ?", (model_id,)
            ).fetchone()
        return 0 if seq is None else int(seq)

    def load_vectors(
        self, model_id: str, *, after_seq: int = 0, indexed_only: bool = True
    ) -> VectorBatch:
        """Every vector of ``model_id`` with seq > ``after_seq``, in seq order, in one batch."""
        join = _INDEXED if indexed_only else ""
        where = "WHERE vectors.model_id = ? AND vectors.seq > ?"
        with self._read() as conn:
            conn.execute("BEGIN")  # one snapshot for the count and the rows
            try:
                (n,) = conn.execute(
                    f"SELECT count(*) FROM vectors {join} {where}",
                    (model_id, after_seq),
                ).fetchone()
                cursor = conn.execute(
                    "SELECT vectors.file_id, vectors.seq, vectors.vector "
                    f"FROM vectors {join} {where} ORDER BY vectors.seq",
                    (model_id, after_seq),
                )
                return _fill(cursor, int(n), None)
            finally:
                conn.execute("COMMIT")

    def iter_vectors(
        self,
        model_id: str,
        *,
        after_seq: int = 0,
        upto_seq: int | None = None,
        batch_size: int = 10_000,
        indexed_only: bool = True,
    ) -> Iterator[VectorBatch]:
        """Vectors in seq order, a batch at a time, each batch its own short read.

        For building a snapshot of a large library without holding every vector in memory.
        """
        if batch_size < 1:
            raise StoreError("batch_size must be positive")
        join = _INDEXED if indexed_only else ""
        last = after_seq
        limit = upto_seq if upto_seq is not None else (1 << 62)
        while True:
            with self._read() as conn:
                cursor = conn.execute(
                    "SELECT vectors.file_id, vectors.seq, vectors.vector "
                    f"FROM vectors {join} WHERE vectors.model_id = ? AND vectors.seq > ? "
                    "AND vectors.seq <= ? ORDER BY vectors.seq LIMIT ?",
                    (model_id, last, limit, batch_size),
                )
                batch = _fill(cursor, batch_size, None)
            if len(batch):
                yield batch
                last = int(batch.seqs[-1])
            if len(batch) < batch_size:
                return

    def indexed_file_ids(self, model_id: str) -> NDArray[np.int64]:
        """Ids of files still in the library that have a vector for ``model_id``, sorted."""
        with self._read() as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    f"SELECT vectors.file_id FROM vectors {_INDEXED} "
                    "WHERE vectors.model_id = ? ORDER BY vectors.file_id",
                    (model_id,),
                )
            ]
        return np.asarray(ids, dtype=np.int64)
