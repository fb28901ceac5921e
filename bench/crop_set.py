"""The daemon benchmark's "crops" stress set: random crops of 23 Debian wallpaper photos.

Each file is a 45-90 % window of one of bench/photo_sets.py's wallpapers, so many files contain
each other and nearly every file has two or three look-alike candidates that the pipeline must
verify geometrically: the set measures the verification stage rather than a library. The
packages are fetched with ``apt-get download`` into ``bench/.cache/daemon-set`` (git-ignored).
"""

from __future__ import annotations

import subprocess
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np
from photo_sets import CACHE, PACKAGES, SOURCES, _to_4_3

SET_DIR = CACHE / "daemon-set"


def _sources() -> list[Path]:
    """photo_sets.py's wallpaper photographs, unpacked into this set's own cache."""
    root = SET_DIR / "packages"
    done = root / ".unpacked"
    if not done.exists():
        debs = SET_DIR / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        if not any(debs.glob("*.deb")):
            subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, check=True)
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        done.touch()
    return [root / rel for rel in SOURCES]


def _variant(job: tuple[Path, int, int, tuple[int, int]]) -> None:
    """One crop of a source photo at phone size, with mild sensor-like noise."""
    source, _index, out_index, (width, height) = job
    out = SET_DIR / f"{width}x{height}" / f"{out_index:05d}.jpg"
    if out.exists():
        return
    rng = np.random.default_rng(out_index)
    bgr = cv2.imread(str(source), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read source photo {source}")
    h, w = bgr.shape[:2]
    # A window of 45-90 % of the photo's height at 4:3, anywhere in it, and sometimes upright.
    upright = rng.random() < 0.25
    ch = int(h * rng.uniform(0.45, 0.9))
    cw = min(w, int(ch * (3 / 4 if upright else 4 / 3)))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = bgr[y : y + ch, x : x + cw]
    size = (height, width) if upright else (width, height)
    # Upright crops are resized bilinearly: the set's files have always been made that way.
    photo = _to_4_3(crop, *size) if not upright else cv2.resize(crop, size)
    noisy = photo.astype(np.int16) + rng.normal(0, 2.5, photo.shape).astype(np.int16)
    quality = int(rng.integers(85, 95))
    cv2.imwrite(
        str(out), np.clip(noisy, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )


def crop_set(count: int, size: tuple[int, int]) -> list[Path]:
    """``count`` phone-sized JPEGs cut from the wallpaper photographs (cached)."""
    width, height = size
    folder = SET_DIR / f"{width}x{height}"
    folder.mkdir(parents=True, exist_ok=True)
    sources = _sources()
    jobs = [
        (sources[i % len(sources)], i // len(sources), i, (width, height)) for i in range(count)
    ]
    with Pool(2) as pool:
        pool.map(_variant, jobs, chunksize=16)
    return [folder / f"{i:05d}.jpg" for i in range(count)]
