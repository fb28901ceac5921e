"""The buffer of recent vectors: what it holds per row, measured, and what it gives back."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np

from dupwatch.buffer import Buffer
from dupwatch.snapshot import Projection
from dupwatch.store.records import decode_vector, encode_vector

DIM = 1280  # the model's, so a row's size is a real one
PROJECTED = 64


def _unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    scales = 1.0 / np.sqrt(np.arange(1, DIM + 1))
    rows = rng.standard_normal((n, DIM)) * scales
    return np.asarray(rows / np.linalg.norm(rows, axis=1, keepdims=True), dtype=np.float32)


def test_a_large_projected_buffer_holds_no_full_vectors() -> None:
    rng = np.random.default_rng(3)
    vectors = _unit_rows(rng, 3000)
    projection = Projection.fit(vectors[:1000], PROJECTED)
    buffer = Buffer(DIM, projection, exact_up_to=500)
    tracemalloc.start()
    try:
        for file_id, vector in enumerate(vectors):
            buffer.append(file_id, vector)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A full vector is 2,560 bytes even as the store keeps it (float16); a row of ids and a
    # projection is a few hundred, with the arrays' spare capacity and the id lookup.
    assert held / len(vectors) < 1024
    assert buffer.held() is None


def test_a_buffer_scanned_in_full_gives_back_the_stored_vectors() -> None:
    rng = np.random.default_rng(4)
    vectors = _unit_rows(rng, 300)
    for projection in (None, Projection.fit(vectors, PROJECTED)):
        buffer = Buffer(DIM, projection, exact_up_to=300)
        for file_id, vector in enumerate(vectors):
            buffer.append(file_id + 1, vector)
        buffer.discard(5)
        rows = buffer.rows_to_score(vectors[0], shortlist=10)
        assert len(rows) == 299
        full = buffer.held()
        assert full is not None
        stored = np.stack([decode_vector(encode_vector(v)) for v in vectors])
        assert np.array_equal(full[rows], stored[buffer.file_ids[rows] - 1])


def test_refilling_keeps_the_rows_given_and_the_age_of_the_oldest() -> None:
    rng = np.random.default_rng(5)
    vectors = _unit_rows(rng, 40)
    buffer = Buffer(DIM, exact_up_to=16)
    for file_id, vector in enumerate(vectors):
        buffer.append(file_id, vector)
    buffer.discard(25)
    buffer.append(3, vectors[3])  # replaced: its new row is past the start
    ids = buffer.live_ids(20)
    assert ids.tolist() == [*range(20, 25), *range(26, 40), 3]
    projection = Projection.fit(vectors, PROJECTED)
    rest = buffer.refilled(projection, ids, vectors[ids])
    assert len(rest) == len(ids)
    assert rest.oldest == buffer.oldest
    assert rest.exact_up_to == 16
    assert rest.held() is None  # past exact_up_to
    assert Buffer(DIM).refilled(projection, ids[:0], vectors[:0]).oldest is None


def _resident_anonymous_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def test_full_rows_dropped_past_exact_up_to_go_back_to_the_system() -> None:
    rng = np.random.default_rng(6)
    vectors = _unit_rows(rng, 1025)
    projection = Projection.fit(vectors[:300], PROJECTED)
    # Free a mapped block larger than the full rows, as a rebuild's swap does: glibc then
    # serves blocks of that size from its heap, where freed memory stays resident.
    big = np.ones(4 << 20, dtype=np.float32)
    del big
    buffer = Buffer(DIM, projection, exact_up_to=1024)
    for file_id, vector in enumerate(vectors[:1024]):
        buffer.append(file_id, vector)
    holding = _resident_anonymous_mib()
    buffer.append(1024, vectors[1024])  # past exact_up_to: the full rows are let go
    assert buffer.full is None
    assert holding - _resident_anonymous_mib() > 4.0  # of the 5 MiB the full rows took
