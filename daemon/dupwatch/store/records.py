"""Records the store returns, and the encodings it uses for paths, hashes and vectors.

Paths are kept as the exact bytes the filesystem gave (``os.fsencode``), so a name that is not
valid UTF-8 or that differs from another only by Unicode normalisation round-trips unchanged.
SQLite integers are signed 64-bit; inode numbers and perceptual hashes are unsigned 64-bit, so
they are stored in two's complement. Vectors are stored as little-endian float16: half the size
of float32, with a cosine error far below the thresholds that matter (tested).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dupwatch.records import Action, FileStatus, StatKey, Tier

VECTOR_DTYPE = np.dtype("<f2")
_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1


def path_to_blob(path: Path) -> bytes:
    return os.fsencode(path)


def blob_to_path(blob: bytes) -> Path:
    return Path(os.fsdecode(bytes(blob)))


def to_i64(value: int) -> int:
    """Map an unsigned 64-bit value onto SQLite's signed INTEGER (two's complement)."""
    if not 0 <= value < _U64:
        raise ValueError(f"not an unsigned 64-bit value: {value}")
    return value - _U64 if value > _I64_MAX else value


def from_i64(value: int) -> int:
    return value + _U64 if value < 0 else value


def encode_vector(vector: NDArray[np.floating[Any]]) -> bytes:
    """One vector as a float16 BLOB; refuses NaN, infinities and values float16 cannot hold."""
    array = np.asarray(vector)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"a vector must be one non-empty dimension, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("a vector must not contain NaN or infinity")
    if np.max(np.abs(array)) > 65000.0:
        raise ValueError("a vector value is beyond float16 range")
    return array.astype(VECTOR_DTYPE).tobytes()


def decode_vector(blob: bytes) -> NDArray[np.float32]:
    return np.frombuffer(blob, dtype=VECTOR_DTYPE).astype(np.float32)


@dataclass(frozen=True, slots=True)
class FileRecord:
    """A file dupwatch knows, as last recorded."""

    id: int
    path: Path
    size: int
    mtime_ns: int
    ctime_ns: int
    dev: int
    inode: int
    sha256: str | None
    phash: int | None  # unsigned 64-bit
    width: int | None
    height: int | None
    format: str | None
    status: FileStatus
    failure_reason: str | None
    first_seen: float
    last_seen: float

    @property
    def stat(self) -> StatKey:
        return StatKey(self.size, self.mtime_ns, self.ctime_ns, self.dev, self.inode)


@dataclass(frozen=True, slots=True)
class Decision:
    """What was decided about one file, and why."""

    id: int
    file_id: int
    tier: Tier
    neighbour_id: int | None
    similarity: float | None
    verification: str | None  # JSON text from the verifier
    action: Action
    rule: str
    decided_at: float


@dataclass(frozen=True, slots=True)
class VectorBatch:
    """Vectors read in bulk: row i of ``vectors`` belongs to ``file_ids[i]``.

    ``seqs`` are the store's insertion sequence numbers (increasing), so a snapshot can record
    the last one it holds and later pick up only what came after.
    """

    file_ids: NDArray[np.int64]
    seqs: NDArray[np.int64]
    vectors: NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.file_ids.shape[0])
