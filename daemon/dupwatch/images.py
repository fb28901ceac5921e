"""A file on disk to what fingerprinting needs: its bytes and SHA-256, and oriented RGB pixels.

The file is read once (``read_file``, from ``filebytes``); the bytes are hashed, and decoded only
when needed (identical bytes skip decoding). Decoding is built for untrusted files on a small
CPU:

- the format comes from the leading bytes, and the container is checked for completeness
  before any decoder runs (``sniff``);
- the header's dimensions are checked against a megapixel limit before pixels are allocated;
- JPEGs are decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (Pillow ``draft``), keeping the
  short side at least ``MIN_REDUCED_SHORT_SIDE`` so the final area-averaging resize still has
  detail to average: that is 3-4x faster than a full decode and resize of a 12 MP photo;
  other formats are box-reduced by the same power of two after decoding;
- every decode is strict: a file that ends early raises instead of coming back with grey rows;
- downscaling is always area averaging (``INTER_AREA``): bilinear sampling aliases and makes
  copies of one photo look different;
- EXIF orientation is applied, so a photo rotated by tag and its physically rotated copy give
  the same pixels.
"""

from __future__ import annotations

import io
import threading
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image, features

from dupwatch import sniff
from dupwatch.errors import (
    CorruptImage,
    FileRejected,
    ImageTooLarge,
    NotAnImage,
    TruncatedImage,
)
from dupwatch.exif import PhotoMeta, apply_orientation, read_meta, swaps_axes
from dupwatch.filebytes import FileBytes, read_file
from dupwatch.phash import dihedral_hashes, hamming, perceptual_hash

__all__ = [
    "BACKGROUND",
    "MIN_REDUCED_SHORT_SIDE",
    "DecodedImage",
    "FileBytes",
    "PhotoMeta",
    "decode_image",
    "dihedral_hashes",
    "hamming",
    "perceptual_hash",
    "read_file",
    "reduction_factor",
]

# Our megapixel check reads the header before anything is allocated; Pillow's warning for
# images between its soft and hard limits would only repeat it. (Pillow's hard limit, about
# 179 MP, still raises DecompressionBombError, which becomes ImageTooLarge.)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# Transparent pixels are shown over white, as most viewers and "flatten" exports do, so a
# transparent PNG and its JPEG export look alike.
BACKGROUND = (255, 255, 255)

# A 1/8 reduced decode of a small photo loses too much detail for the embedder (feature
# agreement with the full decode drops to 0.96); keeping 448 px on the short side does not.
MIN_REDUCED_SHORT_SIDE = 448

_PIL_FORMATS = {
    "jpeg": "JPEG",
    "png": "PNG",
    "gif": "GIF",
    "webp": "WEBP",
    "bmp": "BMP",
    "tiff": "TIFF",
    "heif": "HEIF",
    "avif": "AVIF",
}
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_TRUNCATION_WORDS = ("truncat", "end of file", "unexpected end", "premature end")

_heif_lock = threading.Lock()
_heif_registered = False


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """Pixels of an image as a viewer shows it, reduced to the working size."""

    format: str  # "jpeg" | "png" | "webp" | "gif" | "bmp" | "tiff" | "heif" | "avif"
    width: int  # full resolution, after EXIF orientation
    height: int
    pixels: NDArray[np.uint8]  # RGB, H x W x 3, C-contiguous, read-only; long side <= working
    meta: PhotoMeta


def decode_image(
    file: FileBytes, *, max_megapixels: float = 100.0, working_size: int = 512
) -> DecodedImage:
    """Decode, orient and reduce an image so its long side is at most ``working_size``.

    Raises NotAnImage, TruncatedImage, CorruptImage or ImageTooLarge; any other failure of a
    decoder library is reported as CorruptImage, never raised as is.
    """
    if working_size < 1 or not max_megapixels > 0:
        raise ValueError("working_size and max_megapixels must be positive")
    fmt = sniff.identify(file.data)
    if fmt is None:
        if sniff.starts_with_zeros(file.data):
            raise TruncatedImage(file.path, "only zero bytes so far: a copy still in progress")
        raise NotAnImage(file.path, f"not a supported image format (starts {file.data[:8]!r})")
    problem = sniff.incomplete(fmt, file.data)
    if problem:
        raise TruncatedImage(file.path, problem)
    try:
        return _decode(file, fmt, max_megapixels, working_size)
    except FileRejected:
        raise
    except Exception as exc:  # decoder libraries raise anything; it costs this file only
        raise _decoder_failure(file, fmt, exc) from exc


