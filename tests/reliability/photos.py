"""Real photos for the reliability scenarios: crops of scikit-image's samples, copies, edits."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import skimage.data

_SOURCES = (
    "astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "moon", "horse", "brick",
    "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel",
    "clock", "cell",
)  # fmt: skip


def photo(index: int) -> np.ndarray[Any, Any]:
    """A distinct RGB photo for each index: a crop of a different real sample photo."""
    source = getattr(skimage.data, _SOURCES[index % len(_SOURCES)])()
    if source.ndim == 2:
        source = np.stack([source] * 3, axis=-1)
    source = source[:, :, :3]
    h, w = source.shape[:2]
    rng = random.Random(index)
    ch, cw = max(64, h * 2 // 3), max(64, w * 2 // 3)
    y, x = rng.randrange(0, h - ch + 1), rng.randrange(0, w - cw + 1)
    crop = np.ascontiguousarray(source[y : y + ch, x : x + cw])
    if index >= len(_SOURCES):  # more photos than sources: different crops, flipped, tinted
        crop = np.ascontiguousarray(crop[:, ::-1]) if index % 2 else crop
        tint = np.array([rng.randrange(-40, 40) for _ in range(3)], dtype=np.int16)
        crop = np.clip(crop.astype(np.int16) + tint, 0, 255).astype(np.uint8)
    return crop


def encode(image: np.ndarray[Any, Any], ext: str = ".jpg", quality: int = 92) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, image[:, :, ::-1], params)
    assert ok
    return bytes(buf.tobytes())


def write(path: Path, data: bytes, *, mtime_ns: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def mixed_files(count: int, seed: int) -> list[tuple[str, bytes]]:
    """``count`` (relative name, bytes): unique photos, exact copies and altered copies."""
    rng = random.Random(seed)
    out: list[tuple[str, bytes]] = []
    uniques: list[tuple[np.ndarray[Any, Any], bytes]] = []
    for i in range(count):
        kind = rng.random() if uniques else 0.0
        folder = f"d{i % 7}"
        if kind < 0.5:
            image = photo(seed * 1000 + i)
            data = encode(image)
            uniques.append((image, data))
            out.append((f"{folder}/u{i:04d}.jpg", data))
        elif kind < 0.75:
            out.append((f"{folder}/x{i:04d}.jpg", rng.choice(uniques)[1]))
        else:
            image = rng.choice(uniques)[0]
            small = cv2.resize(image, (image.shape[1] * 3 // 4, image.shape[0] * 3 // 4))
            out.append((f"{folder}/a{i:04d}.jpg", encode(small, quality=80)))
    return out
