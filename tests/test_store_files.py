"""Store: files, perceptual hashes, vectors (float16 encoding) and decisions."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dupwatch.errors import StoreError
from dupwatch.records import Action, FileStatus, JournalState, StatKey, Tier
from dupwatch.store import Store
from dupwatch.store.records import decode_vector, encode_vector, from_i64, to_i64

MODEL = "efficientnet-lite0:test"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "db.sqlite")
    try:
        yield s
    finally:
        s.close()


def _stat(n: int) -> StatKey:
    return StatKey(size=1000 + n, mtime_ns=10**18 + n, ctime_ns=10**18 + 2 * n, dev=2049, inode=n)


def _unit(rng: np.random.Generator, dim: int = 64) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def test_file_row_round_trips_every_field(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    stat = StatKey(
        size=123, mtime_ns=1_700_000_000_123_456_789, ctime_ns=5, dev=2**63 + 9, inode=2**64 - 3
    )
    with Store.open(path) as store:
        first = store.upsert_file(
            Path("/photos/a.jpg"),
            stat,
            sha256="ab" * 32,
            phash=2**64 - 1,
            width=4032,
            height=3024,
            format="jpeg",
        )
    with Store.open(path) as store:
        again = store.file(first.id)
        assert again == first
        assert store.file_by_path(Path("/photos/a.jpg")) == first
    assert again is not None
    assert again.stat == stat
    assert again.phash == 2**64 - 1
    assert (again.width, again.height, again.format) == (4032, 3024, "jpeg")
    assert again.status == FileStatus.INDEXED
    assert again.first_seen <= again.last_seen


def test_upsert_replaces_contents_but_keeps_identity_and_first_seen(store: Store) -> None:
    first = store.upsert_file(Path("/p/a.jpg"), _stat(1), sha256="11")
    second = store.upsert_file(
        Path("/p/a.jpg"), _stat(2), status=FileStatus.FAILED, failure_reason="truncated"
    )
    assert second.id == first.id
    assert second.first_seen == first.first_seen
    assert second.stat == _stat(2)
    assert second.sha256 is None
    assert (second.status, second.failure_reason) == (FileStatus.FAILED, "truncated")


def test_non_utf8_and_nfc_nfd_names_are_distinct_files_and_round_trip(store: Store) -> None:
    names = [
        os.fsdecode(b"/p/caf\xe9.jpg"),  # Latin-1 byte: not valid UTF-8
        "/p/caf\u00e9.jpg",  # NFC
        "/p/cafe\u0301.jpg",  # NFD: looks the same, different bytes
        "/p/line\nbreak.jpg",
    ]
    ids = [store.upsert_file(Path(n), _stat(i)).id for i, n in enumerate(names)]
    assert len(set(ids)) == len(names)
    for file_id, name in zip(ids, names, strict=True):
        record = store.file(file_id)
        assert record is not None
        assert os.fsencode(record.path) == os.fsencode(name)
        assert store.file_by_path(Path(name)) == record


def test_files_under_lists_only_that_tree_across_pages(store: Store) -> None:
    inside = [Path(f"/lib/photos/{i:04d}.jpg") for i in range(1203)]
    for i, p in enumerate(inside):
        store.upsert_file(p, _stat(i))
    for i, p in enumerate(
        [Path("/lib/photos2/x.jpg"), Path("/lib/photo.jpg"), Path("/lib/photos")]
    ):
        store.upsert_file(p, _stat(5000 + i))
    store.set_file_status(store.file_by_path(inside[5]).id, FileStatus.GONE)  # type: ignore[union-attr]
    got = [r.path for r in store.files_under(Path("/lib/photos"))]
    assert got == inside
    indexed = list(store.files_under(Path("/lib/photos/"), {FileStatus.INDEXED}))
    assert len(indexed) == len(inside) - 1
    assert len(list(store.files_under(Path("/")))) == len(inside) + 3


def test_records_by_id_in_one_call_skip_ids_that_do_not_exist(store: Store) -> None:
    ids = [store.upsert_file(Path(f"/p/{i}.jpg"), _stat(i)).id for i in range(1500)]
    wanted = [*ids[::-1], 10**9]  # across SQLite's page of parameters, and one unknown id
    found = store.files(wanted)
    assert set(found) == set(ids)
    assert all(found[i] == store.file(i) for i in ids[:5] + ids[-5:])


def test_exact_matches_are_found_by_sha256_and_status(store: Store) -> None:
    a = store.upsert_file(Path("/p/a.jpg"), _stat(1), sha256="aa")
    b = store.upsert_file(Path("/p/b.jpg"), _stat(2), sha256="aa")
    store.upsert_file(Path("/p/c.jpg"), _stat(3), sha256="cc")
    store.set_file_status(b.id, FileStatus.QUARANTINED)
    assert [r.id for r in store.files_by_sha256("aa")] == [a.id]
    both = store.files_by_sha256("aa", {FileStatus.INDEXED, FileStatus.QUARANTINED})
    assert [r.id for r in both] == [a.id, b.id]
    assert store.files_by_sha256("zz") == []


def test_phashes_come_back_as_unsigned_64_bit(store: Store) -> None:
    hashes = [0, 1, 2**63, 2**64 - 1, 0x8F3A_0000_1234_FFFF]
    ids = [
        store.upsert_file(Path(f"/p/{i}.jpg"), _stat(i), phash=h).id for i, h in enumerate(hashes)
    ]
    store.upsert_file(Path("/p/nohash.jpg"), _stat(99))
    store.set_file_status(ids[0], FileStatus.GONE)
    got_ids, got_hashes = store.phashes()
    assert got_hashes.dtype == np.uint64
    assert dict(zip(got_ids.tolist(), got_hashes.tolist(), strict=True)) == dict(
        zip(ids[1:], hashes[1:], strict=True)
    )


def test_move_file_keeps_the_row_and_refuses_a_taken_path(store: Store) -> None:
    a = store.upsert_file(Path("/p/a.jpg"), _stat(1), sha256="aa")
    store.upsert_file(Path("/p/b.jpg"), _stat(2))
    moved = store.move_file(a.id, Path("/p/sub/a.jpg"), _stat(1))
    assert (moved.id, moved.path, moved.sha256) == (a.id, Path("/p/sub/a.jpg"), "aa")
    assert store.file_by_path(Path("/p/a.jpg")) is None
    with pytest.raises(StoreError, match="already recorded"):
        store.move_file(a.id, Path("/p/b.jpg"), _stat(1))
    with pytest.raises(StoreError):
        store.set_file_status(9999, FileStatus.GONE)


def test_mark_seen_and_counts(store: Store) -> None:
    ids = [store.upsert_file(Path(f"/p/{i}"), _stat(i)).id for i in range(3)]
    store.set_file_status(ids[2], FileStatus.FAILED, "corrupt")
    store.mark_seen(ids[:2], when=2e9)
    assert store.file(ids[0]).last_seen == 2e9  # type: ignore[union-attr]
    counts = store.file_counts()
    assert counts[FileStatus.INDEXED] == 2
    assert counts[FileStatus.FAILED] == 1
    assert counts[FileStatus.GONE] == 0


def test_decisions_keep_their_evidence(store: Store) -> None:
    a = store.upsert_file(Path("/p/a.jpg"), _stat(1))
    b = store.upsert_file(Path("/p/b.jpg"), _stat(2))
    d = store.record_decision(
        b.id,
        tier=Tier.DUPLICATE,
        action=Action.QUARANTINE,
        rule="near_duplicate",
        neighbour_id=a.id,
        similarity=0.973,
        verification={"inliers": 212, "ok": True},
    )
    assert store.decisions_for(b.id) == [d]
    assert store.decisions_for(a.id) == [d]  # found as the neighbour too
    assert store.recent_decisions(1) == [d]
    assert d.verification == '{"inliers": 212, "ok": true}'
    assert (d.tier, d.action, d.neighbour_id) == (Tier.DUPLICATE, Action.QUARANTINE, a.id)


# --- vectors ----------------------------------------------------------------------------------


def test_vectors_replace_with_a_newer_seq_and_follow_file_status(store: Store) -> None:
    rng = np.random.default_rng(1)
    ids = [store.upsert_file(Path(f"/p/{i}"), _stat(i)).id for i in range(5)]
    vectors = {i: _unit(rng) for i in ids}
    seqs = {i: store.put_vector(i, MODEL, vectors[i]) for i in ids}
    assert store.max_vector_seq(MODEL) == max(seqs.values())
    vectors[ids[0]] = _unit(rng)
    new_seq = store.put_vector(ids[0], MODEL, vectors[ids[0]])
    assert new_seq > max(seqs.values())
    store.set_file_status(ids[1], FileStatus.QUARANTINED)

    batch = store.load_vectors(MODEL)
    assert batch.file_ids.tolist() == [ids[2], ids[3], ids[4], ids[0]]  # seq order
    assert batch.vectors.dtype == np.float32
    for file_id, row in zip(batch.file_ids.tolist(), batch.vectors, strict=True):
        np.testing.assert_allclose(row, vectors[file_id], atol=1e-3)
    newer = store.load_vectors(MODEL, after_seq=max(seqs.values()))
    assert newer.file_ids.tolist() == [ids[0]]
    assert store.vector_count(MODEL) == 4
    assert store.vector_count(MODEL, indexed_only=False) == 5
    assert store.indexed_file_ids(MODEL).tolist() == sorted([ids[0], ids[2], ids[3], ids[4]])
    assert store.vector(ids[1], "other-model") is None
    assert len(store.load_vectors("other-model")) == 0


def test_iter_vectors_pages_through_everything_in_seq_order(store: Store) -> None:
    rng = np.random.default_rng(2)
    for i in range(53):
        file_id = store.upsert_file(Path(f"/p/{i}"), _stat(i)).id
        store.put_vector(file_id, MODEL, _unit(rng, 16))
    batches = list(store.iter_vectors(MODEL, batch_size=10))
    assert [len(b) for b in batches] == [10, 10, 10, 10, 10, 3]
    seqs = np.concatenate([b.seqs for b in batches])
    assert np.all(np.diff(seqs) > 0)
    whole = store.load_vectors(MODEL)
    np.testing.assert_array_equal(np.concatenate([b.vectors for b in batches]), whole.vectors)
    upto = list(store.iter_vectors(MODEL, after_seq=int(seqs[4]), upto_seq=int(seqs[20])))
    assert np.concatenate([b.seqs for b in upto]).tolist() == seqs[5:21].tolist()


def test_vectors_for_returns_the_asked_order_and_skips_missing(store: Store) -> None:
    rng = np.random.default_rng(3)
    ids = [store.upsert_file(Path(f"/p/{i}"), _stat(i)).id for i in range(700)]
    for i in ids:
        store.put_vector(i, MODEL, _unit(rng, 8))
    ask = [ids[650], 10**9, ids[3], ids[650], *ids[100:600]]
    batch = store.vectors_for(ask, MODEL)
    assert batch.file_ids.tolist() == [ids[650], ids[3], *ids[100:600]]
    np.testing.assert_allclose(batch.vectors[1], store.vector(ids[3], MODEL))  # type: ignore[arg-type]


def test_deleting_a_file_row_removes_its_vectors(store: Store) -> None:
    file_id = store.upsert_file(Path("/p/a"), _stat(1)).id
    store.put_vector(file_id, MODEL, _unit(np.random.default_rng(0)))
    with store._write() as conn:
        conn.execute("DELETE FROM files WHERE id = ?", (file_id,))
    assert store.vector(file_id, MODEL) is None
    assert store.integrity_problems() == []


@settings(max_examples=200, deadline=None)
@given(
    arrays(
        np.float32,
        st.integers(1, 1280),
        elements=st.floats(-1, 1, width=32, allow_nan=False, allow_subnormal=False),
    )
)
def test_vector_encoding_round_trip_keeps_cosine_within_1e_3(raw: np.ndarray) -> None:
    norm = float(np.linalg.norm(raw))
    if norm < 1e-3:
        return
    vector = raw / norm
    back = decode_vector(encode_vector(vector))
    assert back.shape == vector.shape
    assert back.dtype == np.float32
    cosine = float(back @ vector) / float(np.linalg.norm(back))
    assert cosine > 1 - 1e-3
    assert decode_vector(encode_vector(back)).tobytes() == back.tobytes()  # stable


def test_float16_similarity_error_stays_below_1e_3_for_embedding_sized_pairs() -> None:
    rng = np.random.default_rng(7)
    worst = 0.0
    for target in (0.5, 0.9, 0.95, 0.99, 0.999):
        for _ in range(200):
            a = _unit(rng, 1280)
            noise = _unit(rng, 1280)
            noise -= (noise @ a) * a
            noise /= np.linalg.norm(noise)
            b = target * a + np.sqrt(1 - target**2) * noise
            exact = float(a @ b)
            a16, b16 = decode_vector(encode_vector(a)), decode_vector(encode_vector(b))
            worst = max(worst, abs(float(a16 @ b16) - exact))
    assert worst < 1e-3


def test_encoding_refuses_vectors_float16_cannot_hold() -> None:
    for bad in (np.array([np.nan, 1.0]), np.array([np.inf]), np.array([1e6]), np.zeros((2, 2))):
        with pytest.raises(ValueError):
            encode_vector(bad)


def test_unsigned_64_bit_values_map_through_signed_storage() -> None:
    for value in (0, 1, 2**63 - 1, 2**63, 2**64 - 1):
        assert from_i64(to_i64(value)) == value
        assert -(2**63) <= to_i64(value) < 2**63
    with pytest.raises(ValueError):
        to_i64(2**64)


def test_a_batch_commits_together_and_a_failed_call_inside_undoes_only_itself(
    store: Store,
) -> None:
    with store.batch():
        a = store.upsert_file(Path("/p/a"), _stat(1))
        with pytest.raises(ValueError):
            store.put_vector(a.id, MODEL, np.array([np.nan]))
        with pytest.raises(StoreError):
            store.journal_set_state(12345, JournalState.DONE)
        store.put_vector(a.id, MODEL, _unit(np.random.default_rng(0)))
    assert store.vector(a.id, MODEL) is not None
    with pytest.raises(RuntimeError), store.batch():
        store.upsert_file(Path("/p/b"), _stat(2))
        raise RuntimeError("abandon the batch")
    assert store.file_by_path(Path("/p/b")) is None
