"""Accuracy on a small real-photo set: altered copies are duplicates, moved subjects are not.

The set is made here from scikit-image's sample photos with the same kinds of edits the
accuracy benchmark (bench/accuracy/) applies, and scanned through the real pipeline and model
in dry-run mode, in the order a scan meets them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray
from skimage import data

from dupwatch.config import Config
from dupwatch.records import Tier
from dupwatch.runtime import Services, open_services

Image = NDArray[np.uint8]

ORIGINALS: dict[str, Image] = {
    "astronaut": data.astronaut(),
    "coffee": data.coffee(),
    "chelsea": data.chelsea(),
    "rocket": data.rocket(),
}


def write(path: Path, rgb: Image, quality: int = 92) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix == ".jpg" else []
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    return path


def resize(rgb: Image, factor: float) -> Image:
    h, w = rgb.shape[:2]
    size = (round(w * factor), round(h * factor))
    return np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def crop(rgb: Image, fraction: float) -> Image:
    h, w = rgb.shape[:2]
    dy, dx = round(h * fraction), round(w * fraction)
    return np.ascontiguousarray(rgb[dy : h - dy, dx : w - dx])


def caption(rgb: Image) -> Image:
    """A white bar with black text under the photo, as meme and sharing apps add."""
    h, w = rgb.shape[:2]
    bar = np.full((h // 8, w, 3), 255, np.uint8)
    cv2.putText(bar, "holiday 2024!", (w // 20, h // 12), cv2.FONT_HERSHEY_SIMPLEX,
                w / 600, (0, 0, 0), 2, cv2.LINE_AA)  # fmt: skip
    return np.vstack([rgb, bar])


def grayscale(rgb: Image) -> Image:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return np.repeat(grey[..., None], 3, axis=2)


def letterbox(rgb: Image) -> Image:
    """Black bars to 16:9, as a video editor or a TV export adds."""
    h, w = rgb.shape[:2]
    width = max(w, round(h * 16 / 9))
    canvas = np.zeros((h, width, 3), np.uint8)
    canvas[:, (width - w) // 2 : (width - w) // 2 + w] = rgb
    return canvas


def screenshot(rgb: Image) -> Image:
    """The photo in a phone gallery: dark screen, status text, the photo, a row of buttons."""
    w, h = 720, 1560
    screen = np.full((h, w, 3), 18, np.uint8)
    cv2.putText(screen, "9:41", (30, 50), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (230, 230, 230), 2)
    cv2.putText(screen, "< IMG_2048", (30, 150), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (230, 230, 230), 2)
    photo = resize(rgb, w / rgb.shape[1])
    top = (h - photo.shape[0]) // 2
    screen[top : top + photo.shape[0]] = photo
    for k in range(4):
        cv2.circle(screen, (90 + k * 180, h - 110), 26, (230, 230, 230), 3, cv2.LINE_AA)
    return screen


EDITS: dict[str, tuple[Callable[[Image], Image], str, int]] = {
    # name: (edit, file suffix, JPEG quality)
    "reencoded": (lambda rgb: rgb, ".jpg", 60),
    "resized": (lambda rgb: resize(rgb, 0.5), ".jpg", 85),
    "cropped": (lambda rgb: crop(rgb, 0.05), ".jpg", 90),
    "captioned": (caption, ".png", 0),
    "grayscale": (grayscale, ".jpg", 90),
    "letterboxed": (letterbox, ".jpg", 90),
    "screenshot": (screenshot, ".png", 0),
}


def moved_subject_frames(scene: Image, subject: Image, shift: int) -> tuple[Image, Image]:
    """Two frames of one scene: the same subject in front of it, ``shift`` pixels apart."""
    frames = []
    sh, sw = subject.shape[:2]
    for x in (40, 40 + shift):
        frame = scene.copy()
        frame[200 : 200 + sh, x : x + sw] = subject
        frames.append(frame)
    return frames[0], frames[1]


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Tier]]:
    """Scan originals, then copies and second frames; the tier of every file by its name."""
    tmp = tmp_path_factory.mktemp("accuracy")
    root = tmp / "photos"
    order: list[Path] = [write(root / f"{n}.jpg", rgb) for n, rgb in ORIGINALS.items()]
    scene = data.coffee()
    subject = resize(data.chelsea(), 0.4)
    first, second = moved_subject_frames(scene, subject, shift=60)
    order.append(write(root / "frame-1.jpg", first))
    for name, rgb in ORIGINALS.items():
        for edit, (fn, suffix, quality) in EDITS.items():
            order.append(write(root / "copies" / f"{name}-{edit}{suffix}", fn(rgb), quality))
    order.append(write(root / "frame-2.jpg", second))
    (tmp / "state").mkdir()
    services: Services = open_services(Config(), tmp / "state", [root], dry_run=True)
    tiers: dict[str, Tier] = {}
    try:
        for path in order:
            result = services.pipeline.process(path)
            assert result is not None
            tiers[path.stem] = result.tier
    finally:
        services.close()
    yield tiers


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_edited_copies_are_duplicates(scanned: dict[str, Tier], edit: str) -> None:
    tiers = {name: scanned[f"{name}-{edit}"] for name in ORIGINALS}
    assert all(tier is Tier.DUPLICATE for tier in tiers.values()), tiers


def test_originals_are_unique(scanned: dict[str, Tier]) -> None:
    assert {name: scanned[name] for name in ORIGINALS} == dict.fromkeys(ORIGINALS, Tier.UNIQUE)


def test_a_subject_in_front_of_a_known_scene_is_not_a_duplicate_of_it(
    scanned: dict[str, Tier],
) -> None:
    # frame-1 is the coffee photo with a cat in front of it: another photo of that scene.
    assert scanned["frame-1"] in (Tier.UNIQUE, Tier.SIMILAR), scanned["frame-1"]


def test_next_frame_with_a_moved_subject_is_not_a_duplicate(scanned: dict[str, Tier]) -> None:
    assert scanned["frame-2"] in (Tier.UNIQUE, Tier.SIMILAR), scanned["frame-2"]
