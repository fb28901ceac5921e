"""The analysis pool: look-ahead fingerprints are used only for the bytes they were made from."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray
from skimage import data

from dupwatch.config import Config
from dupwatch.errors import NotAnImage
from dupwatch.images import read_file
from dupwatch.worker import WORKER_NICENESS, Fingerprint, WorkerSettings
from dupwatch.workerpool import (
    _AHEAD,
    _URGENT,
    AnalysisPool,
    _Schedule,
    _stop,
    _Task,
    looking_ahead,
)


def write_jpeg(path: Path, rgb: NDArray[np.uint8]) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def cosine(a: NDArray[np.float32], b: NDArray[np.float32]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnalysisPool]:
    config = Config()
    cache = tmp_path_factory.mktemp("model-cache")
    opened = AnalysisPool(WorkerSettings(config.decode, config.model, cache), size=2)
    opened.start()
    try:
        yield opened
    finally:
        opened.close()


def _children() -> set[int]:
    tasks = Path(f"/proc/{os.getpid()}/task")
    found: set[int] = set()
    for task in tasks.iterdir():
        children = (task / "children").read_text().split()
        found.update(int(pid) for pid in children)
    return found


def test_prefetched_fingerprint_is_used_for_the_same_bytes(
    pool: AnalysisPool, tmp_path: Path
) -> None:
    path = write_jpeg(tmp_path / "coffee.jpg", data.coffee())
    pool.prefetch(path)
    file = read_file(path)
    direct = pool.fingerprint(file)
    # Bytes that are not an image under the same digest can only succeed through the
    # fingerprint made ahead of time from the real bytes. A look-ahead not yet started when
    # it is asked for is dropped, so give it a moment to run.
    claimed = dataclasses.replace(file, data=b"not an image at all")
    ahead = None
    for attempt in range(1, 20):
        pool.prefetch(path)
        time.sleep(0.1 * attempt)
        try:
            ahead = pool.fingerprint(claimed)
            break
        except NotAnImage:
            continue
    assert ahead is not None, "the prefetched fingerprint was never used"
    assert cosine(ahead.vector, direct.vector) > 0.9999
    assert ahead.phash == direct.phash


def test_file_changed_after_its_prefetch_is_fingerprinted_from_its_new_bytes(
    pool: AnalysisPool, tmp_path: Path
) -> None:
    path = write_jpeg(tmp_path / "photo.jpg", data.coffee())
    pool.prefetch(path)
    stale = pool.fingerprint(read_file(path))
    pool.prefetch(path)
    write_jpeg(path, data.astronaut())
    fresh = pool.fingerprint(read_file(path))
    assert fresh.phash != stale.phash
    assert cosine(fresh.vector, stale.vector) < 0.9


def test_prefetch_of_a_vanished_file_does_not_spoil_a_later_read(
    pool: AnalysisPool, tmp_path: Path
) -> None:
    path = tmp_path / "later.jpg"
    pool.prefetch(path)  # not there yet: the look-ahead read fails
    write_jpeg(path, data.chelsea())
    fingerprint = pool.fingerprint(read_file(path))
    assert fingerprint.width == data.chelsea().shape[1]


def test_rejection_of_prefetched_bytes_is_raised_for_those_bytes(
    pool: AnalysisPool, tmp_path: Path
) -> None:
    path = tmp_path / "text.jpg"
    path.write_bytes(b"just some text, saved with a photo's name\n" * 20)
    pool.prefetch(path)
    with pytest.raises(NotAnImage):
        pool.fingerprint(read_file(path))


def test_look_ahead_never_follows_a_symbolic_link(pool: AnalysisPool, tmp_path: Path) -> None:
    # The worker reads a look-ahead file itself, under the rules the daemon reads by: a link
    # to a photo is not the photo, so no fingerprint is made ahead for it.
    photo = write_jpeg(tmp_path / "photo.jpg", data.coffee())
    link = tmp_path / "link.jpg"
    link.symlink_to(photo)
    claimed = dataclasses.replace(read_file(photo), path=link, data=b"not an image at all")
    for attempt in range(1, 6):
        pool.prefetch(link)
        time.sleep(0.1 * attempt)
        with pytest.raises(NotAnImage):
            pool.fingerprint(claimed)


def test_forgotten_prefetches_leave_nothing_behind(pool: AnalysisPool, tmp_path: Path) -> None:
    paths = [write_jpeg(tmp_path / f"{i}.jpg", data.astronaut()[i * 40 :]) for i in range(5)]
    for path in paths:
        pool.prefetch(path)
    for path in paths:
        pool.forget(path)
    # The pool still answers, first in line, after its look-ahead was thrown away.
    assert pool.fingerprint(read_file(paths[0])).width == 512


def test_looking_ahead_yields_every_path_once_in_order(pool: AnalysisPool, tmp_path: Path) -> None:
    paths = [write_jpeg(tmp_path / f"{i}.jpg", data.rocket()[:, i * 30 :]) for i in range(6)]
    seen = []
    for path in looking_ahead(paths, pool):
        seen.append(path)
        pool.fingerprint(read_file(path))
    assert seen == paths


def test_pool_runs_one_process_per_worker_and_close_ends_them(tmp_path: Path) -> None:
    config = Config()
    before = _children()
    pool = AnalysisPool(WorkerSettings(config.decode, config.model, tmp_path), size=2)
    pool.start()
    try:
        started = _children() - before
        assert len(started) == 2
        assert pool.model_id
        # The workers yield a shared core to the deciding thread: a lower priority than ours.
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        for pid in started:
            assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, ours + WORKER_NICENESS)
    finally:
        pool.close()
    assert not (_children() & started)


def test_look_ahead_work_always_leaves_a_worker_for_the_file_being_decided() -> None:
    schedule = _Schedule(ahead_limit=1)
    ahead = [_Task(_AHEAD, n, _stop, Future()) for n in range(3)]
    for task in ahead:
        schedule.put(task)
    first = schedule.take(0)
    assert first is ahead[0]
    taken: list[_Task] = []
    waiter = threading.Thread(target=lambda: taken.append(schedule.take(0)), daemon=True)
    waiter.start()
    try:
        waiter.join(timeout=0.3)
        assert not taken  # a second fingerprint of a later file must wait ...
        urgent = _Task(_URGENT, 10, _stop, Future())
        schedule.put(urgent)
        waiter.join(timeout=10)
        assert taken == [urgent]  # ... while a request for the current file runs at once
        schedule.finished(urgent)
        schedule.finished(first)
        assert schedule.take(0) is ahead[1]  # and look-ahead resumes when the first is done
    finally:
        schedule.put(_Task(2, 99, _stop, Future()))
        waiter.join(timeout=10)


def _stale(fingerprint: Fingerprint) -> Fingerprint:
    """The fingerprint as a restarted worker would see it: its pixels are gone."""
    return dataclasses.replace(
        fingerprint, pixels=dataclasses.replace(fingerprint.pixels, process=0)
    )


def test_verification_uses_the_held_pixels_or_else_decodes_the_bytes_again(
    pool: AnalysisPool, tmp_path: Path
) -> None:
    original = write_jpeg(tmp_path / "original.jpg", data.coffee())
    smaller = cv2.resize(data.coffee(), (300, 200), interpolation=cv2.INTER_AREA)
    copy = read_file(write_jpeg(tmp_path / "copy.jpg", smaller))
    other = read_file(write_jpeg(tmp_path / "other.jpg", data.astronaut()))
    for file, same in ((copy, True), (other, False)):
        fingerprint = pool.fingerprint(file)
        held = pool.verify_later(fingerprint, file, original).result(timeout=60)
        again = pool.verify_later(_stale(fingerprint), file, original).result(timeout=60)
        assert held.verification.same is same
        assert again.verification == held.verification


def test_a_turned_embedding_uses_the_held_pixels_or_else_the_bytes(
    pool: AnalysisPool, tmp_path: Path
) -> None:
    # A PNG of 512 px is decoded to exactly its pixels: the turned image is known exactly.
    path = tmp_path / "astronaut.png"
    assert cv2.imwrite(str(path), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    turned = tmp_path / "turned.png"
    turned_rgb = np.ascontiguousarray(np.rot90(data.astronaut(), 1))
    assert cv2.imwrite(str(turned), cv2.cvtColor(turned_rgb, cv2.COLOR_RGB2BGR))
    file = read_file(path)
    fingerprint = pool.fingerprint(file)
    expected = pool.fingerprint(read_file(turned)).vector
    assert cosine(pool.embed_variant(fingerprint, file, 1), expected) > 0.9999
    assert cosine(pool.embed_variant(_stale(fingerprint), file, 1), expected) > 0.9999
    assert cosine(fingerprint.vector, expected) < 0.99  # turning it does change the vector


def test_fingerprint_carries_the_glance_features_of_the_mirrored_image(
    pool: AnalysisPool, tmp_path: Path
) -> None:
    file = read_file(write_jpeg(tmp_path / "photo.jpg", data.coffee()))
    fingerprint = pool.fingerprint(file)
    assert fingerprint.glance is not None and fingerprint.mirrored_features is not None
    glance, mirrored = fingerprint.glance, fingerprint.mirrored_features
    assert len(glance.features.points) > 100
    # Corners of the picture mirrored: most lie where a corner of the picture itself lies
    # once mirrored back (the picture's width at the glance's scale).
    width = round(glance.size[1] * glance.scale)
    back = mirrored.points.copy()
    back[:, 0] = width - 1 - back[:, 0]
    gaps = np.linalg.norm(back[:, None, :] - glance.features.points[None, :, :], axis=2)
    assert float((gaps.min(axis=1) <= 1.5).mean()) > 0.7


def test_a_task_for_one_worker_waits_for_that_worker() -> None:
    # A verification goes to the worker holding the file's pixels, even when another is free.
    schedule = _Schedule(ahead_limit=2)
    pinned = _Task(_URGENT, 0, _stop, Future(), worker=1)
    anyone = _Task(_AHEAD, 1, _stop, Future())
    schedule.put(pinned)
    schedule.put(anyone)
    assert schedule.take(0) is anyone  # the urgent task is not this worker's
    schedule.finished(anyone)
    taken: list[_Task] = []
    waiter = threading.Thread(target=lambda: taken.append(schedule.take(0)), daemon=True)
    waiter.start()
    try:
        waiter.join(timeout=0.3)
        assert not taken
        assert schedule.take(1) is pinned
    finally:
        schedule.put(_Task(2, 99, _stop, Future()))
        waiter.join(timeout=10)
