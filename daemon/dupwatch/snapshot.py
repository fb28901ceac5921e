"""The Annoy snapshot: a projection to fewer dimensions, the Annoy trees, and their file ids.

Annoy over 1280-d vectors of a million photos is ~5 GB and slow to build, so the snapshot
indexes a PCA projection of the vectors (fitted on a sample of the library). The projection
only shrinks distances between vectors (it is orthogonal), so a true near-duplicate stays near;
the search asks Annoy for a few dozen candidates and re-ranks them with the full vectors.

A snapshot is two files named by the last vector seq it holds: ``snapshot-<seq>.npz`` (file
ids, projection, settings) and ``snapshot-<seq>.ann``. Both are written under temporary names
and renamed; the ``.ann`` rename comes last and makes the snapshot visible.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import structlog
from annoy import AnnoyIndex
from numpy.typing import NDArray

from dupwatch.store.records import VectorBatch

log = structlog.get_logger(__name__)

_NAME = re.compile(r"snapshot-(\d+)\.ann")
METRIC: Final = "euclidean"


@dataclass(frozen=True, slots=True)
class Projection:
    """x -> (x - mean) @ basis.T : the top principal directions of the library's vectors."""

    mean: NDArray[np.float32]  # (D,)
    basis: NDArray[np.float32]  # (d, D), orthonormal rows

    @classmethod
    def fit(cls, sample: NDArray[np.float32], dim: int) -> Projection:
        """Fit on ``sample`` (rows are vectors) through its covariance matrix.

        The covariance is D x D whatever the sample size, so fitting on tens of thousands of
        vectors needs a few MB (a full SVD of the sample would need a gigabyte).
        """
        mean = sample.mean(axis=0, dtype=np.float64)
        cov = np.zeros((sample.shape[1], sample.shape[1]), dtype=np.float64)
        for start in range(0, sample.shape[0], 4096):
            part = sample[start : start + 4096] - mean
            cov += part.T @ part
        _, vectors = np.linalg.eigh(cov)  # ascending eigenvalues
        # A library smaller than ``dim`` has fewer meaningful directions; keep no more.
        keep = max(1, min(dim, sample.shape[0] - 1, sample.shape[1]))
        basis = np.ascontiguousarray(vectors[:, ::-1][:, :keep].T, dtype=np.float32)
        return cls(mean.astype(np.float32), basis)

    @property
    def dim(self) -> int:
        return int(self.basis.shape[0])

    def apply(self, vectors: NDArray[np.float32]) -> NDArray[np.float32]:
        return np.asarray((vectors - self.mean) @ self.basis.T, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class SnapshotFiles:
    ann: Path
    meta: Path
    upto_seq: int


def snapshot_files(directory: Path, upto_seq: int) -> SnapshotFiles:
    return SnapshotFiles(
        directory / f"snapshot-{upto_seq}.ann", directory / f"snapshot-{upto_seq}.npz", upto_seq
    )


def list_snapshots(directory: Path) -> list[SnapshotFiles]:
    """Complete snapshots in ``directory``, newest first."""
    found = []
    for path in directory.glob("snapshot-*.ann"):
        match = _NAME.fullmatch(path.name)
        if match:
            files = snapshot_files(directory, int(match.group(1)))
            if files.meta.exists():
                found.append(files)
    return sorted(found, key=lambda f: f.upto_seq, reverse=True)


class Snapshot:
    """A loaded (memory-mapped) snapshot; searched, never changed."""

    def __init__(
        self,
        files: SnapshotFiles,
        annoy: AnnoyIndex,
        file_ids: NDArray[np.int64],
        projection: Projection,
        model_id: str,
    ) -> None:
        self.files = files
        self.annoy = annoy
        self.file_ids = file_ids
        self.sorted_ids = np.sort(file_ids)
        self.projection = projection
        self.model_id = model_id

    @property
    def upto_seq(self) -> int:
        return self.files.upto_seq

    def __len__(self) -> int:
        return int(self.file_ids.shape[0])

    def contains(self, file_ids: NDArray[np.int64]) -> NDArray[np.bool_]:
        pos = np.searchsorted(self.sorted_ids, file_ids)
        pos = np.minimum(pos, max(len(self.sorted_ids) - 1, 0))
        if len(self.sorted_ids) == 0:
            return np.zeros(len(file_ids), dtype=bool)
        return np.asarray(self.sorted_ids[pos] == file_ids)

    def candidates(self, vector: NDArray[np.float32], n: int, search_k: int) -> NDArray[np.int64]:
        """File ids of the ``n`` items nearest ``vector`` in the projected space."""
        query = self.projection.apply(vector[None, :])[0]
        items = self.annoy.get_nns_by_vector(query.tolist(), n, search_k=search_k)
        return self.file_ids[np.asarray(items, dtype=np.int64)]

    @classmethod
    def load(cls, files: SnapshotFiles) -> Snapshot:
        with np.load(files.meta, allow_pickle=False) as meta:
            settings = json.loads(str(meta["settings"]))
            projection = Projection(meta["mean"], meta["basis"])
            file_ids = np.asarray(meta["file_ids"], dtype=np.int64)
        annoy = AnnoyIndex(projection.dim, METRIC)
        annoy.load(os.fspath(files.ann), prefault=False)  # mmap: pages load as searches touch them
        if annoy.get_n_items() != len(file_ids):
            raise ValueError(
                f"{files.ann}: holds {annoy.get_n_items()} items, expected {len(file_ids)}"
            )
        return cls(files, annoy, file_ids, projection, str(settings["model_id"]))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_snapshot(
    directory: Path,
    *,
    model_id: str,
    upto_seq: int,
    projection: Projection,
    batches: Iterable[VectorBatch],
    trees: int,
) -> SnapshotFiles:
    """Build a snapshot from ``batches`` (full vectors) and publish it atomically."""
    started = time.monotonic()
    files = snapshot_files(directory, upto_seq)
    tmp_ann = directory / f".{files.ann.name}.{os.getpid()}.tmp"
    tmp_meta = directory / f".{files.meta.name}.{os.getpid()}.tmp"
    annoy = AnnoyIndex(projection.dim, METRIC)
    # Built inside the file rather than in memory: the daemon's resident size stays small.
    annoy.on_disk_build(os.fspath(tmp_ann))
    ids: list[NDArray[np.int64]] = []
    n = 0
    try:
        for batch in batches:
            projected = projection.apply(batch.vectors)
            for row in projected:
                annoy.add_item(n, row.tolist())
                n += 1
            ids.append(batch.file_ids)
        annoy.build(trees, n_jobs=1)
        annoy.unload()
        file_ids = np.concatenate(ids) if ids else np.empty(0, dtype=np.int64)
        settings = {"model_id": model_id, "upto_seq": upto_seq, "trees": trees, "metric": METRIC}
        with tmp_meta.open("wb") as out:
            np.savez(
                out,
                file_ids=file_ids,
                mean=projection.mean,
                basis=projection.basis,
                settings=np.array(json.dumps(settings)),
            )
            out.flush()
            os.fsync(out.fileno())
        with tmp_ann.open("rb+") as ann:
            os.fsync(ann.fileno())
        tmp_meta.replace(files.meta)
        tmp_ann.replace(files.ann)
        _fsync_dir(directory)
    finally:
        for leftover in (tmp_ann, tmp_meta):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    log.info(
        "snapshot_built",
        items=n,
        dim=projection.dim,
        trees=trees,
        upto_seq=upto_seq,
        seconds=round(time.monotonic() - started, 2),
        bytes=files.ann.stat().st_size + files.meta.stat().st_size,
    )
    return files


def remove_snapshot(files: SnapshotFiles) -> None:
    # The .ann goes first, so a half-removed snapshot is never listed as complete.
    for path in (files.ann, files.meta):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
