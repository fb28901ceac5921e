"""Write the labelled accuracy set: originals, one altered copy per transform class, hard negatives.

Deterministic for a given originals folder, hard-negative folder and seed: the same files with
the same bytes come out every time (the subset, the screenshot frames and the caption texts are
drawn from a ``random.Random(seed)``; encoders are pinned by the virtualenv).

Layout of the output folder (sorted path order is the order files are "scanned": originals
first, then hard negatives, then the copies):

    0_originals/<id>.jpg
    1_hardneg/<group>__<n>.jpg
    2_copies/<id>__<transform>.<ext>
    labels.csv      file, original_id, transform, group

A copy's ``original_id`` is the id of the original it was made from; a hard negative's is its own
id, so two hard negatives never share one. ``group`` is set for hard negatives only.

Usage: python bench/accuracy/generate.py ORIGINALS HARDNEG OUT [--seed 7] [--subset 60]
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageEnhance, ImageOps

ORIENTATION = 0x0112
EDIT_QUALITY = 92  # what a photo editor typically writes back

CAPTIONS = (
    "Summer holidays 2019 - the lake at dawn",
    "Happy birthday Grandma!",
    "Look at this :)",
    "Weekend trip, day 2",
    "Our garden in May",
)


@dataclass(frozen=True, slots=True)
class Output:
    """Bytes of one generated copy and its file extension."""

    data: bytes
    ext: str


Transform = Callable[[bytes, Image.Image, random.Random], Output]


def _exif_of(image: Image.Image) -> Image.Exif:
    exif = image.getexif()
    exif[ORIENTATION] = 1
    return exif


def _jpeg(image: Image.Image, quality: int, exif: Image.Exif | None = None) -> Output:
    out = io.BytesIO()
    kwargs: dict[str, object] = {"quality": quality}
    if exif is not None:
        kwargs["exif"] = exif.tobytes()
    image.save(out, "JPEG", **kwargs)
    return Output(out.getvalue(), "jpg")


def _edit(image: Image.Image, src: Image.Image) -> Output:
    """An edited photo written back as JPEG with its metadata, as photo editors do."""
    return _jpeg(image, EDIT_QUALITY, _exif_of(src))


def strip_app1(data: bytes) -> bytes:
    """The JPEG without its APP1 (EXIF/XMP) segments; the image data is copied unchanged."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    out = bytearray(data[:2])
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError("bad JPEG marker")
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data
            out += data[pos:]
            return bytes(out)
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker != 0xE1:
            out += data[pos : pos + 2 + length]
        pos += 2 + length
    raise ValueError("JPEG without scan")


def _resize(image: Image.Image, scale: float) -> Image.Image:
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _long_side(image: Image.Image, side: int) -> Image.Image:
    return _resize(image, side / max(image.size)) if max(image.size) > side else image


def _crop(image: Image.Image, fraction: float) -> Image.Image:
    dx, dy = round(image.width * fraction), round(image.height * fraction)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


def _hue_saturation(image: Image.Image) -> Image.Image:
    hsv = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + 8) % 180  # 16 degrees of hue
    hsv[..., 1] = np.clip(hsv[..., 1] * 1.25, 0, 255)
    return Image.fromarray(cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB))


def _blur(image: Image.Image) -> Image.Image:
    sigma = max(1.5, max(image.size) / 600)
    return Image.fromarray(cv2.GaussianBlur(np.asarray(image), (0, 0), sigma))


