"""Vector index: snapshot + buffer + tombstones agree with exact search for near-duplicates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dupwatch.buffer import Buffer
from dupwatch.index import IndexSettings, VectorIndex, cosine
from dupwatch.records import FileStatus, StatKey
from dupwatch.snapshot import Projection, list_snapshots
from dupwatch.store import Store

MODEL = "test-model"
DIM = 96
# A small buffer_exact, so buffers past 100 vectors are searched through the projection.
SETTINGS = IndexSettings(
    projected_dim=24,
    # Trees over fewer dimensions than the projection, so the shortlist re-rank is exercised.
    tree_dim=16,
    trees=8,
    search_k=2000,
    shortlist=96,
    expand=2,
    expand_search_k=500,
    expand_shortlist=20,
    candidates=32,
    buffer_exact=100,
    buffer_shortlist=32,
    rebuild_buffer_size=1500,
)


def _clustered(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit vectors in tight-ish clusters, so neighbours have close competitors (like bursts)."""
    scales = 1.0 / np.sqrt(np.arange(1, DIM + 1))  # a decaying spectrum, as CNN features have
    centres = rng.standard_normal((max(n // 20, 1), DIM)) * scales
    members = centres[rng.integers(0, len(centres), n)]
    members = members + 0.35 * rng.standard_normal((n, DIM)) * scales
    return np.asarray(members / np.linalg.norm(members, axis=1, keepdims=True), dtype=np.float32)


def _copy(rng: np.random.Generator, v: np.ndarray, similarity: float) -> np.ndarray:
    """A unit vector with exactly ``similarity`` to ``v`` (an altered copy of that photo)."""
    noise = rng.standard_normal(DIM).astype(np.float32)
    noise -= (noise @ v) * v
    noise /= np.linalg.norm(noise)
    return np.asarray(similarity * v + np.sqrt(1 - similarity**2) * noise, dtype=np.float32)


class Library:
    """A real store plus the ground truth of which vectors are live."""

    def __init__(self, store: Store, rng: np.random.Generator) -> None:
        self.store = store
        self.rng = rng
        self.live: dict[int, np.ndarray] = {}
        self.counter = 0

    def put(self, vectors: np.ndarray) -> list[int]:
        ids = []
        with self.store.batch():
            for v in vectors:
                self.counter += 1
                stat = StatKey(1, self.counter, self.counter, 1, self.counter)
                file_id = self.store.upsert_file(Path(f"/lib/{self.counter}.jpg"), stat).id
                self.store.put_vector(file_id, MODEL, v)
                self.live[file_id] = v
                ids.append(file_id)
        return ids

    def exact_top(self, query: np.ndarray) -> tuple[int, float]:
        ids = np.fromiter(self.live, dtype=np.int64)
        sims = np.stack([self.live[i] for i in ids]) @ query
        best = int(np.argmax(sims))
        return int(ids[best]), float(sims[best])

    def check_near_duplicates(self, index: VectorIndex, file_ids: list[int]) -> None:
        returned: set[int] = set()
        for file_id in file_ids:
            for similarity in (0.9, 0.95, 0.99):
                query = _copy(self.rng, self.live[file_id], similarity)
                expected_id, expected_sim = self.exact_top(query)
                hits = index.search(query, 10)
                assert hits[0].file_id == expected_id, (file_id, similarity)
                assert hits[0].similarity == pytest.approx(expected_sim, abs=2e-3)
                sims = [h.similarity for h in hits]
                assert sims == sorted(sims, reverse=True)
                returned |= {h.file_id for h in hits}
        assert returned <= set(self.live), f"removed files came back: {returned - set(self.live)}"


@pytest.fixture
def library(tmp_path: Path) -> Iterator[Library]:
    store = Store.open(tmp_path / "db.sqlite")
    try:
        yield Library(store, np.random.default_rng(42))
    finally:
        store.close()


def _open(library: Library, tmp_path: Path) -> VectorIndex:
    return VectorIndex.open(
        library.store, tmp_path / "index", model_id=MODEL, dim=DIM, settings=SETTINGS
    )


def test_search_matches_exact_across_snapshot_buffer_and_tombstones(
    library: Library, tmp_path: Path
) -> None:
    in_snapshot = library.put(_clustered(library.rng, 3000))
    index = _open(library, tmp_path)  # more than a buffer's worth: builds a snapshot first
    try:
        assert index.stats().snapshot_items == 3000
        in_buffer = library.put(_clustered(library.rng, 400))
        for file_id in in_buffer:
            index.add(file_id, library.live[file_id])
        # Gone files, from the snapshot and from the buffer.
        for file_id in in_snapshot[:60] + in_buffer[:20]:
            library.store.set_file_status(file_id, FileStatus.GONE)
            index.remove(file_id)
            del library.live[file_id]
        # Replaced vectors: the old version lives on in the snapshot, the new in the buffer.
        for file_id in in_snapshot[60:90]:
            library.live[file_id] = _clustered(library.rng, 1)[0]
            library.store.put_vector(file_id, MODEL, library.live[file_id])
            index.add(file_id, library.live[file_id])
        stats = index.stats()
        assert (stats.buffer_items, stats.tombstones, stats.rebuilding) == (410, 60, False)
        picks = in_snapshot[60:75] + in_snapshot[100:130] + in_buffer[20:50]
        library.check_near_duplicates(index, picks)
        # A removed file is not found even by its own vector.
        gone = in_snapshot[0]
        own = library.store.vector(gone, MODEL)
        assert own is not None
        assert all(h.file_id != gone for h in index.search(own, 50))
    finally:
        index.close()


def test_rebuild_swaps_in_the_background_and_restart_reloads_without_rebuilding(
    library: Library, tmp_path: Path
) -> None:
    first = library.put(_clustered(library.rng, 2000))
    index = _open(library, tmp_path)
    try:
        for file_id in first[:40]:
            library.store.set_file_status(file_id, FileStatus.QUARANTINED)
            index.remove(file_id)
            del library.live[file_id]
        batch = library.put(_clustered(library.rng, 1600))
        for file_id in batch[:1499]:
            index.add(file_id, library.live[file_id])
        assert not index.stats().rebuilding
        index.add(batch[1499], library.live[batch[1499]])  # reaches the threshold
        # Ingestion carries on while the snapshot builds.
        for file_id in batch[1500:]:
            index.add(file_id, library.live[file_id])
        assert index.wait_for_rebuild(timeout=120)
        assert index.last_error is None
        stats = index.stats()
        assert stats.snapshot_items == 2000 - 40 + 1600
        assert stats.buffer_items <= 100  # only what was added after the build started
        assert stats.tombstones == 0  # the new snapshot no longer holds the quarantined files
        assert len(list_snapshots(tmp_path / "index")) == 1  # the old one was removed
        library.check_near_duplicates(index, first[40:60] + batch[:20] + batch[1580:])
        after_swap = index.stats()
    finally:
        index.close()

    # More changes, then a restart: the snapshot is loaded, not rebuilt.
    late = library.put(_clustered(library.rng, 50))
    for file_id in batch[:10]:
        library.store.set_file_status(file_id, FileStatus.GONE)
        del library.live[file_id]
    reopened = _open(library, tmp_path)
    try:
        stats = reopened.stats()
        assert stats.snapshot_upto_seq == after_swap.snapshot_upto_seq
        assert stats.snapshot_items == after_swap.snapshot_items
        # Only vectors stored after the snapshot's last seq are refilled into the buffer.
        assert stats.buffer_items == len(late)
        assert stats.tombstones == 10
        assert not stats.rebuilding
        library.check_near_duplicates(reopened, first[60:80] + batch[10:30] + late[:20])
    finally:
        reopened.close()


def test_unreadable_newest_snapshot_falls_back_and_leftovers_are_cleared(
    library: Library, tmp_path: Path
) -> None:
    ids = library.put(_clustered(library.rng, 1800))
    _open(library, tmp_path).close()
    directory = tmp_path / "index"
    [good] = list_snapshots(directory)
    (directory / "snapshot-999999.ann").write_bytes(b"not an annoy file")
    np.savez(directory / "snapshot-999999.npz", nothing=np.zeros(1))
    (directory / ".snapshot-5.ann.123.tmp").write_bytes(b"half-written")
    index = _open(library, tmp_path)
    try:
        assert index.stats().snapshot_upto_seq == good.upto_seq
        assert not (directory / ".snapshot-5.ann.123.tmp").exists()
        library.check_near_duplicates(index, ids[:20])
        library.put(_clustered(library.rng, 10))
        assert index.start_rebuild()
        assert index.wait_for_rebuild(timeout=120)
        assert index.last_error is None
        # The next snapshot replaces both the one in use and the unreadable one.
        [newest] = list_snapshots(directory)
        assert newest.upto_seq > good.upto_seq
        assert not (directory / "snapshot-999999.ann").exists()
    finally:
        index.close()


def test_an_hnsw_snapshot_of_an_earlier_version_is_removed_and_rebuilt(
    library: Library, tmp_path: Path
) -> None:
    ids = library.put(_clustered(library.rng, 1800))
    directory = tmp_path / "index"
    directory.mkdir()
    (directory / "snapshot-1800.hnsw").write_bytes(b"hnsw graph")
    np.savez(directory / "snapshot-1800.npz", file_ids=np.arange(1800))
    (directory / "snapshot-900.hnsw").write_bytes(b"an older hnsw graph")
    np.savez(directory / "snapshot-900.npz", file_ids=np.arange(900))
    index = _open(library, tmp_path)
    try:
        assert sorted(p.name for p in directory.iterdir()) == [
            "snapshot-1800.ann",
            "snapshot-1800.npz",
        ]
        assert index.stats().snapshot_items == 1800
        library.check_near_duplicates(index, ids[:20])
    finally:
        index.close()


def test_an_annoy_snapshot_without_format_is_skipped_and_rebuilt(
    library: Library, tmp_path: Path
) -> None:
    ids = library.put(_clustered(library.rng, 1800))
    directory = tmp_path / "index"
    directory.mkdir()
    # As earlier versions wrote them: no format and no projected vectors in the .npz.
    (directory / "snapshot-1200.ann").write_bytes(b"annoy trees")
    settings = np.array('{"model_id": "test-model", "upto_seq": 1200, "trees": 8}')
    np.savez(directory / "snapshot-1200.npz", file_ids=np.arange(1200), settings=settings)
    index = _open(library, tmp_path)
    try:
        assert index.stats().snapshot_items == 1800
        assert sorted(p.name for p in directory.iterdir()) == [
            "snapshot-1800.ann",
            "snapshot-1800.npz",
        ]
        library.check_near_duplicates(index, ids[:20])
    finally:
        index.close()


def test_a_large_buffer_scores_only_rows_near_the_query_in_the_projection() -> None:
    rng = np.random.default_rng(7)
    vectors = _clustered(rng, 3000)
    projection = Projection.fit(vectors[:1000], 24)
    buffer = Buffer(DIM, projection, exact_up_to=500)
    for file_id, vector in enumerate(vectors):
        buffer.append(file_id, vector)
    for file_id in range(0, 3000, 3):
        buffer.discard(file_id)
    for file_id in [i for i in range(1, 3000, 97) if i % 3]:
        query = _copy(rng, vectors[file_id], 0.9)
        rows = buffer.rows_to_score(query, shortlist=40)
        assert len(rows) == 40
        assert file_id in buffer.file_ids[rows]
        assert buffer.live[rows].all()  # discarded rows are never offered
    # Within the shortlist, or before any projection exists, every live row is scored.
    everything = buffer.rows_to_score(vectors[1], shortlist=3000)
    assert len(everything) == 2000
    plain = Buffer(DIM, exact_up_to=10)
    for file_id, vector in enumerate(vectors[:600]):
        plain.append(file_id, vector)
    assert len(plain.rows_to_score(vectors[1], shortlist=40)) == 600


def test_small_library_is_searched_exactly_from_the_buffer(
    library: Library, tmp_path: Path
) -> None:
    index = _open(library, tmp_path)
    try:
        assert index.search(np.ones(DIM, dtype=np.float32), 5) == []
        ids = library.put(_clustered(library.rng, SETTINGS.buffer_exact))
        for file_id in ids:
            index.add(file_id, library.live[file_id])
        stats = index.stats()
        assert (stats.snapshot_items, stats.rebuilding) == (0, False)
        library.check_near_duplicates(index, ids[:30])
        with pytest.raises(ValueError, match="dimensions"):
            index.search(np.ones(DIM + 1, dtype=np.float32), 5)
        with pytest.raises(ValueError, match="zero"):
            index.add(1, np.zeros(DIM, dtype=np.float32))
    finally:
        index.close()


def test_a_library_without_a_snapshot_gets_one_once_its_buffer_is_too_large_to_scan(
    library: Library, tmp_path: Path
) -> None:
    index = _open(library, tmp_path)
    try:
        ids = library.put(_clustered(library.rng, SETTINGS.buffer_exact + 50))
        for file_id in ids[: SETTINGS.buffer_exact]:
            index.add(file_id, library.live[file_id])
        assert not index.rebuild_due()
        index.add(ids[SETTINGS.buffer_exact], library.live[ids[SETTINGS.buffer_exact]])
        assert index.rebuild_due()  # far below rebuild_buffer_size
        for file_id in ids[SETTINGS.buffer_exact + 1 :]:
            index.add(file_id, library.live[file_id])
        assert index.wait_for_rebuild(timeout=120)
        assert index.last_error is None
        # Every vector was stored before the build began, so the snapshot holds them all.
        assert index.stats().snapshot_items == len(ids)
        library.check_near_duplicates(index, ids[:10] + ids[-10:])
    finally:
        index.close()


def test_a_snapshot_of_another_model_is_not_used(library: Library, tmp_path: Path) -> None:
    library.put(_clustered(library.rng, 1600))
    _open(library, tmp_path).close()
    other = VectorIndex.open(
        library.store, tmp_path / "index", model_id="other-model", dim=DIM, settings=SETTINGS
    )
    try:
        assert other.stats().snapshot_items == 0
        assert other.stats().buffer_items == 0
    finally:
        other.close()


def _brute_force(store: Store, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` most similar files by the vectors the store holds, scanned one by one."""
    stored = store.load_vectors(MODEL)
    unit = np.asarray(query / np.linalg.norm(query), dtype=np.float32)
    sims = cosine(stored.vectors, unit)
    order = sorted(range(len(stored)), key=lambda i: (-float(sims[i]), int(stored.file_ids[i])))
    return [(int(stored.file_ids[i]), float(sims[i])) for i in order[:k]]


def test_buffer_results_are_those_of_a_brute_force_search_over_the_stored_vectors(
    library: Library, tmp_path: Path
) -> None:
    index = _open(library, tmp_path)
    try:
        # A small buffer without a snapshot: scanned in full, from the rows it holds.
        first = library.put(_clustered(library.rng, SETTINGS.buffer_exact))
        for file_id in first:
            index.add(file_id, library.live[file_id])
        queries = [_copy(library.rng, library.live[i], s) for i in first[:12] for s in (0.9, 0.99)]
        queries += list(_clustered(library.rng, 8))  # and unrelated photos
        for query in queries:
            hits = [(h.file_id, h.similarity) for h in index.search(query, 10)]
            expected = _brute_force(library.store, query, 10)
            assert [i for i, _ in hits] == [i for i, _ in expected]
            assert [s for _, s in hits] == pytest.approx([s for _, s in expected], abs=1e-6)

        # A snapshot, then a buffer too large to scan in full: shortlisted in the projection,
        # its rows' vectors read back from the store.
        index.add(first[0], library.live[first[0]])  # past buffer_exact: the first snapshot
        assert index.wait_for_rebuild(timeout=120)
        assert index.last_error is None
        recent = library.put(_clustered(library.rng, 3 * SETTINGS.buffer_exact))
        for file_id in recent:
            index.add(file_id, library.live[file_id])
        assert index.stats().buffer_items > SETTINGS.buffer_exact
        stored = library.store.load_vectors(MODEL)
        by_id = dict(zip(stored.file_ids.tolist(), stored.vectors, strict=True))
        for file_id in recent[::15]:
            for similarity in (0.9, 0.95, 0.99):
                query = _copy(library.rng, library.live[file_id], similarity)
                hits = index.search(query, 10)
                [(best_id, best_sim)] = _brute_force(library.store, query, 1)
                assert (hits[0].file_id, hits[0].similarity) == (best_id, pytest.approx(best_sim))
                for hit in hits:  # each similarity is that of the stored vector
                    own = float(cosine(by_id[hit.file_id][None, :], query)[0])
                    assert hit.similarity == pytest.approx(own, abs=1e-6)
    finally:
        index.close()
