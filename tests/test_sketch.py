"""Screening with a sketch turns look-alikes down as verification would, and never a copy.

A sketch lets a verification go without decoding the known file; that may only change how
much work a verdict costs, never the verdict. Cases run on several real photographs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray
from test_verify import COPIES, PHOTOS, crop, jpeg, photo_at_1000px, working

from dupwatch.config import Config
from dupwatch.errors import FileRejected
from dupwatch.sketch import Sketch, SketchCache
from dupwatch.verify import VerifyThresholds, screen, verify
from dupwatch.worker import WorkerSettings
from dupwatch.workerpool import AnalysisPool

Image = NDArray[np.uint8]
COUNT = VerifyThresholds().orb_features


@pytest.fixture(scope="module")
def photos() -> dict[str, Image]:
    return {name: photo_at_1000px(name) for name in PHOTOS}


def sketch(image: Image) -> Sketch:
    return Sketch.of(image, orb_count=COUNT)


def look_alikes(photos: dict[str, Image]) -> Iterator[tuple[str, Image, Image]]:
    """Pairs verification turns down: other framings of one scene, side by side parts of one
    photo, different photos."""
    names = list(photos)
    for i, name in enumerate(names):
        photo = photos[name]
        h, w = photo.shape[:2]
        cw, ch = round(w * 0.6), round(h * 0.6)
        for offset in (0.2, 0.35):
            dx = round(cw * offset)
            yield f"{name}/shifted {offset}", photo[:ch, :cw], jpeg(photo[:ch, dx : dx + cw], 90)
        half = w // 2
        yield f"{name}/halves", photo[:, : half - 20], jpeg(photo[:, half + 20 :], 90)
        other = names[(i + 1) % len(names)]
        yield f"{name}/{other}", photo, photos[other]


def test_screening_never_settles_a_copy(photos: dict[str, Image]) -> None:
    for transform, make in sorted(COPIES.items()):
        for name, original in photos.items():
            copy, kept = working(make(original)), working(original)
            for a, b in ((copy, kept), (kept, copy)):
                found = screen(a, sketch(b))
                assert found is None, f"{transform}/{name}: {found and found.explain()}"


def test_screening_gives_the_verdict_verification_gives(photos: dict[str, Image]) -> None:
    settled = 0
    pairs = list(look_alikes(photos))
    for label, first, second in pairs:
        a, b = working(first), working(second)
        found = screen(a, sketch(b))
        if found is not None:
            settled += 1
            assert found == verify(a, b), label
            assert not found.same
    # Most look-alikes are settled without the known file's pixels: what the sketch is for.
    assert settled >= len(pairs) // 2, f"{settled} of {len(pairs)} settled"


def test_the_sketch_cache_keeps_the_most_recently_used() -> None:
    photo = working(crop(np.full((600, 800, 3), 90, np.uint8), 0.1))
    one = sketch(photo)
    cache = SketchCache(capacity=2)
    cache.put("a", one)
    cache.put("b", one)
    assert cache.get("a") is one  # "a" is now the most recent
    cache.put("c", one)
    assert "b" not in cache and "a" in cache and "c" in cache
    assert len(cache) == 2
    cache.put(None, one)
    assert cache.get(None) is None and len(cache) == 2


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnalysisPool]:
    config = Config()
    cache = tmp_path_factory.mktemp("model-cache")
    opened = AnalysisPool(WorkerSettings(config.decode, config.model, cache), size=1)
    opened.start()
    try:
        yield opened
    finally:
        opened.close()


def write_jpeg(path: Path, rgb: Image) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def test_a_look_alike_sketched_once_is_turned_down_without_reading_it_again(
    pool: AnalysisPool, photos: dict[str, Image], tmp_path: Path
) -> None:
    photo = photos["astronaut"]  # its two halves have nothing in common
    w = photo.shape[1]
    left = working(photo[:, : w // 2 - 20])
    known = write_jpeg(tmp_path / "right.jpg", photo[:, w // 2 + 20 :])

    first = pool.verify_later(left, known, framed=False, sketch_new=True).result(timeout=60)
    assert not first.verification.same
    assert first.known_sketch is not None and first.new_sketch is not None
    assert first.new_sketch.size == left.shape[:2]

    known.unlink()  # from now on only the sketch can answer
    again = pool.verify_later(left, known, framed=False, sketch=first.known_sketch)
    result = again.result(timeout=60)
    assert result.verification == first.verification
    assert result.known_sketch is None and result.meta is None
    # Without a sketch the known file must be read, and it is gone.
    with pytest.raises(FileRejected):
        pool.verify_later(left, known, framed=False).result(timeout=60)


def test_a_copy_is_confirmed_from_its_pixels_even_with_a_sketch(
    pool: AnalysisPool, photos: dict[str, Image], tmp_path: Path
) -> None:
    original = photos["coffee"]
    known = write_jpeg(tmp_path / "original.jpg", original)
    copy = working(crop(original, 0.05))
    result = pool.verify_later(copy, known, framed=False, sketch=sketch(working(original)))
    verified = result.result(timeout=60)
    assert verified.verification.same, verified.verification.explain()
    assert verified.meta is not None
    assert dataclasses.asdict(verified.verification)["reason"] == "aligned_match"