def _caption(image: Image.Image, rng: random.Random) -> Image.Image:
    pixels = np.asarray(image)
    height = max(24, image.height // 8)
    bar = np.full((height, image.width, 3), 255, np.uint8)
    scale = height / 40
    cv2.putText(
        bar,
        rng.choice(CAPTIONS),
        (height // 3, int(height * 0.68)),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (20, 20, 20),
        max(1, round(scale * 2)),
        cv2.LINE_AA,
    )
    return Image.fromarray(np.vstack([pixels, bar]))


def _letterbox(image: Image.Image) -> Image.Image:
    w, h = image.size
    size = (w, round(w * 9 / 16)) if w * 9 >= h * 16 else (round(h * 16 / 9), h)
    canvas = Image.new("RGB", size, (0, 0, 0))
    canvas.paste(image, ((size[0] - w) // 2, (size[1] - h) // 2))
    return canvas


def _fit(image: Image.Image, box_w: int, box_h: int) -> NDArray[np.uint8]:
    scale = min(box_w / image.width, box_h / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return np.asarray(image.resize(size, Image.Resampling.LANCZOS))


def _paste(canvas: NDArray[np.uint8], photo: NDArray[np.uint8], x: int, y: int) -> None:
    canvas[y : y + photo.shape[0], x : x + photo.shape[1]] = photo


def _phone_screenshot(image: Image.Image, rng: random.Random) -> NDArray[np.uint8]:
    w, h = 1080, 2340
    canvas = np.full((h, w, 3), 12, np.uint8)
    white = (235, 235, 235)
    cv2.putText(canvas, f"{rng.randint(7, 22)}:{rng.randint(10, 59)}", (40, 70),
                cv2.FONT_HERSHEY_SIMPLEX, 1.6, white, 3, cv2.LINE_AA)  # fmt: skip
    cv2.rectangle(canvas, (w - 150, 35), (w - 60, 75), white, 3)
    cv2.rectangle(canvas, (w - 145, 40), (w - 145 + rng.randint(20, 80), 70), white, -1)
    cv2.putText(canvas, "<", (40, 200), cv2.FONT_HERSHEY_SIMPLEX, 2.2, white, 4, cv2.LINE_AA)
    cv2.putText(canvas, "IMG_" + str(rng.randint(1000, 9999)), (120, 195),
                cv2.FONT_HERSHEY_SIMPLEX, 1.4, white, 3, cv2.LINE_AA)  # fmt: skip
    photo = _fit(image, w, h - 600)
    _paste(canvas, photo, (w - photo.shape[1]) // 2, 260 + (h - 600 - photo.shape[0]) // 2)
    for k in range(4):  # share, edit, favourite, delete
        cx = 135 + k * 270
        cv2.circle(canvas, (cx, h - 170), 38, white, 4, cv2.LINE_AA)
    return canvas


def _desktop_screenshot(image: Image.Image, rng: random.Random) -> NDArray[np.uint8]:
    w, h = 1920, 1080
    canvas = np.full((h, w, 3), (58, 110, 165), np.uint8)  # desktop background
    x0, y0, x1, y1 = 120, 60, w - 120, h - 80
    cv2.rectangle(canvas, (x0, y0), (x1, y1), (40, 40, 40), -1)
    cv2.rectangle(canvas, (x0, y0), (x1, y0 + 40), (225, 225, 225), -1)  # title bar
    title = f"DSC{rng.randint(1000, 9999)}.JPG - Image Viewer"
    cv2.putText(canvas, title, (x0 + 20, y0 + 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (30, 30, 30), 2)
    for k, colour in enumerate(((90, 90, 230), (80, 190, 240), (90, 200, 100))):
        cv2.circle(canvas, (x1 - 30 - 35 * k, y0 + 20), 11, colour, -1, cv2.LINE_AA)
    cv2.rectangle(canvas, (x0, y1 - 50), (x1, y1), (60, 60, 60), -1)  # toolbar
    for k in range(6):
        cv2.rectangle(canvas, (x0 + 30 + 60 * k, y1 - 40), (x0 + 60 + 60 * k, y1 - 10),
                      (200, 200, 200), 2)  # fmt: skip
    cv2.rectangle(canvas, (0, h - 48), (w, h), (30, 30, 30), -1)  # task bar
    photo = _fit(image, x1 - x0 - 40, y1 - y0 - 110)
    _paste(
        canvas, photo, (x0 + x1 - photo.shape[1]) // 2, (y0 + 45 + y1 - 55 - photo.shape[0]) // 2
    )
    return canvas


def _screenshot(image: Image.Image, rng: random.Random) -> Output:
    maker = _phone_screenshot if rng.random() < 0.5 else _desktop_screenshot
    out = io.BytesIO()
    Image.fromarray(maker(image, rng)).save(out, "PNG")
    return Output(out.getvalue(), "png")


def _tagged_rotation(src: Image.Image) -> Output:
    # Stored pixels turned 90 degrees counter-clockwise; orientation 6 tells a viewer to turn
    # them clockwise, so the photo is shown exactly as the original.
    exif = _exif_of(src)
    exif[ORIENTATION] = 6
    return _jpeg(src.transpose(Image.Transpose.ROTATE_90), EDIT_QUALITY, exif)


def _save(image: Image.Image, fmt: str, ext: str, **kwargs: object) -> Output:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return Output(out.getvalue(), ext)


TRANSFORMS: dict[str, Transform] = {
    "exact": lambda data, im, rng: Output(data, "jpg"),
    "jpeg_q70": lambda data, im, rng: _jpeg(im, 70, _exif_of(im)),
    "jpeg_q40": lambda data, im, rng: _jpeg(im, 40, _exif_of(im)),
    "png": lambda data, im, rng: _save(im, "PNG", "png"),
    "webp": lambda data, im, rng: _save(im, "WEBP", "webp", quality=80),
    "resize_50": lambda data, im, rng: _edit(_resize(im, 0.5), im),
    "resize_25": lambda data, im, rng: _edit(_resize(im, 0.25), im),
    "long_side_800": lambda data, im, rng: _edit(_long_side(im, 800), im),
    "exif_stripped": lambda data, im, rng: Output(strip_app1(data), "jpg"),
    "rot90_exif_tagged": lambda data, im, rng: _tagged_rotation(im),
    "rot90": lambda data, im, rng: _edit(im.transpose(Image.Transpose.ROTATE_270), im),
    "rot180": lambda data, im, rng: _edit(im.transpose(Image.Transpose.ROTATE_180), im),
    "mirror": lambda data, im, rng: _edit(ImageOps.mirror(im), im),
    "crop_5": lambda data, im, rng: _edit(_crop(im, 0.05), im),
    "crop_15": lambda data, im, rng: _edit(_crop(im, 0.15), im),
    "brightness_p20": lambda data, im, rng: _edit(ImageEnhance.Brightness(im).enhance(1.2), im),
    "contrast_m20": lambda data, im, rng: _edit(ImageEnhance.Contrast(im).enhance(0.8), im),
    "hue_saturation": lambda data, im, rng: _edit(_hue_saturation(im), im),
    "grayscale": lambda data, im, rng: _edit(ImageOps.grayscale(im), im),
    "gaussian_blur": lambda data, im, rng: _edit(_blur(im), im),
    "caption_bar": lambda data, im, rng: _edit(_caption(im, rng), im),
    "letterbox_16x9": lambda data, im, rng: _edit(_letterbox(im), im),
    "screenshot": lambda data, im, rng: _screenshot(im, rng),
    "messenger": lambda data, im, rng: _jpeg(_long_side(im, 1280), 75),
}


@dataclass(frozen=True, slots=True)
class Label:
    """One row of labels.csv."""

    file: str
    original_id: str
    transform: str
    group: str


def choose_subset(ids: list[str], subset: int, rng: random.Random) -> list[str]:
    return sorted(rng.sample(ids, min(subset, len(ids))))


def generate(originals: Path, hardneg: Path, out: Path, *, seed: int, subset: int) -> list[Label]:
    """Write the labelled set into ``out`` (emptied first) and return its labels."""
    if out.exists():
        shutil.rmtree(out)
    dirs = {name: out / name for name in ("0_originals", "1_hardneg", "2_copies")}
    for folder in dirs.values():
        folder.mkdir(parents=True)
    rng = random.Random(seed)
    labels: list[Label] = []
    ids = sorted(p.stem for p in originals.glob("*.jpg"))
    for oid in ids:
        target = dirs["0_originals"] / f"{oid}.jpg"
        shutil.copyfile(originals / f"{oid}.jpg", target)
        labels.append(Label(str(target.relative_to(out)), oid, "original", ""))
    for path in sorted(hardneg.glob("*.jpg")):
        target = dirs["1_hardneg"] / path.name
        shutil.copyfile(path, target)
        group = path.stem.split("__")[0]
        labels.append(Label(str(target.relative_to(out)), path.stem, "hardneg", group))
    for oid in choose_subset(ids, subset, rng):
        data = (originals / f"{oid}.jpg").read_bytes()
        with Image.open(io.BytesIO(data)) as opened:
            image = opened.convert("RGB")
            image.info["exif"] = opened.info.get("exif", b"")
            exif = opened.getexif()
        for name, transform in TRANSFORMS.items():
            # Each transform gets its own stream so adding one never changes the others' bytes.
            sub_rng = random.Random(f"{seed}:{oid}:{name}")
            src = image.copy()
            src.getexif().update(exif)
            result = transform(data, src, sub_rng)
            target = dirs["2_copies"] / f"{oid}__{name}.{result.ext}"
            target.write_bytes(result.data)
            labels.append(Label(str(target.relative_to(out)), oid, name, ""))
    write_labels(out / "labels.csv", labels)
    return labels


def write_labels(path: Path, labels: list[Label]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "original_id", "transform", "group"])
        writer.writerows([lab.file, lab.original_id, lab.transform, lab.group] for lab in labels)


def read_labels(path: Path) -> list[Label]:
    with path.open(newline="") as handle:
        return [Label(**row) for row in csv.DictReader(handle)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("originals", type=Path)
    parser.add_argument("hardneg", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--subset", type=int, default=60, help="originals that get copies")
    args = parser.parse_args(argv)
    labels = generate(args.originals, args.hardneg, args.out, seed=args.seed, subset=args.subset)
    print(f"wrote {len(labels)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
