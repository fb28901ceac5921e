"""The snapshot: a projection to fewer dimensions, an HNSW graph over it, and its file ids.

A graph over the 1280-d vectors of a million photos would take gigabytes, so the snapshot
indexes a PCA projection of the vectors (fitted on a sample of the library), stored as float16.
The projection only shrinks distances between vectors (it is orthogonal), so a true
near-duplicate stays near; the search asks the graph for a few dozen candidates and the index
re-scores them with the full vectors from the store.

Why a graph (faiss HNSW) and not Annoy's trees: on the library bench/index_bench.py models,
a near-duplicate at cosine 0.90-0.95 is barely nearer than its cluster's other members, and
trees split such pairs apart. At 100k vectors Annoy had to visit more nodes than the library
holds to find every copy at cosine 0.95, at 8-17 ms a query; the graph finds all of them at
well under a millisecond, and its cost grows with the logarithm of the library, not its size
(bench/RESULTS.md, "Index").

A snapshot is two files named by the last vector seq it holds: ``snapshot-<seq>.npz`` (file
ids, projection, settings) and ``snapshot-<seq>.hnsw``. Both are written under temporary names
and renamed; the ``.hnsw`` rename comes last and makes the snapshot visible.
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

import faiss
import numpy as np
import structlog
from numpy.typing import NDArray

from dupwatch.store.records import VectorBatch

log = structlog.get_logger(__name__)

_NAME = re.compile(r"snapshot-(\d+)\.hnsw")
_OBSOLETE = re.compile(r"snapshot-(\d+)\.ann")  # Annoy snapshots of earlier versions
FORMAT: Final = "hnsw-sq-fp16"


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
    graph: Path
    meta: Path
    upto_seq: int


@dataclass(frozen=True, slots=True)
class GraphSettings:
    """How the HNSW graph is built: links per node and the breadth of the search for them."""

    links: int = 32
    ef_construction: int = 80


def snapshot_files(directory: Path, upto_seq: int) -> SnapshotFiles:
    return SnapshotFiles(
        directory / f"snapshot-{upto_seq}.hnsw", directory / f"snapshot-{upto_seq}.npz", upto_seq
    )


def list_snapshots(directory: Path) -> list[SnapshotFiles]:
    """Complete snapshots in ``directory``, newest first."""
    found = []
    for path in directory.glob("snapshot-*.hnsw"):
        match = _NAME.fullmatch(path.name)
        if match:
            files = snapshot_files(directory, int(match.group(1)))
            if files.meta.exists():
                found.append(files)
    return sorted(found, key=lambda f: f.upto_seq, reverse=True)


def remove_obsolete(directory: Path) -> int:
    """Delete snapshots in a format this version no longer reads; returns how many."""
    removed = 0
    for path in directory.glob("snapshot-*.ann"):
        match = _OBSOLETE.fullmatch(path.name)
        if not match:
            continue
        current = snapshot_files(directory, int(match.group(1)))
        path.unlink(missing_ok=True)
        if not current.graph.exists():  # the .npz is the old snapshot's, not a current one's
            current.meta.unlink(missing_ok=True)
        removed += 1
    return removed


class Snapshot:
    """A loaded snapshot; searched, never changed (faiss searches are safe from many threads)."""

    def __init__(
        self,
        files: SnapshotFiles,
        graph: faiss.Index,
        file_ids: NDArray[np.int64],
        projection: Projection,
        model_id: str,
    ) -> None:
        self.files = files
        self.graph = graph
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

    def candidates(self, vector: NDArray[np.float32], n: int, ef_search: int) -> NDArray[np.int64]:
        """File ids of the ``n`` items nearest ``vector`` in the projected space.

        ``ef_search`` is how many nodes the graph search keeps in play (at least ``n``); more
        finds more of the true nearest at a cost that grows slowly.
        """
        query = self.projection.apply(vector[None, :])
        # faiss's bundled stubs lack this class; it exists since faiss 1.7.3.
        params = faiss.SearchParametersHNSW(efSearch=max(ef_search, n))  # type: ignore[attr-defined]
        _, items = self.graph.search(query, n, params=params)
        found = items[0]
        return np.asarray(self.file_ids[found[found >= 0]], dtype=np.int64)

    @classmethod
    def load(cls, files: SnapshotFiles) -> Snapshot:
        with np.load(files.meta, allow_pickle=False) as meta:
            settings = json.loads(str(meta["settings"]))
            projection = Projection(meta["mean"], meta["basis"])
            file_ids = np.asarray(meta["file_ids"], dtype=np.int64)
        if settings.get("format") != FORMAT:
            raise ValueError(f"{files.meta}: format {settings.get('format')!r}, not {FORMAT}")
        graph = faiss.read_index(os.fspath(files.graph))
        if graph.ntotal != len(file_ids) or graph.d != projection.dim:
            raise ValueError(
                f"{files.graph}: holds {graph.ntotal} items of {graph.d} dimensions, "
                f"expected {len(file_ids)} of {projection.dim}"
            )
        return cls(files, graph, file_ids, projection, str(settings["model_id"]))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as out:
        os.fsync(out.fileno())


def write_snapshot(
    directory: Path,
    *,
    model_id: str,
    upto_seq: int,
    projection: Projection,
    batches: Iterable[VectorBatch],
    graph_settings: GraphSettings,
) -> SnapshotFiles:
    """Build a snapshot from ``batches`` (full vectors) and publish it atomically."""
    started = time.monotonic()
    files = snapshot_files(directory, upto_seq)
    tmp_graph = directory / f".{files.graph.name}.{os.getpid()}.tmp"
    tmp_meta = directory / f".{files.meta.name}.{os.getpid()}.tmp"
    # One core for the build: the other is the embedder's, and a rebuild is never urgent.
    faiss.omp_set_num_threads(1)
    # float16 codes halve the graph's memory and, measured, lose no near-duplicates.
    fp16 = faiss.ScalarQuantizer.QT_fp16
    # The stubs type the quantizer kind as int where the binding takes exactly that int.
    graph = faiss.IndexHNSWSQ(projection.dim, fp16, graph_settings.links)  # type: ignore[arg-type]
    graph.hnsw.efConstruction = graph_settings.ef_construction
    ids: list[NDArray[np.int64]] = []
    n = 0
    try:
        for batch in batches:
            projected = np.ascontiguousarray(projection.apply(batch.vectors))
            if not graph.is_trained:
                graph.train(projected)  # fp16 needs no statistics; faiss still wants the call
            graph.add(projected)
            ids.append(batch.file_ids)
            n += len(batch.file_ids)
        file_ids = np.concatenate(ids) if ids else np.empty(0, dtype=np.int64)
        faiss.write_index(graph, os.fspath(tmp_graph))
        settings = {
            "model_id": model_id,
            "upto_seq": upto_seq,
            "format": FORMAT,
            "links": graph_settings.links,
            "ef_construction": graph_settings.ef_construction,
        }
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
        _fsync_file(tmp_graph)
        tmp_meta.replace(files.meta)
        tmp_graph.replace(files.graph)
        _fsync_dir(directory)
    finally:
        for leftover in (tmp_graph, tmp_meta):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    log.info(
        "snapshot_built",
        items=n,
        dim=projection.dim,
        links=graph_settings.links,
        upto_seq=upto_seq,
        seconds=round(time.monotonic() - started, 2),
        bytes=files.graph.stat().st_size + files.meta.stat().st_size,
    )
    return files


def remove_snapshot(files: SnapshotFiles) -> None:
    # The graph goes first, so a half-removed snapshot is never listed as complete.
    for path in (files.graph, files.meta):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
