"""Distinct small JPEGs cut from real photos, as many as a soak needs.

Sources: scikit-image's sample photographs, plus the 23 wallpaper photographs of
bench/photo_sets.py when its 2 MP set is already in bench/.cache (nothing is fetched here).
Each file is a different crop (12-50 % of the source's short side, anywhere in it) scaled to
320 x 240 or 240 x 320, sometimes mirrored, with its own exposure shift and sensor-like noise,
so no two are byte copies and few are near copies.
"""

from __future__ import annotations

import random
from typing import Any

import cv2
import numpy as np
import skimage.data
from photo_sets import EMBED_CACHE

_SKIMAGE = (
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
    "retina", "camera", "brick", "grass", "gravel", "moon", "coins",
)  # fmt: skip
_WALLPAPERS = EMBED_CACHE / "sets" / "2mp"


def _sources() -> list[np.ndarray[Any, Any]]:
    """Every source photo as a BGR array."""
    out = []
    for name in _SKIMAGE:
        image = getattr(skimage.data, name)()
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        out.append(np.ascontiguousarray(image[:, :, 2::-1]))
    for path in sorted(_WALLPAPERS.glob("*.jpg")) if _WALLPAPERS.is_dir() else []:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is not None:
            out.append(image)
    return out


class PhotoMaker:
    """``jpeg(i)``: the i-th photo's bytes; the same seed and index give the same bytes."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self.sources = _sources()

    def jpeg(self, index: int) -> bytes:
        rng = random.Random(self._seed * 1_000_003 + index)
        source = self.sources[rng.randrange(len(self.sources))]
        h, w = source.shape[:2]
        side = int(min(h, w) * rng.uniform(0.12, 0.5))
        out_w, out_h = (320, 240) if rng.random() < 0.7 else (240, 320)
        ch, cw = side, min(w, side * out_w // out_h)
        y, x = rng.randrange(0, h - ch + 1), rng.randrange(0, w - cw + 1)
        crop = cv2.resize(
            source[y : y + ch, x : x + cw], (out_w, out_h), interpolation=cv2.INTER_AREA
        )
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        noise = np.random.default_rng(index).normal(rng.uniform(-20, 20), 4.0, crop.shape)
        image = np.clip(crop.astype(np.float32) + noise, 0, 255).astype(np.uint8)
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, rng.randint(85, 95)])
        if not ok:
            raise RuntimeError("OpenCV could not encode a JPEG")
        return data.tobytes()
