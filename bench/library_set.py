"""The daemon benchmark's "library" photo stream: distinct photos plus the copies a NAS receives.

Sources are the kept photographs of the accuracy benchmark (bench/accuracy/originals_manifest.csv,
originals and hard negatives), loaded at full resolution through bench/accuracy/fetch_originals.py
(which downloads and unpacks the pinned packages into ``bench/.cache`` once). Not enough distinct
photographs exist offline, so each source is cut into a grid of non-overlapping 4:3 or 3:4
windows with a gap between neighbours (no two windows share a source pixel). Every window is
brought to phone size with mild sensor-like noise and a JPEG quality of 85-94.

The window size is the largest one at which the sources hold enough windows for the stream: the
sources hold about 300 MP in all, so a 2,000-file stream (1,700 distinct photos, after dropping
flat windows) gets windows of roughly 0.1 MP of source pixels, upscaled, and large photos give
many windows; windows of 0.4 MP or more would give about 500. Windows with almost no
detail (a clear sky, a black frame of sky around a galaxy) are dropped: such windows of one photo
are the same picture to any perceptual fingerprint. The members of a hard-negative group (frames
of one video, a stereo pair) take turns over one grid, so two of them never show the same region.

The stream is planned for ``max(count, 2000)`` files and a run takes its first ``count``, so a
short run is the beginning of the long one. About 15 % of the files are copies of a file that
arrived earlier: byte-exact, a messenger re-save (long side 1280, JPEG quality 75), resized to
50 %, PNG, or 5 % cropped from each side. Everything is seeded and cached under
``bench/.cache/daemon-library`` (git-ignored).
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import zlib
from collections import Counter
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "accuracy"))
import fetch_originals  # noqa: E402

CACHE = HERE / ".cache"
LIBRARY_DIR = CACHE / "daemon-library"
# Bump when the way windows or copies are made changes, so an old cache is not reused.
VERSION = 2
SEED = 2000
# Sources left out, and why: found by a dry-run scan of 400 distinct windows.
EXCLUDED = {"o037": "Volna, one sand-and-water texture whose windows are the same picture"}
PLANNED = 2000
COPY_SHARE = 0.15
COPY_KINDS = ("exact", "messenger", "resize_50", "png", "crop_5")
# The decision a correct pipeline makes for each kind of file in the stream.
EXPECTED = {"distinct": "unique", "exact": "exact", **{k: "duplicate" for k in COPY_KINDS[1:]}}
# Copies only start once a few files have arrived, as on a NAS that already holds some photos.
FIRST_COPY = 20
GAP_FRACTION = 0.05  # of a window's short side
MIN_GAP = 8  # px
# Windows with less coarse detail than this are dropped (see detail()). Set from a dry-run scan
# of 400 windows: every window the pipeline called a duplicate of another window scored < 2.9.
MIN_DETAIL = 3.0


@dataclass(frozen=True, slots=True)
class Box:
    """A window in source pixels."""

    x: int
    y: int
    width: int
    height: int

    @property
    def area(self) -> int:
        return self.width * self.height


@dataclass(frozen=True, slots=True)
class Item:
    """One file of the stream, in arrival order."""

    file: str  # name under the set folder
    kind: str  # "distinct" or one of COPY_KINDS
    source: str  # the manifest id of the photo it comes from
    origin: int | None  # for a copy: the stream position of the file it copies
    window_mp: float  # source megapixels of the window (for a copy, of its original's)


# --- windows -------------------------------------------------------------------------------


def window_grid(width: int, height: int, min_area: float) -> list[Box]:
    """The most non-overlapping 4:3 (or 3:4) windows of at least ``min_area`` px in a photo.

    Among grids with the most windows the one with the largest windows wins; the grid is
    centred and neighbours are at least a gap apart. Empty if not even one window fits.
    """
    best: tuple[int, int] = (0, 0)
    grid: list[Box] = []
    for rw, rh in ((4 / 3, 1.0), (1.0, 4 / 3)):
        nx = 0
        while True:
            nx += 1
            ny = 0
            while True:
                ny += 1
                short = min(
                    width / (nx * rw + (nx - 1) * GAP_FRACTION),
                    (width - (nx - 1) * MIN_GAP) / (nx * rw),
                    height / (ny * rh + (ny - 1) * GAP_FRACTION),
                    (height - (ny - 1) * MIN_GAP) / (ny * rh),
                )
                w, h = int(short * rw), int(short * rh)
                if w < 1 or h < 1 or w * h < min_area:
                    break
                if (nx * ny, w * h) > best:
                    best = (nx * ny, w * h)
                    grid = _place(width, height, nx, ny, w, h)
            if ny == 1:
                break  # not even one row of nx windows fits; more columns fit no better
    return grid


def _place(width: int, height: int, nx: int, ny: int, w: int, h: int) -> list[Box]:
    # Spread the spare pixels evenly over the gaps and the margins.
    gx = (width - nx * w) / (nx + 1)
    gy = (height - ny * h) / (ny + 1)
    return [
        Box(round(gx + i * (w + gx)), round(gy + j * (h + gy)), w, h)
        for j in range(ny)
        for i in range(nx)
    ]


def _capacity(sizes: list[tuple[int, int]], min_area: float) -> int:
    return sum(len(window_grid(w, h, min_area)) for w, h in sizes)


def largest_window_area(sizes: list[tuple[int, int]], needed: int) -> float:
    """The largest window area (px) at which the photos of ``sizes`` hold ``needed`` windows."""
    low, high = 1_000.0, float(max(w * h for w, h in sizes))
    if _capacity(sizes, low) < needed:
        raise SystemExit(f"the sources cannot hold {needed} windows")
    while high - low > 1_000:
        middle = (low + high) / 2
        low, high = (middle, high) if _capacity(sizes, middle) >= needed else (low, middle)
    return low


# --- sources -------------------------------------------------------------------------------


def manifest_groups() -> list[list[dict[str, str]]]:
    """Kept manifest rows, one list per photo (a hard-negative group is one list)."""
    with fetch_originals.MANIFEST.open(newline="") as handle:
        rows = [
            r for r in csv.DictReader(handle) if r["status"] == "kept" and r["id"] not in EXCLUDED
        ]
    groups: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        groups.setdefault(row["group"] or row["id"], []).append(row)
    return list(groups.values())


def _package(row: dict[str, str]) -> str:
    return row["source"].split(":", 1)[1].split("=", 1)[0]


def _source_pixels(tree: Path, row: dict[str, str]) -> NDArray[np.uint8]:
    """The photo of one manifest row as a viewer shows it, full size, BGR."""
    from PIL import Image, ImageOps

    if "@" in row["file"]:
        spec = fetch_originals.HARDNEG_VIDEOS[row["group"]]
        frames = fetch_originals._video_frames(tree, spec)
        found = next(c for c in frames if c.file == row["file"])
    else:
        found = fetch_originals._load(tree, _package(row), row["file"])
    if found.sha256 != row["sha256"]:
        raise SystemExit(f"{row['file']}: not the file the manifest lists (sha256 differs)")
    image = ImageOps.exif_transpose(found.image)
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        image = white
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def detail(window: NDArray[np.uint8]) -> float:
    """Coarse structure of a window: mean absolute Laplacian of its grey 64 x 48 thumbnail.

    At that size sensor noise and fine texture (sand, a clear sky's JPEG grain) average out,
    so a flat patch scores ~1-2 and any window with a subject scores far more.
    """
    grey = cv2.cvtColor(window, cv2.COLOR_BGR2GRAY)
    size = (64, 48) if grey.shape[1] >= grey.shape[0] else (48, 64)
    small = cv2.resize(grey, size, interpolation=cv2.INTER_AREA).astype(np.float32)
    return float(np.abs(cv2.Laplacian(small, cv2.CV_32F)).mean())


def _cut(job: tuple[list[dict[str, str]], float, Path | None, tuple[int, int]]) -> list[Any]:
    """Cut one photo (or one hard-negative group) into windows; write them unless a survey.

    Returns one dict per window: file name, source id, source megapixels, detail.
    """
    rows, min_area, folder, (width, height) = job
    tree = CACHE / "x"
    made = []
    for member, row in enumerate(rows):
        pixels = _source_pixels(tree, row)
        boxes = window_grid(pixels.shape[1], pixels.shape[0], min_area)
        for k in range(member, len(boxes), len(rows)):
            box = boxes[k]
            name = f"{row['id']}-{k:03d}.jpg"
            crop = pixels[box.y : box.y + box.height, box.x : box.x + box.width]
            score = detail(crop)
            made.append({"file": name, "source": row["id"], "mp": box.area / 1e6, "detail": score})
            if folder is None or score < MIN_DETAIL:
                continue
            size = (height, width) if box.height > box.width else (width, height)
            grow = size[0] > box.width
            interpolation = cv2.INTER_CUBIC if grow else cv2.INTER_AREA
            photo = np.asarray(cv2.resize(crop, size, interpolation=interpolation))
            rng = np.random.default_rng([SEED, zlib.crc32(name.encode())])
            noisy = photo.astype(np.int16) + rng.normal(0, 2.5, photo.shape).astype(np.int16)
            quality = int(rng.integers(85, 95))
            params = [cv2.IMWRITE_JPEG_QUALITY, quality]
            cv2.imwrite(str(folder / name), np.clip(noisy, 0, 255).astype(np.uint8), params)
    return made


def _cut_all(
    groups: list[list[dict[str, str]]], min_area: float, folder: Path | None, size: tuple[int, int]
) -> list[dict[str, Any]]:
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    jobs = [(rows, min_area, folder, size) for rows in groups]
    with Pool(2) as pool:
        return [w for made in pool.imap(_cut, jobs) for w in made]


# --- the stream ----------------------------------------------------------------------------


def _copy(kind: str, original: Path, stem: Path) -> Path:
    """A copy of ``original`` of one kind, as a NAS receives it; returns its path."""
    if kind == "exact":
        out = stem.with_suffix(".jpg")
        shutil.copyfile(original, out)
        return out
    image = cv2.imread(str(original), cv2.IMREAD_COLOR)
    if image is None:
        raise SystemExit(f"cannot read {original}")
    h, w = image.shape[:2]
    quality = 90
    if kind == "messenger":
        scale = 1280 / max(w, h)
        size = (round(w * scale), round(h * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        quality = 75
    elif kind == "resize_50":
        image = cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    elif kind == "crop_5":
        dx, dy = round(w * 0.05), round(h * 0.05)
        image = image[dy : h - dy, dx : w - dx]
    elif kind == "png":
        out = stem.with_suffix(".png")
        cv2.imwrite(str(out), image)
        return out
    out = stem.with_suffix(".jpg")
    cv2.imwrite(str(out), image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return out


@dataclass(frozen=True, slots=True)
class Stream:
    """The files to feed, in arrival order, with what each one is."""

    folder: Path
    items: tuple[Item, ...]
    sources_total: int  # photos in the manifest (hard-negative group members counted singly)
    windows_dropped: int  # cut but dropped for want of detail

    @property
    def files(self) -> list[Path]:
        return [self.folder / item.file for item in self.items]

    def head(self, count: int) -> Stream:
        return Stream(self.folder, self.items[:count], self.sources_total, self.windows_dropped)


def _plan(
    windows: list[dict[str, Any]], total: int, rng: np.random.Generator
) -> list[tuple[str, int | None, dict[str, Any]]]:
    """(kind, origin position, window) for each arrival, copies after FIRST_COPY arrivals."""
    copies = round(COPY_SHARE * total)
    chosen = rng.choice(len(windows), total - copies, replace=False)
    distinct = [windows[i] for i in rng.permutation(chosen)]
    at = set(rng.choice(np.arange(FIRST_COPY, total), copies, replace=False).tolist())
    kinds = [COPY_KINDS[i % len(COPY_KINDS)] for i in range(copies)]
    kinds = [kinds[i] for i in rng.permutation(copies)]
    plan: list[tuple[str, int | None, dict[str, Any]]] = []
    seen: list[int] = []  # positions of the distinct files so far
    for position in range(total):
        if position in at:
            origin = seen[int(rng.integers(len(seen)))]
            plan.append((kinds.pop(), origin, plan[origin][2]))
        else:
            seen.append(position)
            plan.append(("distinct", None, distinct.pop()))
    return plan


def library_stream(count: int, size: tuple[int, int]) -> Stream:
    """The first ``count`` files of the seeded library stream at ``size`` (built once, cached)."""
    total = max(count, PLANNED)
    folder = LIBRARY_DIR / f"{size[0]}x{size[1]}-n{total}-v{VERSION}"
    saved = folder / "stream.json"
    if not saved.exists():
        _build(total, size, folder)
    data = json.loads(saved.read_text())
    return Stream(
        folder,
        tuple(Item(**item) for item in data["items"]),
        data["sources_total"],
        data["windows_dropped"],
    ).head(count)


def _build(total: int, size: tuple[int, int], folder: Path) -> None:
    fetch_originals.fetch_debs(CACHE)
    groups = manifest_groups()
    sizes = [(int(rows[0]["width"]), int(rows[0]["height"])) for rows in groups]
    distinct = total - round(COPY_SHARE * total)
    # Survey first (no files written): flat windows are dropped, so find the window size at
    # which enough windows with detail remain; a quarter or so is flat on these photos.
    needed = distinct * 1.3
    while True:
        area = largest_window_area(sizes, int(needed))
        made = _cut_all(groups, area, None, size)
        kept = [w for w in made if w["detail"] >= MIN_DETAIL]
        print(
            f"library set: {len(made)} windows of >= {area / 1e6:.3f} MP, {len(kept)} with detail",
            flush=True,
        )
        if len(kept) >= distinct:
            break
        needed *= 1.02 * distinct / len(kept)
    shutil.rmtree(folder, ignore_errors=True)
    _cut_all(groups, area, folder / "windows", size)
    rng = np.random.default_rng(SEED)
    (folder / "copies").mkdir()
    items: list[dict[str, Any]] = []
    for position, (kind, origin, window) in enumerate(_plan(kept, total, rng)):
        if origin is None:
            name = f"windows/{window['file']}"
        else:
            source = folder / items[origin]["file"]
            stem = folder / "copies" / f"{position:05d}-{kind}"
            name = _copy(kind, source, stem).relative_to(folder).as_posix()
        items.append(
            {
                "file": name,
                "kind": kind,
                "source": window["source"],
                "origin": origin,
                "window_mp": window["mp"],
            }
        )
    state = {
        "items": items,
        "sources_total": sum(len(rows) for rows in groups),
        "windows_dropped": len(made) - len(kept),
        "window_area_px": area,
    }
    (folder / "stream.json").write_text(json.dumps(state, indent=1))
    (folder / "windows.json").write_text(json.dumps(made, indent=1))


def composition(stream: Stream) -> dict[str, Any]:
    """What the stream holds: distinct files, copies per kind, sources, window sizes."""
    kinds = Counter(item.kind for item in stream.items)
    distinct = [item.window_mp for item in stream.items if item.kind == "distinct"]
    return {
        "files": len(stream.items),
        "distinct": kinds["distinct"],
        "copies": {k: kinds[k] for k in COPY_KINDS},
        "sources": len({item.source for item in stream.items if item.kind == "distinct"}),
        "sources_total": stream.sources_total,
        "window_mp_min": min(distinct),
        "window_mp_median": float(np.median(distinct)),
        "window_mp_max": max(distinct),
        "windows_dropped": stream.windows_dropped,
    }


def expected_tier(item: Item) -> str:
    return EXPECTED[item.kind]
