"""Perceptual hashes of real photos: copies stay close, different photos stay apart."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from dupwatch.images import decode_image, dihedral_hashes, hamming, perceptual_hash, read_file
from dupwatch.phash import DIHEDRAL

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field", "coins"]
# Hamming distances, of 63 informative bits: copies of one photo differ in a few bits, unrelated
# photos in about half of them (31 on average over these photos; the closest pair differs in 20).
COPY = 6
DIFFERENT = 14

hashes64 = st.integers(0, 2**64 - 1)


def photo(name: str) -> np.ndarray:
    pixels = np.asarray(getattr(skimage.data, name)())
    return cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB) if pixels.ndim == 2 else pixels


def decoded(path: Path) -> np.ndarray:
    return decode_image(read_file(path)).pixels


@pytest.mark.parametrize("name", PHOTOS)
def test_reencoded_and_resized_copies_hash_alike(tmp_path: Path, name: str) -> None:
    pixels = photo(name)
    Image.fromarray(pixels).save(tmp_path / "original.png")
    h, w = pixels.shape[:2]
    half = cv2.resize(pixels, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    Image.fromarray(pixels).save(tmp_path / "q60.jpg", quality=60)
    Image.fromarray(half).save(tmp_path / "half.webp", quality=80)
    Image.fromarray(half).save(tmp_path / "half.heic", quality=70)
    original = perceptual_hash(decoded(tmp_path / "original.png"))
    for copy in ("q60.jpg", "half.webp", "half.heic"):
        assert hamming(original, perceptual_hash(decoded(tmp_path / copy))) <= COPY, copy


def test_different_photos_hash_apart() -> None:
    hashes = {name: perceptual_hash(photo(name)) for name in PHOTOS}
    for a, b in itertools.combinations(PHOTOS, 2):
        assert hamming(hashes[a], hashes[b]) >= DIFFERENT, (a, b)


@pytest.mark.parametrize("name", ["astronaut", "rocket", "coins"])
def test_rotated_or_mirrored_copy_matches_its_dihedral_variant(tmp_path: Path, name: str) -> None:
    pixels = photo(name)
    variants = dihedral_hashes(pixels)
    assert variants[0] == perceptual_hash(pixels)
    for index, (label, transform) in enumerate(DIHEDRAL):
        path = tmp_path / f"{label}.jpg"
        Image.fromarray(np.ascontiguousarray(transform(pixels))).save(path, quality=85)
        copy = perceptual_hash(decoded(path))
        assert hamming(variants[index], copy) <= COPY, label
        if label != "identity":
            # ... and the plain hash alone would not have found it.
            assert hamming(variants[0], copy) > COPY, label


def test_the_first_dihedral_hash_is_the_photo_s_own() -> None:
    # Fingerprints store it as the photo's hash without computing it twice.
    for name in PHOTOS:
        assert dihedral_hashes(photo(name))[0] == perceptual_hash(photo(name))


def test_hash_fits_a_signed_sqlite_integer() -> None:
    for name in PHOTOS:
        for value in dihedral_hashes(photo(name)):
            assert 0 <= value < 2**63


def test_grey_and_rgb_input_of_the_same_luminance_agree() -> None:
    grey = photo("camera")[..., 0]
    assert perceptual_hash(grey) == perceptual_hash(photo("camera"))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((8, 8, 3), dtype=np.float32),
        np.zeros((8, 8, 4), dtype=np.uint8),
        np.zeros((0, 8, 3), dtype=np.uint8),
    ],
)
def test_malformed_pixels_are_a_programming_error(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        perceptual_hash(bad)


@given(hashes64, hashes64)
def test_hamming_is_symmetric_and_bounded(a: int, b: int) -> None:
    assert hamming(a, b) == hamming(b, a)
    assert 0 <= hamming(a, b) <= 64
    assert (hamming(a, b) == 0) == (a == b)


@given(hashes64, hashes64, hashes64)
def test_hamming_obeys_the_triangle_inequality(a: int, b: int, c: int) -> None:
    assert hamming(a, c) <= hamming(a, b) + hamming(b, c)


@given(hashes64, hashes64)
def test_hamming_is_the_same_for_signed_storage(a: int, b: int) -> None:
    def signed(value: int) -> int:  # how a 64-bit value comes back from a signed column
        return value - 2**64 if value >= 2**63 else value

    assert hamming(signed(a), signed(b)) == hamming(a, b)
