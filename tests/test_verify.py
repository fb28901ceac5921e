"""Verification tells altered copies of a photo from other photos of the same scene.

Every case runs on several real photographs (scikit-image's samples), so no threshold is tuned
to one picture. Originals are enlarged to about 1000 px and every image is reduced to the
512 px working size the way the decoder does it (area averaging), after the transform.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import cv2
import numpy as np
import pytest
import skimage.data
from numpy.typing import NDArray

from dupwatch.verify import Verification, VerifyThresholds, decide, measure, verify

Image = NDArray[np.uint8]

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle")


def photo_at_1000px(name: str) -> Image:
    if name == "motorcycle":
        img = skimage.data.stereo_motorcycle()[0]
    else:
        img = getattr(skimage.data, name)()
    h, w = img.shape[:2]
    scale = 1000 / max(h, w)
    return np.ascontiguousarray(
        cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_CUBIC)
    )


@pytest.fixture(scope="module")
def photos() -> dict[str, Image]:
    return {name: photo_at_1000px(name) for name in PHOTOS}


def working(img: Image) -> Image:
    """Reduce to the 512 px working size as decode_image does."""
    h, w = img.shape[:2]
    s = 512 / max(h, w)
    if s >= 1:
        return img
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.ascontiguousarray(cv2.resize(img, size, interpolation=cv2.INTER_AREA))


def jpeg(img: Image, quality: int) -> Image:
    ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])


def crop(img: Image, share: float) -> Image:
    h, w = img.shape[:2]
    dy, dx = round(h * share), round(w * share)
    return np.ascontiguousarray(img[dy : h - dy, dx : w - dx])


def caption(img: Image) -> Image:
    out = img.copy()
    h, w = out.shape[:2]
    band = round(h * 0.12)
    out[h - band :] = 25
    cv2.putText(
        out, "Summer 2019 - the lake", (round(w * 0.05), h - band // 3),
        cv2.FONT_HERSHEY_SIMPLEX, band / 45, (255, 255, 255), max(1, band // 15),
    )  # fmt: skip
    return out


def letterbox(img: Image) -> Image:
    h, w = img.shape[:2]
    width = max(w, round(h * 16 / 9))
    height = max(h, round(width * 9 / 16))
    out = np.zeros((height, width, 3), np.uint8)
    y, x = (height - h) // 2, (width - w) // 2
    out[y : y + h, x : x + w] = img
    return out


def scale_levels(img: Image, gain: float, offset: float) -> Image:
    return np.clip(img.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


def grayscale(img: Image) -> Image:
    return cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


COPIES: dict[str, Callable[[Image], Image]] = {
    "jpeg_q40": lambda i: jpeg(i, 40),
    "resize_50": lambda i: cv2.resize(i, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA),
    "crop_5": lambda i: crop(i, 0.05),
    "crop_15": lambda i: jpeg(crop(i, 0.15), 85),
    "caption": caption,
    "letterbox": letterbox,
    "rotate_90": lambda i: np.ascontiguousarray(np.rot90(i, 1)),
    "rotate_180": lambda i: np.ascontiguousarray(np.rot90(i, 2)),
    "mirror": lambda i: np.ascontiguousarray(i[:, ::-1]),
    # Needs the mirrored feature search: a crop is not a whole-frame variant.
    "mirror_crop_5": lambda i: np.ascontiguousarray(crop(i, 0.05)[:, ::-1]),
    "brighter": lambda i: scale_levels(i, 1.2, 0),
    "less_contrast": lambda i: scale_levels(i, 0.8, 0.2 * float(i.mean())),
    "grayscale": grayscale,
    "blurred": lambda i: cv2.GaussianBlur(i, (0, 0), 2.0),
}


@pytest.mark.parametrize("transform", sorted(COPIES))
def test_altered_copy_is_the_same_photo(photos: dict[str, Image], transform: str) -> None:
    for name, original in photos.items():
        copy = working(COPIES[transform](original))
        result = verify(copy, working(original))
        assert result.same, f"{name}: {result.explain()}"


def test_copy_is_the_same_photo_whichever_comes_first(photos: dict[str, Image]) -> None:
    for name, original in photos.items():
        copy = working(letterbox(crop(original, 0.1)))
        for a, b in ((copy, working(original)), (working(original), copy)):
            result = verify(a, b)
            assert result.same, f"{name}: {result.explain()}"


def paste(background: Image, patch: Image, x: int, y: int) -> Image:
    out = background.copy()
    h, w = patch.shape[:2]
    out[y : y + h, x : x + w] = patch
    return out


def test_frames_with_a_moved_subject_are_not_the_same(photos: dict[str, Image]) -> None:
    # A subject (a patch of another photo) at two positions over the same background: two
    # frames of one scene. Subjects of a quarter and of a tenth of the width.
    subjects = {"cat": photos["chelsea"][150:550, 250:750], "face": photos["astronaut"][40:420]}
    for name, background in photos.items():
        h, w = background.shape[:2]
        for subject_name, subject in subjects.items():
            if name in ("chelsea", "astronaut"):
                continue
            for width in (0.25, 0.1):
                sw = round(w * width)
                patch = cv2.resize(subject, (sw, round(sw * subject.shape[0] / subject.shape[1])))
                first = paste(background, patch, w // 3, h // 3)
                second = paste(background, patch, w // 3 + round(w * 0.06), h // 3)
                result = verify(working(jpeg(first, 90)), working(jpeg(second, 90)))
                assert not result.same, f"{name}/{subject_name}/{width}: {result.explain()}"


def test_different_framings_of_one_scene_are_not_the_same(photos: dict[str, Image]) -> None:
    for name, photo in photos.items():
        h, w = photo.shape[:2]
        cw, ch = round(w * 0.6), round(h * 0.6)
        for offset in (0.2, 0.35):
            dx = round(cw * offset)
            left, right = photo[:ch, :cw], photo[:ch, dx : dx + cw]
            result = verify(working(left), working(jpeg(right, 90)))
            assert not result.same, f"{name}/{offset}: {result.explain()}"


def test_a_large_local_change_is_not_the_same(photos: dict[str, Image]) -> None:
    names = list(photos)
    for i, name in enumerate(names):
        photo = photos[name]
        h, w = photo.shape[:2]
        other = cv2.resize(photos[names[(i + 1) % len(names)]], (w // 3, h // 3))
        changed = paste(photo, other, w // 2, h // 4)
        result = verify(working(photo), working(changed))
        assert not result.same, f"{name}: {result.explain()}"


def test_another_viewpoint_is_not_the_same() -> None:
    left, right, _ = skimage.data.stereo_motorcycle()
    result = verify(working(left), working(right))
    assert not result.same, result.explain()


def test_different_photos_are_not_the_same(photos: dict[str, Image]) -> None:
    names = list(photos)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            result = verify(working(photos[first]), working(photos[second]))
            assert not result.same, f"{first}/{second}: {result.explain()}"


def test_plain_and_tiny_images_are_never_called_the_same() -> None:
    grey = np.full((384, 512, 3), 128, np.uint8)
    assert not verify(grey, grey.copy()).same
    tiny = np.zeros((4, 3, 3), np.uint8)
    result = verify(tiny, tiny.copy())
    assert not result.same
    assert result.reason


def test_input_that_is_not_an_rgb_image_is_refused() -> None:
    with pytest.raises(ValueError, match="RGB"):
        verify(np.zeros((64, 64), np.uint8), np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        verify(np.zeros((64, 64, 3), np.float32), np.zeros((64, 64, 3), np.uint8))


def test_verification_explains_itself_and_serialises(photos: dict[str, Image]) -> None:
    original = working(photos["coffee"])
    result = verify(working(crop(photos["coffee"], 0.1)), original)
    assert isinstance(result, Verification)
    assert result.same and result.reason == "aligned_match"
    assert result.inliers >= VerifyThresholds().min_inliers
    assert "scale" in result.transform
    assert "same photo" in result.explain()
    json.dumps(dataclasses.asdict(result), allow_nan=False)
    rotated = verify(working(np.rot90(photos["coffee"]).copy()), original)
    assert rotated.same and "rotate" in rotated.transform
    miss = verify(working(photos["coffee"]), working(photos["rocket"]))
    json.dumps(dataclasses.asdict(miss), allow_nan=False)
    assert "not the same photo" in miss.explain()


def test_stricter_thresholds_never_accept_more(photos: dict[str, Image]) -> None:
    default = VerifyThresholds()
    strict = dataclasses.replace(
        default, min_containment=0.995, max_disagreeing=0.0, max_worst_block=1.0
    )
    for name, photo in photos.items():
        for copy in (working(caption(photo)), working(crop(photo, 0.15))):
            candidates = measure(copy, working(photo), default, exhaustive=True)
            for candidate in candidates:
                if decide(candidate, strict)[0]:
                    assert decide(candidate, default)[0], name
