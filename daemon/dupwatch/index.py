"""Similarity search: the snapshot plus a buffer of recent vectors, minus tombstones.

The store is the source of truth; everything here is a cache that can be rebuilt from it. A
search asks the Annoy snapshot (trees over a PCA projection of the vectors; see snapshot.py)
for candidates in its projected space, re-ranks them with their full vectors from the store,
adds exact matches from the buffer (vectors added since the snapshot; see buffer.py for
which of their full vectors it holds and which it reads from the store), and leaves out
tombstoned files (gone, quarantined or replaced since the snapshot). When the buffer grows past
a size or age threshold, a background thread has a child process build a new snapshot
(rebuild.py) and swaps it in; searches keep using the old one until then, and adding never
waits for a build.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
from numpy.typing import NDArray

from dupwatch.buffer import Buffer
from dupwatch.rebuild import BuildRequest, build_in_child
from dupwatch.records import Neighbour
from dupwatch.snapshot import (
    SearchSettings,
    Snapshot,
    TreeSettings,
    list_snapshots,
    remove_obsolete,
    remove_snapshot,
)
from dupwatch.store import Store

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class IndexSettings:
    """Search and rebuild parameters; the defaults were chosen by bench/index_bench.py."""

    projected_dim: int = 64  # PCA dimensions kept in the snapshot (re-ranking the shortlist)
    tree_dim: int = 32  # leading projected dimensions the Annoy trees split on...
    whiten: float = 0.5  # ...each divided by its spread to this power (see snapshot.py)
    trees: int = 32
    search_k: int = 20_000  # Annoy tree-node items inspected per query
    shortlist: int = 400  # items Annoy returns, re-ranked in all projected dimensions...
    # Off: with the scaled trees it only added cosine-0.90 copies (0.9975 -> 1.0 at 1M) for
    # twice the query time, p99 past 10 ms on a loaded machine (bench/RESULTS.md, "Index").
    expand: int = 0  # ...the nearest of which are searched from in turn (see snapshot.py)...
    expand_search_k: int = 5000  # ...each inspecting this many items...
    expand_shortlist: int = 50  # ...and adding this many neighbours to the shortlist...
    candidates: int = 24  # ...of which these are re-scored with their full vectors
    # Past buffer_exact rows, a library without a snapshot gets its first one: only a snapshot
    # gives the buffer a projection to shortlist in (see buffer.py).
    buffer_exact: int = 1024  # a buffer up to this size is scanned in full, from rows it holds...
    buffer_shortlist: int = 128  # ...a larger one scores only its rows nearest in the projection
    pca_sample: int = 20_000  # vectors the projection is fitted on
    rebuild_buffer_size: int = 5000  # rebuild when the buffer holds this many vectors...
    rebuild_buffer_fraction: float = 0.02  # ...or this share of the snapshot, if larger...
    rebuild_max_age: float = 3600.0  # ...or its oldest vector is this many seconds old
    retry_after: float = 600.0  # after a failed build, wait this long before the next


def cosine(vectors: NDArray[np.float32], query: NDArray[np.float32]) -> NDArray[np.float32]:
    """Similarity of unit vectors: their dot product, clipped to [-1, 1].

    The one place a similarity is computed; snapshot candidates are scored here from their
    full stored vectors, never from a distance in the projected space.
    """
    sims: NDArray[np.float32] = np.clip(vectors @ query, -1.0, 1.0).astype(np.float32)
    return sims


def _unit(vector: NDArray[np.float32], dim: int) -> NDArray[np.float32]:
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if v.shape[0] != dim:
        raise ValueError(f"vector has {v.shape[0]} dimensions, the index holds {dim}")
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        raise ValueError("vector is zero or not finite")
    return np.asarray(v / np.float32(norm), dtype=np.float32)


class VectorIndex:
    """Nearest neighbours by cosine similarity. Open with ``VectorIndex.open``."""

    def __init__(
        self, store: Store, directory: Path, model_id: str, dim: int, settings: IndexSettings
    ) -> None:
        self._store = store
        self._directory = directory
        self._model_id = model_id
        self._dim = dim
        self.settings = settings
        self._lock = threading.RLock()
        self._snapshot: Snapshot | None = None
        self._buffer = Buffer(dim, exact_up_to=settings.buffer_exact)
        self._tombstones: set[int] = set()
        self._builder: threading.Thread | None = None
        self._failed_at: float | None = None
        self.last_error: BaseException | None = None

    @classmethod
    def open(
        cls,
        store: Store,
        directory: Path,
        *,
        model_id: str,
        dim: int,
        settings: IndexSettings | None = None,
    ) -> VectorIndex:
        """Load the newest snapshot for ``model_id`` and refill the buffer from the store.

        Vectors stored after the snapshot go into the buffer; snapshot files no longer in the
        library become tombstones. Only when there is no usable snapshot and more vectors than
        one buffer's worth is a snapshot built before returning.
        """
        directory.mkdir(parents=True, exist_ok=True)
        index = cls(store, directory, model_id, dim, settings or IndexSettings())
        for leftover in directory.glob(".snapshot-*.tmp"):
            leftover.unlink(missing_ok=True)  # from a build that was interrupted
        if remove_obsolete(directory):
            log.info("snapshot_format_obsolete", directory=directory)
        snapshot = index._load_latest()
        if snapshot is None and store.vector_count(model_id) > index.settings.rebuild_buffer_size:
            log.info("snapshot_missing_rebuilding", model_id=model_id)
            index._build()
            snapshot = index._snapshot
        after = 0
        if snapshot is not None:
            index._snapshot = snapshot
            after = snapshot.upto_seq
            present = store.indexed_file_ids(model_id)
            index._tombstones = set(np.setdiff1d(snapshot.file_ids, present).tolist())
            index._buffer = Buffer(
                dim, snapshot.projection, exact_up_to=index.settings.buffer_exact
            )
        refill = store.load_vectors(model_id, after_seq=after)
        for file_id, vector in zip(refill.file_ids.tolist(), refill.vectors, strict=True):
            index._buffer.append(file_id, vector)
        log.info(
            "index_opened",
            snapshot_items=0 if snapshot is None else len(snapshot),
            buffer_items=len(index._buffer),
            tombstones=len(index._tombstones),
        )
        index.maybe_rebuild()
        return index

    def _load_latest(self) -> Snapshot | None:
        for files in list_snapshots(self._directory):
            try:
                snapshot = Snapshot.load(files)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("snapshot_unreadable", path=files.ann, error=str(exc))
                continue
            if (
                snapshot.model_id != self._model_id
                or snapshot.projection.mean.shape[0] != self._dim
            ):
                log.info("snapshot_for_other_model", path=files.ann, model_id=snapshot.model_id)
                continue
            return snapshot
        return None

    # --- search -------------------------------------------------------------------------------

    def search(self, vector: NDArray[np.float32], k: int) -> list[Neighbour]:
        """The ``k`` most similar known files, most similar first."""
        if k < 1:
            return []
        query = _unit(vector, self._dim)
        with self._lock:
            buffer, snapshot = self._buffer, self._snapshot
            n = buffer.n
            found: dict[int, float] = {}
            if n:
                rows = buffer.rows_to_score(query, shortlist=max(self.settings.buffer_shortlist, k))
                ids, held = buffer.file_ids[rows], buffer.held()
                if held is not None:
                    # Scoring every held row costs less than gathering the rows first.
                    sims = cosine(held, query)[rows]
                else:
                    batch = self._store.vectors_for(ids.tolist(), self._model_id)
                    ids, sims = batch.file_ids, cosine(batch.vectors, query)
                for i in np.argsort(-sims)[:k]:
                    found[int(ids[i])] = float(sims[i])
            if snapshot is not None and len(snapshot):
                wanted = max(self.settings.candidates, k)
                candidates = [
                    i
                    for i in snapshot.candidates(query, wanted, self._search_settings()).tolist()
                    if i not in self._tombstones and i not in buffer.row_of
                ]
                full = self._store.vectors_for(candidates, self._model_id)
                if len(full):
                    sims = cosine(full.vectors, query)
                    for file_id, sim in zip(full.file_ids.tolist(), sims.tolist(), strict=True):
                        found[file_id] = sim
        best = sorted(found.items(), key=lambda item: (-item[1], item[0]))[:k]
        return [Neighbour(file_id, similarity) for file_id, similarity in best]

    def _search_settings(self) -> SearchSettings:
        s = self.settings
        return SearchSettings(
            s.search_k, s.shortlist, s.expand, s.expand_search_k, s.expand_shortlist
        )

    # --- changes ------------------------------------------------------------------------------

    def add(self, file_id: int, vector: NDArray[np.float32]) -> None:
        """Make a (new or replaced) vector searchable at once; may start a background rebuild.

        ``vector`` is the one just stored for ``file_id``: it is scored as stored (float16),
        like the snapshot's candidates, and a large buffer reads it back from the store.
        """
        _unit(vector, self._dim)  # refuses a wrong size, zeros and NaN
        with self._lock:
            self._tombstones.discard(file_id)
            self._buffer.append(file_id, np.asarray(vector, dtype=np.float32).reshape(-1))
        self.maybe_rebuild()

    def remove(self, file_id: int) -> None:
        """Stop returning ``file_id`` (gone, quarantined, or about to be replaced)."""
        with self._lock:
            self._buffer.discard(file_id)
            if self._snapshot is not None and self._snapshot.contains(np.array([file_id]))[0]:
                self._tombstones.add(file_id)

    # --- rebuilding ---------------------------------------------------------------------------

    def rebuild_due(self) -> bool:
        with self._lock:
            size = len(self._buffer)
            if size == 0:
                return False
            if self._snapshot is None and size > self.settings.buffer_exact:
                # Only a snapshot gives the buffer a projection; until then it is scanned in
                # full and holds every full vector. A first snapshot takes seconds to build.
                return True
            snapshot_size = 0 if self._snapshot is None else len(self._snapshot)
            threshold = max(
                self.settings.rebuild_buffer_size,
                int(self.settings.rebuild_buffer_fraction * snapshot_size),
            )
            oldest = self._buffer.oldest
            old = oldest is not None and time.monotonic() - oldest >= self.settings.rebuild_max_age
            return size >= threshold or old

    def maybe_rebuild(self) -> bool:
        """Start a background rebuild if one is due and none is running; True if started."""
        with self._lock:
            if self._builder is not None and self._builder.is_alive():
                return False
            failed = self._failed_at
            if failed is not None and time.monotonic() - failed < self.settings.retry_after:
                return False
            if not self.rebuild_due():
                return False
            return self.start_rebuild()

    def start_rebuild(self) -> bool:
        """Start a background rebuild now (unless one is running); True if started."""
        with self._lock:
            if self._builder is not None and self._builder.is_alive():
                return False
            self._builder = threading.Thread(
                target=self._build_in_background, name="dupwatch-snapshot", daemon=True
            )
            self._builder.start()
            return True

    def wait_for_rebuild(self, timeout: float) -> bool:
        """Wait for a running rebuild; True if none is running any more."""
        builder = self._builder
        if builder is not None:
            builder.join(timeout)
            return not builder.is_alive()
        return True

    def close(self, timeout: float = 600.0) -> None:
        """Let a running rebuild finish (Annoy cannot stop halfway) before the store closes."""
        if not self.wait_for_rebuild(timeout):
            log.warning("snapshot_build_still_running", timeout=timeout)

    def _build_in_background(self) -> None:
        try:
            self._build()
            self._failed_at = None
            self.last_error = None
        except Exception as exc:
            self._failed_at = time.monotonic()
            self.last_error = exc
            log.exception("snapshot_build_failed", error=str(exc))

    def _build(self) -> None:
        with self._lock:
            covered = self._buffer.n  # buffer rows the new snapshot will hold
        # Every vector in those rows was stored before it was added here, so its seq is at
        # most upto; later ones stay in the buffer (a few may be in both; the buffer wins).
        # The child reads through its own connection, so it sees committed rows only: upto is
        # read here under the store's lock, which no other thread holds inside a transaction.
        upto = self._store.max_vector_seq(self._model_id)
        files = build_in_child(
            BuildRequest(
                db_path=self._store.path,
                directory=self._directory,
                model_id=self._model_id,
                upto_seq=upto,
                projected_dim=self.settings.projected_dim,
                pca_sample=self.settings.pca_sample,
                tree_settings=TreeSettings(
                    self.settings.trees, self.settings.tree_dim, self.settings.whiten
                ),
            )
        )
        if files is None:
            return
        snapshot = Snapshot.load(files)
        with self._lock:
            self._snapshot = snapshot
            # The rows added during the build, projected anew: their vectors from the store,
            # since a large buffer no longer holds them.
            rest = self._store.vectors_for(self._buffer.live_ids(covered).tolist(), self._model_id)
            self._buffer = self._buffer.refilled(snapshot.projection, rest.file_ids, rest.vectors)
            if self._tombstones:
                dead = np.fromiter(self._tombstones, dtype=np.int64)
                self._tombstones = set(dead[snapshot.contains(dead)].tolist())
            # The build logs snapshot_built in its own process; this is the daemon's side.
            log.info(
                "snapshot_loaded",
                items=len(snapshot),
                upto_seq=snapshot.upto_seq,
                buffer_items=len(self._buffer),
            )
        # Older snapshots (the one just replaced, or unreadable ones skipped at open) are of no
        # more use; searches still holding the replaced one keep their mapping.
        for stale in list_snapshots(self._directory):
            if stale != files:
                remove_snapshot(stale)

    def stats(self) -> IndexStats:
        with self._lock:
            return IndexStats(
                snapshot_items=0 if self._snapshot is None else len(self._snapshot),
                snapshot_upto_seq=0 if self._snapshot is None else self._snapshot.upto_seq,
                buffer_items=len(self._buffer),
                tombstones=len(self._tombstones),
                rebuilding=self._builder is not None and self._builder.is_alive(),
            )


@dataclass(frozen=True, slots=True)
class IndexStats:
    snapshot_items: int
    snapshot_upto_seq: int
    buffer_items: int
    tombstones: int
    rebuilding: bool
