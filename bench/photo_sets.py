"""Benchmark photo sets made from the photographs in Debian's wallpaper packages.

The packages are fetched with ``apt-get download`` and unpacked with ``dpkg -x`` into
``bench/.cache/embed/`` (git-ignored). Debian ships few camera-resolution photos, so each
photographic wallpaper (2-18 MP) is cropped to 4:3, resized to 4000 x 3000 and given mild
sensor-like noise, which brings its JPEG to the size and entropy of a 12 MP phone photo
(about 2 MB at quality 92); without the noise an upscaled photo decodes faster than a real one.
Sets: ``12mp`` (baseline JPEG), ``12mp-progressive`` and ``2mp`` (1600 x 1200, baseline).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np

CACHE = Path(__file__).resolve().parent / ".cache"
# A folder of its own: other benchmarks keep their downloads in bench/.cache too.
EMBED_CACHE = CACHE / "embed"
PACKAGES = ("mate-backgrounds", "plasma-workspace-wallpapers")
# Photographs (not drawings) inside those packages; the largest version of each.
SOURCES = (
    *(
        f"usr/share/backgrounds/mate/nature/{name}.jpg"
        for name in (
            "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird",
            "RainDrops", "Storm", "TwoWings", "Wood", "YellowFlower",
        )
    ),
    "usr/share/backgrounds/mate/abstract/Elephants_5640x3172.jpg",
    *(
        f"usr/share/wallpapers/{name}/contents/images/2560x1600.jpg"
        for name in (
            "Autumn", "BytheWater", "ColdRipple", "ColorfulCups", "EveningGlow", "FallenLeaf",
            "Kite", "OneStandsOut", "Path", "summer_1am",
        )
    ),
)  # fmt: skip


def _fetch() -> Path:
    root = EMBED_CACHE / "packages"
    done = root / ".unpacked"
    if done.exists():
        return root
    debs = EMBED_CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", *PACKAGES], cwd=debs, check=True)
    for package in PACKAGES:
        for deb in sorted(debs.glob(f"{package}_*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    done.touch()
    return root


def _to_4_3(image: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    target = width / height
    if w / h > target:
        keep = round(h * target)
        image = image[:, (w - keep) // 2 : (w - keep) // 2 + keep]
    else:
        keep = round(w / target)
        image = image[(h - keep) // 2 : (h - keep) // 2 + keep]
    grow = width > image.shape[1]
    return cv2.resize(
        image, (width, height), interpolation=cv2.INTER_CUBIC if grow else cv2.INTER_AREA
    )


def photo_sets() -> dict[str, list[Path]]:
    """Build (once) and return the benchmark sets, each a sorted list of JPEG files."""
    names = ("12mp", "12mp-progressive", "2mp")
    out = {name: EMBED_CACHE / "sets" / name for name in names}
    if not all(d.is_dir() and any(d.iterdir()) for d in out.values()):
        root = _fetch()
        for d in out.values():
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        rng = np.random.default_rng(12)
        for i, rel in enumerate(SOURCES):
            bgr = cv2.imread(str(root / rel), cv2.IMREAD_COLOR)
            if bgr is None:
                raise SystemExit(f"missing source photo {rel}")
            big = _to_4_3(bgr, 4000, 3000).astype(np.float32)
            big += rng.normal(0.0, 2.5, big.shape).astype(np.float32)
            big = np.clip(big, 0, 255).astype(np.uint8)
            stem = f"{i:02d}-{Path(rel).parts[-4] if 'wallpapers' in rel else Path(rel).stem}"
            q = [cv2.IMWRITE_JPEG_QUALITY, 92]
            cv2.imwrite(str(out["12mp"] / f"{stem}.jpg"), big, q)
            cv2.imwrite(
                str(out["12mp-progressive"] / f"{stem}.jpg"),
                big,
                [*q, cv2.IMWRITE_JPEG_PROGRESSIVE, 1],
            )
            small = cv2.resize(big, (1600, 1200), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(out["2mp"] / f"{stem}.jpg"), small, q)
    return {name: sorted(d.glob("*.jpg")) for name, d in out.items()}


if __name__ == "__main__":
    for name, files in photo_sets().items():
        mb = sum(f.stat().st_size for f in files) / len(files) / 1e6
        print(f"{name}: {len(files)} files, {mb:.1f} MB each on average")
