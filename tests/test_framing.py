"""Finding the photo inside a frame: letterbox bars, a viewer window, a phone gallery."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from skimage import data

from dupwatch.framing import photo_box, photo_inside
from dupwatch.verify import verify

Image = NDArray[np.uint8]


def to_working_size(rgb: Image, long_side: int = 512) -> Image:
    h, w = rgb.shape[:2]
    scale = long_side / max(h, w)
    size = (round(w * scale), round(h * scale))
    return np.asarray(cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), np.uint8)


def framed(photo: Image, canvas: Image, x: int, y: int) -> Image:
    out = canvas.copy()
    out[y : y + photo.shape[0], x : x + photo.shape[1]] = photo
    return out


def desktop_viewer(photo: Image) -> tuple[Image, tuple[int, int, int, int]]:
    """A photo in a viewer window on a desktop: background, title bar, toolbar, task bar."""
    screen = np.full((1080, 1920, 3), (58, 110, 165), np.uint8)
    cv2.rectangle(screen, (120, 60), (1800, 1000), (40, 40, 40), -1)
    cv2.rectangle(screen, (120, 60), (1800, 100), (225, 225, 225), -1)
    cv2.putText(screen, "IMG_0001.JPG", (140, 88), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (30, 30, 30), 2)
    cv2.rectangle(screen, (0, 1032), (1920, 1080), (30, 30, 30), -1)
    scale = 820 / photo.shape[0]
    inner = np.asarray(cv2.resize(photo, (round(photo.shape[1] * scale), 820)), np.uint8)
    x = (1920 - inner.shape[1]) // 2
    return framed(inner, screen, x, 130), (x, 130, x + inner.shape[1], 130 + 820)


def letterboxed(photo: Image) -> tuple[Image, tuple[int, int, int, int]]:
    h, w = photo.shape[:2]
    width = round(h * 16 / 9)
    x = (width - w) // 2
    return framed(photo, np.zeros((h, width, 3), np.uint8), x, 0), (x, 0, x + w, h)


@pytest.mark.parametrize("make", [desktop_viewer, letterboxed], ids=["viewer", "letterbox"])
@pytest.mark.parametrize("name", ["astronaut", "coffee", "rocket"])
def test_the_photo_inside_a_frame_is_found(make: object, name: str) -> None:
    photo = getattr(data, name)()
    if photo.shape[1] / photo.shape[0] > 1.5:  # too wide to letterbox visibly
        pytest.skip("already wide")
    full, truth = make(photo)  # type: ignore[operator]
    image = to_working_size(full)
    scale = image.shape[1] / full.shape[1]
    box = photo_box(image)
    assert box is not None
    # Within a few working-size pixels of the truth on every side.
    assert np.allclose(np.array(box), np.array(truth) * scale, atol=4), (box, truth)


@pytest.mark.parametrize(
    "name", ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry"]
)
def test_an_ordinary_photo_has_no_frame(name: str) -> None:
    image = to_working_size(getattr(data, name)())
    assert photo_box(image) is None
    assert photo_inside(image) is None


def test_flat_and_tiny_images_have_no_frame() -> None:
    assert photo_box(np.full((300, 400, 3), 128, np.uint8)) is None
    assert photo_box(np.zeros((20, 20, 3), np.uint8)) is None


def night(photo: Image, gain: float) -> Image:
    """The photo as a dark night shot: gamma-darkened, most of it a few grey levels deep."""
    linear = (photo.astype(np.float32) / 255.0) ** 2.2
    return np.asarray(np.clip(255.0 * gain * linear, 0, 255), np.uint8)


def dark_phone_gallery(photo: Image) -> tuple[Image, tuple[int, int, int, int]]:
    """A photo across the width of a phone's near-black gallery: status bar, title, buttons."""
    w, h = 1080, 2340
    screen = np.full((h, w, 3), 12, np.uint8)
    white = (235, 235, 235)
    cv2.putText(screen, "21:37", (40, 70), cv2.FONT_HERSHEY_SIMPLEX, 1.6, white, 3, cv2.LINE_AA)
    cv2.rectangle(screen, (w - 150, 35), (w - 60, 75), white, 3)
    cv2.rectangle(screen, (w - 145, 40), (w - 95, 70), white, -1)
    cv2.putText(screen, "< IMG_2042", (40, 200), cv2.FONT_HERSHEY_SIMPLEX, 1.4, white, 3)
    for k in range(4):
        cv2.circle(screen, (135 + k * 270, h - 170), 38, white, 4, cv2.LINE_AA)
    height = round(photo.shape[0] * w / photo.shape[1])
    inner = np.asarray(cv2.resize(photo, (w, height), interpolation=cv2.INTER_AREA), np.uint8)
    y = (h - height) // 2
    return framed(inner, screen, 0, y), (0, y, w, y + height)


# Dark enough that large parts of each photo are as dark as the frame round it, or darker.
DARK_PHOTOS = [("rocket", 0.5), ("camera", 0.25), ("immunohistochemistry", 0.25), ("coffee", 0.25)]


def _rgb(name: str) -> Image:
    photo = getattr(data, name)()
    return photo if photo.ndim == 3 else np.stack([photo] * 3, axis=-1)


@pytest.mark.parametrize(("name", "gain"), DARK_PHOTOS)
def test_a_dark_photo_in_a_dark_phone_frame_is_found(name: str, gain: float) -> None:
    full, truth = dark_phone_gallery(night(_rgb(name), gain))
    image = to_working_size(full)
    scale = image.shape[1] / full.shape[1]
    box = photo_box(image)
    assert box is not None
    assert np.allclose(np.array(box), np.array(truth) * scale, atol=4), (box, truth)


def test_a_dark_framed_photo_verifies_as_the_original() -> None:
    photo = night(_rgb("rocket"), 0.5)
    full, _truth = dark_phone_gallery(photo)
    inner = photo_inside(to_working_size(full))
    assert inner is not None
    result = verify(inner, to_working_size(photo))
    assert result.same, result.explain()


def test_a_bright_object_on_a_black_ground_is_not_a_framed_photo() -> None:
    # A planet or a lit face in the dark: a flat ground all round, but no rectangle inside it.
    texture = to_working_size(_rgb("chelsea"))
    h, w = texture.shape[:2]
    disc = np.zeros((h, w), np.uint8)
    cv2.circle(disc, (w // 2, h // 2), min(h, w) // 3, 255, -1)
    image = np.where(disc[..., None] > 0, texture, 0).astype(np.uint8)
    assert photo_box(image) is None


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(32, 300),
    width=st.integers(32, 300),
    ground=st.integers(0, 255),
    blocks=st.lists(
        st.tuples(
            st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.integers(0, 255)
        ),
        max_size=5,
    ),
    seed=st.integers(0, 2**16),
)
def test_a_box_when_found_lies_inside_the_image(
    height: int,
    width: int,
    ground: int,
    blocks: list[tuple[float, float, float, float, int]],
    seed: int,
) -> None:
    # Flat grounds with flat or noisy blocks: frames, near-frames and none at all.
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), ground, np.uint8)
    for a, b, c, d, level in blocks:
        y0, y1 = sorted((round(a * height), round(b * height)))
        x0, x1 = sorted((round(c * width), round(d * width)))
        noisy = rng.integers(0, 256, (y1 - y0, x1 - x0, 3), dtype=np.uint8)
        image[y0:y1, x0:x1] = noisy if level % 2 else level
    box = photo_box(image)
    if box is not None:
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        inner = photo_inside(image)
        assert inner is not None and inner.shape[:2] == (y1 - y0, x1 - x0)
