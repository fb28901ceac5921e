"""Glances: copies always go on to verification, look-alikes are turned down without decoding.

Copies are made here from scikit-image's sample photos with the edits of the accuracy
benchmark; look-alikes are the two halves of one photo (the embedding puts most of them above
the candidate threshold) and different photos.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import structlog
from numpy.typing import NDArray
from skimage import data
from test_accuracy import EDITS, ORIGINALS, crop, moved_subject_frames, resize, write

from dupwatch import candidates
from dupwatch.alignment import Features, dihedral_alignments
from dupwatch.config import Config
from dupwatch.framing import photo_inside
from dupwatch.glance import (
    MAX_ASPECT_ERROR,
    SPARSE_KEYPOINTS,
    WHOLE_FRAME_CORRELATION,
    Glance,
    turned_down,
)
from dupwatch.records import Tier
from dupwatch.runtime import Services, open_services

Image = NDArray[np.uint8]


def working_size(rgb: Image) -> Image:
    """The image as the pipeline hands it on: long side at most 512 pixels."""
    h, w = rgb.shape[:2]
    scale = 512 / max(h, w)
    if scale >= 1:
        return rgb
    size = (round(w * scale), round(h * scale))
    return np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def glance(rgb: Image) -> tuple[Glance, Features]:
    image = working_size(rgb)
    return Glance.with_mirrored(image, framed=photo_inside(image) is not None)


def jpeg(rgb: Image, quality: int) -> Image:
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    assert ok
    return np.asarray(
        cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), np.uint8
    )


def brighter(rgb: Image) -> Image:
    return np.asarray(np.clip(rgb.astype(np.float32) * 1.2, 0, 255), dtype=np.uint8)


def blurred(rgb: Image) -> Image:
    return np.asarray(cv2.GaussianBlur(rgb, (0, 0), 2.0), dtype=np.uint8)


def mirrored(rgb: Image) -> Image:
    return np.ascontiguousarray(rgb[:, ::-1])


COPIES: dict[str, Callable[[Image], Image]] = {
    **{name: edit for name, (edit, _, _) in EDITS.items()},
    "jpeg_q40": lambda rgb: jpeg(rgb, 40),
    "crop_15": lambda rgb: crop(rgb, 0.15),
    "rot90": lambda rgb: np.ascontiguousarray(np.rot90(rgb)),
    "mirror": mirrored,
    "mirrored_crop": lambda rgb: mirrored(crop(rgb, 0.08)),
    "brightness": brighter,
    "blur": blurred,
}


@pytest.mark.parametrize("name", sorted(ORIGINALS))
@pytest.mark.parametrize("edit", sorted(COPIES))
def test_a_copy_is_never_turned_down_at_a_glance(name: str, edit: str) -> None:
    original, copy = ORIGINALS[name], COPIES[edit](ORIGINALS[name])
    (g_original, mirror_original), (g_copy, mirror_copy) = glance(original), glance(copy)
    # Whichever arrives first: the copy after its original, or the original after its copy.
    assert turned_down(g_copy, g_original, mirror_copy) is None
    assert turned_down(g_original, g_copy, mirror_original) is None


def halves(rgb: Image) -> tuple[Image, Image]:
    """The left and right parts of a photo, a gap between them: two views of one scene."""
    w = rgb.shape[1]
    return np.ascontiguousarray(rgb[:, : w // 2 - 8]), np.ascontiguousarray(rgb[:, w // 2 + 8 :])


def test_a_pair_that_looks_mirrored_is_not_judged_without_the_mirrored_features() -> None:
    # A mirrored crop lines up with its original only mirrored: without those features the
    # glance cannot say "different" (the pipeline then verifies the pair in full).
    original = ORIGINALS["coffee"]
    (g_original, _), (g_copy, mirror_copy) = (
        glance(original),
        glance(COPIES["mirrored_crop"](original)),
    )
    with pytest.raises(ValueError):
        turned_down(g_copy, g_original, None)
    assert turned_down(g_copy, g_original, mirror_copy) is None


@pytest.mark.parametrize("name", ["coffee", "chelsea", "rocket", "astronaut"])
def test_two_halves_of_one_photo_are_turned_down(name: str) -> None:
    left, right = halves(ORIGINALS[name])
    (g_left, _), (g_right, mirror_right) = glance(left), glance(right)
    verdict = turned_down(g_right, g_left, mirror_right)
    assert verdict is not None
    assert (verdict.same, verdict.reason) == (False, "different_at_a_glance")
    assert verdict.explain().startswith("not the same photo (different_at_a_glance): the whole")


def test_different_photos_are_turned_down() -> None:
    glances = {name: glance(rgb) for name, rgb in ORIGINALS.items()}
    for new, (g_new, mirror_new) in glances.items():
        for known, (g_known, _) in glances.items():
            if new != known:
                assert turned_down(g_new, g_known, mirror_new) is not None, (new, known)


def lit(grey: NDArray[np.floating[Any]], base: float = 30, glow: float = 180) -> Image:
    """``grey`` (centred on 0) over one glow: photos of one kind share such a layout (a star
    field round its galaxy, a seascape's bright horizon)."""
    h, w = grey.shape
    y, x = np.mgrid[0:h, 0:w]
    shape = np.exp(-(((x - w / 2) / (w / 3)) ** 2 + ((y - h / 2) / (h / 3)) ** 2))
    level = np.clip(base + glow * shape + grey, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.dstack([level] * 3))


def layouts_alike(a: Glance, b: Glance) -> bool:
    thumb_a, thumb_b = (g.thumb.astype(np.float32) for g in (a, b))
    found = dihedral_alignments(
        thumb_a,
        a.size,
        thumb_b,
        b.size,
        max_aspect_error=MAX_ASPECT_ERROR,
        min_correlation=WHOLE_FRAME_CORRELATION,
    )
    return bool(found)


@pytest.mark.parametrize("texture", ["grass", "brick"])
def test_photos_of_one_kind_are_turned_down(texture: str) -> None:
    # Two parts of one texture photo under the same glow: alike in layout, not in detail.
    grey = getattr(data, texture)().astype(np.float32)
    h, w = grey.shape
    grey = 0.5 * (grey - grey.mean())
    first, second = lit(grey[: h // 2, : w // 2]), lit(grey[h // 2 :, w // 2 :])
    (g_first, _), (g_second, mirror_second) = glance(first), glance(second)
    assert layouts_alike(g_second, g_first)
    assert turned_down(g_second, g_first, mirror_second) is not None
    # ...while a copy of one, at a quarter of its size, keeps its detail and is verified.
    g_copy, mirror_copy = glance(resize(first, 0.25))
    assert turned_down(g_copy, g_first, mirror_copy) is None


def test_a_copy_of_a_plain_picture_is_left_to_verification() -> None:
    # A clear sky: what detail its thumbnail has is noise that re-encoding replaces, so
    # its layout alone must send a copy on.
    rng = np.random.default_rng(5)
    sky = lit(rng.normal(0.0, 1.0, (384, 512)), base=110, glow=20)
    copy = jpeg(sky, 40)
    (g_sky, _), (g_copy, mirror_copy) = glance(sky), glance(copy)
    assert turned_down(g_copy, g_sky, mirror_copy) is None


def test_a_burst_neighbour_is_left_to_verification() -> None:
    # The frames line up everywhere; only their pixels can tell them apart.
    first, second = moved_subject_frames(data.coffee(), resize(data.chelsea(), 0.4), shift=60)
    (g_first, _), (g_second, mirror_second) = glance(first), glance(second)
    assert turned_down(g_second, g_first, mirror_second) is None


def test_a_photo_in_a_frame_is_left_to_verification() -> None:
    screenshot = EDITS["screenshot"][0](ORIGINALS["rocket"])
    g_shot, mirror_shot = glance(screenshot)
    assert g_shot.framed
    g_other, _ = glance(ORIGINALS["chelsea"])
    assert turned_down(g_shot, g_other, mirror_shot) is None


def test_stored_form_round_trips_and_a_foreign_one_is_refused() -> None:
    made, _ = glance(ORIGINALS["astronaut"])
    back = Glance.decode(made.encode())
    assert back is not None
    assert (back.size, back.box, back.framed) == (made.size, made.box, made.framed)
    assert back.scale == pytest.approx(made.scale, abs=1e-3)
    np.testing.assert_array_equal(back.thumb, made.thumb)
    np.testing.assert_array_equal(back.features.descriptors, made.features.descriptors)
    np.testing.assert_allclose(back.features.points, made.features.points, atol=1 / 128)
    blob = made.encode()
    assert Glance.decode(blob[:-1]) is None  # truncated
    assert Glance.decode(bytes([blob[0] + 1]) + blob[1:]) is None  # another format version
    assert Glance.decode(b"") is None


def test_a_soft_picture_gets_its_features_at_working_size() -> None:
    detailed, _ = glance(ORIGINALS["astronaut"])
    assert detailed.scale == pytest.approx(0.5)
    # A blurred window enlarged 4x (a zoomed-in, out-of-focus crop): no corners at 256 pixels.
    window = cv2.GaussianBlur(ORIGINALS["coffee"][100:196, 200:328], (0, 0), 3.0)
    soft = np.asarray(cv2.resize(window, (512, 384), interpolation=cv2.INTER_CUBIC), np.uint8)
    made = Glance.of(soft, framed=False)
    sparse_at_glance_size = Glance.of(working_size_at(soft, 256), framed=False)
    assert len(sparse_at_glance_size.features.points) < SPARSE_KEYPOINTS
    assert made.scale == 1.0


def working_size_at(rgb: Image, side: int) -> Image:
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    size = (round(w * scale), round(h * scale))
    return np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


# --- in the pipeline ---------------------------------------------------------------------


@pytest.fixture
def scanned(tmp_path: Path) -> Iterator[tuple[Services, Path]]:
    root = tmp_path / "photos"
    (tmp_path / "state").mkdir()
    services = open_services(Config(), tmp_path / "state", [root])
    try:
        yield services, root
    finally:
        services.close()


def test_every_file_keeps_its_glance(scanned: tuple[Services, Path]) -> None:
    services, root = scanned
    original = write(root / "coffee.jpg", ORIGINALS["coffee"])
    twin = root / "twin.jpg"
    shutil.copy2(original, twin)
    for path in (original, twin):
        assert services.pipeline.process(path) is not None
    stored = {p.name: services.store.file_by_path(p) for p in (original, twin)}
    blobs = {name: services.store.glance(record.id) for name, record in stored.items() if record}
    assert len(blobs) == 2 and all(blobs.values())
    assert blobs["twin.jpg"] == blobs["coffee.jpg"]  # a byte copy shares its twin's


def test_a_look_alike_is_turned_down_without_its_known_file(
    scanned: tuple[Services, Path], tmp_path: Path
) -> None:
    services, root = scanned
    left, right = halves(ORIGINALS["rocket"])
    known = write(root / "left.jpg", left)
    assert services.pipeline.process(known) is not None
    # Moved away behind the pipeline's back: only its glance can answer for it now.
    shutil.move(known, tmp_path / "elsewhere.jpg")
    new = write(root / "right.jpg", right)
    with candidate_events() as events:
        result = services.pipeline.process(new)
    assert result is not None and result.tier in (Tier.UNIQUE, Tier.SIMILAR)
    examined = [e for e in events if e["candidate"] == root / "left.jpg"]
    assert [e["reason"] for e in examined] == ["different_at_a_glance"], events


@contextmanager
def candidate_events() -> Iterator[list[dict[str, Any]]]:
    """The ``candidate_examined`` debug events logged meanwhile."""
    saved = structlog.get_config()
    events: list[dict[str, Any]] = []

    def keep(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        if event.get("event") == "candidate_examined":
            events.append(dict(event))
        raise structlog.DropEvent

    structlog.configure(
        processors=[keep], wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG)
    )
    try:
        yield events
    finally:
        structlog.configure(**saved)


def test_a_file_indexed_without_a_glance_gets_one_when_verified(
    scanned: tuple[Services, Path],
) -> None:
    services, root = scanned
    original = write(root / "chelsea.jpg", ORIGINALS["chelsea"])
    assert services.pipeline.process(original) is not None
    record = services.store.file_by_path(original)
    assert record is not None
    services.store.drop_glance(record.id)  # as in a library indexed by an older version
    copy = write(root / "copies" / "chelsea-small.jpg", resize(ORIGINALS["chelsea"], 0.5), 80)
    result = services.pipeline.process(copy)
    assert result is not None and result.tier is Tier.DUPLICATE
    blob = services.store.glance(record.id)
    assert blob is not None and Glance.decode(blob) is not None


def test_glances_cost_nothing_to_decisions(tmp_path: Path) -> None:
    """The same files get the same tiers with glances as with every pair verified in full."""
    root = tmp_path / "photos"
    files = [write(root / f"{n}.jpg", rgb) for n, rgb in ORIGINALS.items()]
    for name, rgb in ORIGINALS.items():
        left, right = halves(rgb)
        files += [write(root / f"{name}-left.jpg", left), write(root / f"{name}-right.jpg", right)]
        files.append(write(root / f"{name}-crop.jpg", crop(rgb, 0.1), 85))
    tiers: dict[bool, dict[str, Tier]] = {}
    for use_glances in (True, False):
        state = tmp_path / f"state-{use_glances}"
        state.mkdir()
        services = open_services(Config(), state, [root], dry_run=True)
        if not use_glances:
            services.store.glance = lambda file_id: None  # type: ignore[method-assign]
        try:
            tiers[use_glances] = {}
            for path in files:
                result = services.pipeline.process(path)
                assert result is not None
                tiers[use_glances][path.stem] = result.tier
        finally:
            services.close()
    assert tiers[True] == tiers[False]
    assert all(tiers[True][f"{n}-crop"] is Tier.DUPLICATE for n in ORIGINALS), tiers[True]


def test_a_glance_that_cannot_be_compared_sends_the_pair_to_full_verification(
    scanned: tuple[Services, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    services, root = scanned
    original = write(root / "coffee.jpg", ORIGINALS["coffee"])
    assert services.pipeline.process(original) is not None

    def broken(*_: object) -> None:
        raise cv2.error("injected")

    monkeypatch.setattr(candidates, "turned_down", broken)
    copy = write(root / "copies" / "coffee-small.jpg", resize(ORIGINALS["coffee"], 0.5), 80)
    with candidate_events() as events:
        result = services.pipeline.process(copy)
    assert result is not None and result.tier is Tier.DUPLICATE
    assert [e["reason"] for e in events if e["candidate"] == original] == ["whole_frame_match"]
