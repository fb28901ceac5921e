"""The Annoy snapshot: a projection to fewer dimensions, Annoy trees over it, and its file ids.

Annoy over the 1280-d vectors of a million photos would be ~5 GB and slow to build, so the
snapshot indexes a PCA projection of the vectors (fitted on a sample of the library). The
projection only shrinks distances between vectors (it is orthogonal), so a true near-duplicate
stays near.

A search is three narrowing steps. The trees cover only the leading ``tree_dim`` dimensions of
the projection, each scaled towards unit spread, and Annoy returns a long shortlist of items
near the query there. The snapshot keeps every item's projected vector (float16) in memory and
re-ranks that shortlist in all the projected dimensions; the index then re-scores the few best
with their full vectors from the store.

Why scale the trees' dimensions: PCA leaves most of the spread in the first few dimensions, so
Annoy's splits would cut almost only along those, many times over, and a near-duplicate's
difference from its original lies largely there too: the trees kept splitting such pairs
apart. Dividing each dimension by a power of its spread (``whiten``) spreads the splits over
all of them. On the benchmark's library (bench/RESULTS.md, "Index") this found every planted
copy at cosine 0.90 and 0.95 at 1M vectors, where unscaled trees missed 2-3 % at 0.90.

A snapshot is two files named by the last vector seq it holds: ``snapshot-<seq>.npz`` (file
ids, projection, projected vectors, settings) and ``snapshot-<seq>.ann``. Both are written
under temporary names and renamed; the ``.ann`` rename comes last and makes the snapshot
visible.
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
# Snapshots this version does not read: HNSW graphs written by an earlier version.
_OBSOLETE = re.compile(r"snapshot-(\d+)\.hnsw")
METRIC: Final = "euclidean"
FORMAT: Final = "annoy-pca-rerank"


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


@dataclass(frozen=True, slots=True)
class TreeSettings:
    """How the Annoy trees are built: how many, over how many leading projected dimensions.

    Each of those dimensions is divided by its spread to the power ``whiten`` (0: as projected,
    1: unit spread) before the trees see it.
    """

    trees: int
    tree_dim: int
    whiten: float = 0.0


@dataclass(frozen=True, slots=True)
class SearchSettings:
    """How far a query searches the trees; see ``Snapshot.candidates``."""

    search_k: int
    shortlist: int
    expand: int = 0
    expand_search_k: int = 0
    expand_shortlist: int = 0


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


def remove_obsolete(directory: Path) -> int:
    """Delete snapshots in a format this version no longer reads; returns how many."""
    removed = 0
    for path in directory.glob("snapshot-*.hnsw"):
        match = _OBSOLETE.fullmatch(path.name)
        if not match:
            continue
        current = snapshot_files(directory, int(match.group(1)))
        path.unlink(missing_ok=True)
        if not current.ann.exists():  # the .npz is the old snapshot's, not a current one's
            current.meta.unlink(missing_ok=True)
        removed += 1
    return removed


class Snapshot:
    """A loaded snapshot (trees memory-mapped); searched, never changed."""

    def __init__(
        self,
        files: SnapshotFiles,
        annoy: AnnoyIndex,
        file_ids: NDArray[np.int64],
        projection: Projection,
        projected: NDArray[np.float16],
        tree_scale: NDArray[np.float32],
        model_id: str,
    ) -> None:
        self.files = files
        self.annoy = annoy
        self.tree_dim = int(annoy.f)
        self.tree_scale = tree_scale
        self.file_ids = file_ids
        self.sorted_ids = np.sort(file_ids)
        self.projection = projection
        self.projected = projected
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

    def candidates(
        self, vector: NDArray[np.float32], n: int, search: SearchSettings
    ) -> NDArray[np.int64]:
        """File ids of the ``n`` items nearest ``vector`` in the projected space, nearest first.

        Annoy inspects ``search.search_k`` tree-node items and returns the ``search.shortlist``
        nearest in the trees' dimensions. With ``search.expand``, the nearest of those (in
        every projected dimension) are searched from in turn: their own Annoy neighbours join
        the shortlist. A copy that the trees split from its original mostly still shares
        leaves with the original's other near neighbours, which the first search does find.
        """
        query = self.projection.apply(vector[None, :])[0]
        in_trees = query[: self.tree_dim] * self.tree_scale
        items = self._annoy_nearest(in_trees, max(search.shortlist, n), search)
        if search.expand > 0 and len(items):
            pool = [items]
            for seed in self._nearest(items, query, search.expand).tolist():
                found = self.annoy.get_nns_by_item(
                    seed, search.expand_shortlist, search_k=search.expand_search_k
                )
                pool.append(np.asarray(found, dtype=np.int64))
            items = np.unique(np.concatenate(pool))
        return np.asarray(self.file_ids[self._nearest(items, query, n)], dtype=np.int64)

    def _annoy_nearest(
        self, query: NDArray[np.float32], n: int, search: SearchSettings
    ) -> NDArray[np.int64]:
        found = self.annoy.get_nns_by_vector(query.tolist(), n, search_k=search.search_k)
        return np.asarray(found, dtype=np.int64)

    def _nearest(
        self, items: NDArray[np.int64], query: NDArray[np.float32], n: int
    ) -> NDArray[np.int64]:
        """The ``n`` of ``items`` nearest ``query`` in every projected dimension, nearest first."""
        diff = self.projected[items].astype(np.float32) - query
        distances = np.einsum("ij,ij->i", diff, diff)
        if len(items) > n:
            keep = np.argpartition(distances, n - 1)[:n]
            items, distances = items[keep], distances[keep]
        return items[np.argsort(distances, kind="stable")]

    @classmethod
    def load(cls, files: SnapshotFiles) -> Snapshot:
        with np.load(files.meta, allow_pickle=False) as meta:
            settings = json.loads(str(meta["settings"]))
            if settings.get("format") != FORMAT:
                raise ValueError(f"{files.meta}: format {settings.get('format')!r}, not {FORMAT}")
            projection = Projection(meta["mean"], meta["basis"])
            file_ids = np.asarray(meta["file_ids"], dtype=np.int64)
            projected = np.asarray(meta["projected"], dtype=np.float16)
            tree_scale = np.asarray(meta["tree_scale"], dtype=np.float32)
        tree_dim = int(settings["tree_dim"])
        if (
            projected.shape != (len(file_ids), projection.dim)
            or not 0 < tree_dim <= projection.dim
            or tree_scale.shape != (tree_dim,)
        ):
            raise ValueError(f"{files.meta}: projected vectors or tree dimensions do not match")
        annoy = AnnoyIndex(tree_dim, METRIC)
        annoy.load(os.fspath(files.ann), prefault=False)  # mmap: pages load as searches touch them
        if annoy.get_n_items() != len(file_ids):
            raise ValueError(
                f"{files.ann}: holds {annoy.get_n_items()} items, expected {len(file_ids)}"
            )
        model_id = str(settings["model_id"])
        return cls(files, annoy, file_ids, projection, projected, tree_scale, model_id)


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
    tree_settings: TreeSettings,
    spread: NDArray[np.float32],
) -> SnapshotFiles:
    """Build a snapshot from ``batches`` (full vectors) and publish it atomically.

    ``spread`` is the standard deviation of each projected dimension over the library (a
    sample of it will do); the trees' dimensions are scaled by it (see ``TreeSettings``).
    """
    started = time.monotonic()
    files = snapshot_files(directory, upto_seq)
    tmp_ann = directory / f".{files.ann.name}.{os.getpid()}.tmp"
    tmp_meta = directory / f".{files.meta.name}.{os.getpid()}.tmp"
    tree_dim = min(tree_settings.tree_dim, projection.dim)
    # A dimension with (nearly) no spread is left as it is rather than blown up.
    spread_in_trees = np.asarray(spread[:tree_dim], dtype=np.float64)
    spread_in_trees = np.where(spread_in_trees > 1e-6, spread_in_trees, 1.0)
    tree_scale = np.asarray(spread_in_trees**-tree_settings.whiten, dtype=np.float32)
    annoy = AnnoyIndex(tree_dim, METRIC)
    # Built inside the file rather than in memory: the daemon's resident size stays small.
    annoy.on_disk_build(os.fspath(tmp_ann))
    ids: list[NDArray[np.int64]] = []
    rows: list[NDArray[np.float16]] = []
    n = 0
    try:
        for batch in batches:
            projected = projection.apply(batch.vectors)
            for row in projected[:, :tree_dim] * tree_scale:
                annoy.add_item(n, row.tolist())
                n += 1
            ids.append(batch.file_ids)
            rows.append(projected.astype(np.float16))
        # One core: the other is the embedder's, and a rebuild is never urgent.
        annoy.build(tree_settings.trees, n_jobs=1)
        annoy.unload()
        file_ids = np.concatenate(ids) if ids else np.empty(0, dtype=np.int64)
        matrix = np.concatenate(rows) if rows else np.empty((0, projection.dim), np.float16)
        settings = {
            "model_id": model_id,
            "upto_seq": upto_seq,
            "format": FORMAT,
            "trees": tree_settings.trees,
            "tree_dim": tree_dim,
            "whiten": tree_settings.whiten,
            "metric": METRIC,
        }
        with tmp_meta.open("wb") as out:
            np.savez(
                out,
                file_ids=file_ids,
                mean=projection.mean,
                basis=projection.basis,
                projected=matrix,
                tree_scale=tree_scale,
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
        tree_dim=tree_dim,
        trees=tree_settings.trees,
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
