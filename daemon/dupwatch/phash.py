"""A 64-bit perceptual hash (pHash) of decoded pixels, its dihedral variants, and distances.

The image is reduced to 32 x 32 luminance with area averaging, transformed with a 2-D DCT, and
the 63 lowest-frequency AC coefficients (the 8 x 8 corner without the DC term, which only
measures brightness) are compared with their median. Bit 63 would hold the DC term, so it is
always 0: every hash fits a signed 64-bit SQLite INTEGER.

Bit layout: coefficient (u, v) of the 8 x 8 corner (u vertical, v horizontal frequency) is bit
``62 - (8 * u + v - 1)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

HASH_BITS = 64
_SIDE = 32
_LOW = 8
_MASK = (1 << HASH_BITS) - 1

# The eight symmetries of a square, as operations on an H x W (x C) array. Index k of
# dihedral_hashes() is the hash of DIHEDRAL[k] applied to the image.
DIHEDRAL: tuple[tuple[str, Callable[[NDArray[Any]], NDArray[Any]]], ...] = (
    ("identity", lambda a: a),
    ("rotate_90_ccw", lambda a: np.rot90(a, 1)),
    ("rotate_180", lambda a: np.rot90(a, 2)),
    ("rotate_90_cw", lambda a: np.rot90(a, 3)),
    ("mirror_left_right", lambda a: a[:, ::-1]),
    ("mirror_top_bottom", lambda a: a[::-1]),
    ("transpose", lambda a: np.swapaxes(a, 0, 1)),
    ("transverse", lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1]),
)


def _luma32(pixels: NDArray[np.uint8]) -> NDArray[np.float32]:
    if pixels.dtype != np.uint8 or pixels.size == 0:
        raise ValueError(f"expected a non-empty uint8 image, got {pixels.dtype} {pixels.shape}")
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        grey = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)
    elif pixels.ndim == 2:
        grey = pixels
    else:
        raise ValueError(f"expected an H x W x 3 RGB or H x W grey image, got {pixels.shape}")
    small = cv2.resize(
        np.ascontiguousarray(grey, dtype=np.float32), (_SIDE, _SIDE), interpolation=cv2.INTER_AREA
    )
    return np.asarray(small, dtype=np.float32)


def _hash_of_luma(luma: NDArray[np.float32]) -> int:
    corner = cv2.dct(np.ascontiguousarray(luma))[:_LOW, :_LOW].reshape(-1)
    ac = corner[1:]
    bits = np.zeros(HASH_BITS, dtype=bool)
    bits[1:] = ac > np.median(ac)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def perceptual_hash(pixels: NDArray[np.uint8]) -> int:
    """Return the 64-bit pHash of an RGB (or grey) uint8 image, in [0, 2**63)."""
    return _hash_of_luma(_luma32(pixels))


def dihedral_hashes(pixels: NDArray[np.uint8]) -> list[int]:
    """Return the pHash of each of the 8 rotations and mirror images, in ``DIHEDRAL`` order.

    Element 0 equals ``perceptual_hash(pixels)``. The variants are computed from one 32 x 32
    reduction (area averaging commutes with these symmetries), so all eight cost little more
    than one: a copy rotated or mirrored by an editor matches one of them.
    """
    luma = _luma32(pixels)
    return [_hash_of_luma(transform(luma)) for _, transform in DIHEDRAL]


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two 64-bit hashes (signed or unsigned storage)."""
    return ((a ^ b) & _MASK).bit_count()
