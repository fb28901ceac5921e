"""Camera metadata and orientation from a photo's EXIF block.

Everything here is best effort: EXIF is written by thousands of cameras and apps, often
wrongly, so a missing or corrupt block yields empty metadata and orientation 1, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

_MAKE = 0x010F
_MODEL = 0x0110
_ORIENTATION = 0x0112
_EXIF_IFD = 0x8769
_GPS_IFD = 0x8825
_DATETIME_ORIGINAL = 0x9003
_SUBSEC_ORIGINAL = 0x9291

_MAX_TEXT = 64  # EXIF strings are short; a long one is garbage and must not bloat the store


@dataclass(frozen=True, slots=True)
class PhotoMeta:
    """What the camera wrote about the shot; every field is optional."""

    make: str | None
    model: str | None
    datetime_original: str | None  # as written, "YYYY:MM:DD HH:MM:SS"
    subsec: str | None  # fractional seconds of datetime_original, as written
    exif_tag_count: int  # entries in IFD0 + Exif IFD + GPS IFD: a measure of metadata richness


EMPTY_META = PhotoMeta(None, None, None, None, 0)


def read_meta(image: Image.Image) -> tuple[PhotoMeta, int]:
    """Return the metadata and the EXIF orientation (1-8; 1 when absent or invalid).

    Call after ``image.load()``: for some formats (PNG) Pillow decodes the whole image to find
    a trailing EXIF chunk, and a decode error must not be hidden here.
    """
    try:
        exif = image.getexif()
    except Exception:  # corrupt EXIF is common and never worth failing the photo for
        return EMPTY_META, 1
    sub = _ifd(exif, _EXIF_IFD)
    gps = _ifd(exif, _GPS_IFD)
    meta = PhotoMeta(
        make=_text(exif.get(_MAKE)),
        model=_text(exif.get(_MODEL)),
        datetime_original=_text(sub.get(_DATETIME_ORIGINAL)),
        subsec=_text(sub.get(_SUBSEC_ORIGINAL)),
        exif_tag_count=len(exif) + len(sub) + len(gps),
    )
    return meta, _orientation(exif.get(_ORIENTATION))


def _ifd(exif: Image.Exif, tag: int) -> dict[int, object]:
    try:
        return dict(exif.get_ifd(tag))
    except Exception:  # a pointer to nowhere: keep the rest of the metadata
        return {}


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str):
        return None
    cleaned = "".join(c for c in value if c.isprintable()).strip()
    return cleaned[:_MAX_TEXT] or None


def _orientation(value: object) -> int:
    if isinstance(value, tuple | list) and value:
        value = value[0]
    if isinstance(value, int) and 1 <= value <= 8:
        return value
    return 1


def apply_orientation(pixels: NDArray[np.uint8], orientation: int) -> NDArray[np.uint8]:
    """Turn stored pixels (H x W x C) into the view a photo viewer shows for this EXIF value."""
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1]
    if orientation == 5:
        return pixels.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(pixels, k=-1)
    if orientation == 7:
        return pixels.transpose(1, 0, 2)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(pixels, k=1)
    return pixels


def swaps_axes(orientation: int) -> bool:
    """True if the orientation turns the photo by 90 degrees (width and height exchange)."""
    return orientation in (5, 6, 7, 8)