def reduction_factor(width: int, height: int, working_size: int) -> int:
    """The largest JPEG DCT scale-down (1, 2, 4 or 8) that leaves enough pixels to average."""
    short, long = min(width, height), max(width, height)
    for factor in (8, 4, 2):
        if short // factor >= MIN_REDUCED_SHORT_SIDE and long // factor >= working_size:
            return factor
    return 1


def _decode(file: FileBytes, fmt: str, max_megapixels: float, working_size: int) -> DecodedImage:
    with _open(file, fmt) as image:
        width, height = image.size
        if width < 1 or height < 1:
            raise CorruptImage(file.path, f"{fmt} header declares {width} x {height} pixels")
        if width * height > max_megapixels * 1e6:
            raise ImageTooLarge(
                file.path,
                f"{width} x {height} = {width * height / 1e6:.1f} megapixels, "
                f"the limit is {max_megapixels:g}",
            )
        if fmt == "jpeg":
            factor = reduction_factor(width, height, working_size)
            if factor > 1:
                image.draft("RGB", (width // factor, height // factor))
        image.load()  # the full, strict decode: raises if the data ends early
        meta, orientation = read_meta(image)
        rgb = _to_rgb(image)
        # Formats without DCT scaling (and JPEGs too small for it) are box-reduced by the same
        # power of two first: as exact as area averaging, and 3-4x cheaper than INTER_AREA's
        # general path on a 12 MP image.
        factor = reduction_factor(rgb.width, rgb.height, working_size)
        if factor > 1:
            rgb = rgb.reduce(factor)
        pixels = _shrink(np.asarray(rgb), working_size)
    oriented = np.ascontiguousarray(apply_orientation(pixels, orientation))
    oriented.flags.writeable = False
    if swaps_axes(orientation):
        width, height = height, width
    return DecodedImage(fmt, width, height, oriented, meta)


def _open(file: FileBytes, fmt: str) -> Image.Image:
    if fmt == "heif":
        _register_heif()
    elif fmt == "avif" and not features.check("avif"):
        raise NotAnImage(file.path, "AVIF images are not supported by this Pillow build")
    # Only the plugin for the format the bytes announce may parse them.
    return Image.open(io.BytesIO(file.data), formats=[_PIL_FORMATS[fmt]])


def _register_heif() -> None:
    global _heif_registered
    with _heif_lock:
        if not _heif_registered:
            import pillow_heif  # only paid for by libraries that hold HEIC photos

            # Thumbnails, depth maps and auxiliary images are never used here.
            pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
            _heif_registered = True


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        wide = np.clip(np.asarray(image, dtype=np.float32), 0, 65535)
        return Image.fromarray(np.rint(wide * (255 / 65535)).astype(np.uint8)).convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32))
        scale = 255.0 if values.size and float(values.max()) <= 1.0 else 1.0
        grey = np.rint(np.clip(values * scale, 0, 255)).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, BACKGROUND)
        flat.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def _shrink(pixels: NDArray[np.uint8], working_size: int) -> NDArray[np.uint8]:
    height, width = pixels.shape[:2]
    long = max(height, width)
    if long <= working_size:
        return pixels
    scale = working_size / long
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(cv2.resize(pixels, size, interpolation=cv2.INTER_AREA))


def _decoder_failure(file: FileBytes, fmt: str, exc: Exception) -> FileRejected:
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, Image.DecompressionBombError | MemoryError):
        return ImageTooLarge(file.path, f"{fmt} image too large to decode ({message})")
    if isinstance(exc, EOFError) or any(w in message.lower() for w in _TRUNCATION_WORDS):
        return TruncatedImage(file.path, f"{fmt} data ends early ({message})")
    if sniff.ends_in_zeros(file.data):
        return TruncatedImage(
            file.path, f"{fmt} data ends in zero bytes: a copy still in progress ({message})"
        )
    return CorruptImage(file.path, f"{fmt} data cannot be decoded ({message})")
