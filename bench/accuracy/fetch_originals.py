"""Fetch the accuracy benchmark's real photographs from Debian and PyPI packages, and audit them.

Every photograph comes from a package that can be installed here: Debian wallpaper, data and
documentation packages (downloaded with ``apt-get download`` and unpacked with ``dpkg -x`` into
``bench/.cache``; nothing is installed system-wide) and the sample photos that scikit-image,
scikit-learn and matplotlib ship. Drawings, renderings, paintings, screenshots and abstract
gradients were excluded by eye from contact sheets; the inclusion lists below are the result.

Output (all under ``bench/.cache``, which git ignores):
- ``originals/<id>.jpg``: one JPEG per original photo (long side at most 2400 px, quality 92,
  EXIF orientation applied, a small EXIF block so that "EXIF stripped" copies differ in bytes).
- ``hardneg/<group>__<member>.jpg``: genuinely different photos of one scene (video frames 0.4-1 s
  apart, stereo pairs, other viewpoints, other exposures), normalised the same way.
- ``bench/accuracy/originals_manifest.csv`` (committed): source package and version, file,
  sha256 of the shipped file, kept/dropped and why.

The audit compares every pair of candidates by pHash and by the correlation of 16x16 grey
thumbnails (also against the mirrored thumbnail); pairs over the flag thresholds were looked at,
and the ones that are the same photograph are listed in ``AUDIT_DROPS``.

Usage: python bench/accuracy/fetch_originals.py [--cache bench/.cache] [--audit-only]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import imagehash
import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = None

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "originals_manifest.csv"
MAX_SIDE = 2400
JPEG_QUALITY = 92

# Debian 12 (bookworm) packages, pinned to the version the manifest was made from.
DEBS: dict[str, str] = {
    "lomiri-wallpapers-16.04": "20.04.0-2",
    "lomiri-wallpapers-20.04": "20.04.0-2",
    "mate-backgrounds": "1.26.0-1",
    "plasma-workspace-wallpapers": "4:5.27.5-2",
    "palapeli-data": "4:22.12.3-1",
    "opencv-doc": "4.6.0+dfsg-12",
    "visp-images-data": "3.5.0-1",
    "hugin-data": "2022.0.0+dfsg-2",
    "jigzo-data": "0.6.1-7.1",
    "stellarium-data": "0.22.2-1",
    "digikam-data": "4:7.9.0-1",
}

_LOMIRI16 = "usr/share/backgrounds/"
_MATE = "usr/share/backgrounds/mate/nature/"
_PLASMA = "usr/share/wallpapers/{}/contents/images/{}"
_CV = "usr/share/doc/opencv-doc/examples/"
_HUGIN = "usr/share/hugin/xrc/data/help_en_EN/"
_VISP = "usr/share/visp-images-data/ViSP-images/"
_NEBULAE = "usr/share/stellarium/nebulae/default"
_JIGZO = "usr/share/games/jigzo/puzzles/00_default/"

# (package, file inside the package) for every photograph used as an original.
DEB_PHOTOS: list[tuple[str, str]] = [
    *[
        ("lomiri-wallpapers-16.04", _LOMIRI16 + n)
        for n in (
            "Bridge_by_Sander_Klootwijk.jpg",
            "Dragonfly_by_Bolly.jpg",
            "Picture_0B_by_freespace.jpg",
            "Picture_1A_by_freespace.jpg",
            "Wine_by_Jakkub_Mede.jpg",
            "aitzgorri_by_Aitzol_Berasategi.jpg",
            "free_by_Peter_Nerlich.jpg",
            "friends_by_Aitzol_Berasategi.jpg",
            "life_by_Aitzol_Berasategi.jpg",
            "picosdeeuropa_by_Aitzol_Berasategi.jpg",
            "seeding_by_Clements_Engelhardt.jpg",
            "sunset_by_Aitzol_Berasategi.jpg",
        )
    ],
    ("lomiri-wallpapers-20.04", _LOMIRI16 + "Kleiber_by_Lukas_Baubkus.jpg"),
    *[
        ("mate-backgrounds", _MATE + n + ".jpg")
        for n in [
            "Aqua",
            "Blinds",
            "Dune",
            "FreshFlower",
            "Garden",
            "GreenMeadow",
            "LadyBird",
            "RainDrops",
            "Storm",
            "TwoWings",
            "Wood",
            "YellowFlower",
        ]
    ],
    *[
        ("plasma-workspace-wallpapers", _PLASMA.format(n, "2560x1600.jpg"))
        for n in [
            "BytheWater",
            "ColdRipple",
            "ColorfulCups",
            "DarkestHour",
            "EveningGlow",
            "FallenLeaf",
            "Grey",
            "Kite",
            "OneStandsOut",
            "Path",
            "summer_1am",
        ]
    ],
    ("plasma-workspace-wallpapers", _PLASMA.format("Volna", "5120x2880.jpg")),
    *[
        ("palapeli-data", "usr/share/palapeli/collection/" + n + ".jpg")
        for n in [
            "castle-maintenon",
            "cincinnati-bridge",
            "citrus-fruits",
            "european-honey-bee",
            "panther-chameleon-female",
        ]
    ],
    *[
        ("opencv-doc", _CV + n)
        for n in (
            "alphamat/input_images/plant.jpg",
            "data/apple.jpg",
            "data/baboon.jpg",
            "data/board.jpg",
            "data/box_in_scene.png",
            "data/building.jpg",
            "data/butterfly.jpg",
            "data/chicky_512.png",
            "data/ela_original.jpg",
            "data/fruits.jpg",
            "data/home.jpg",
            "data/licenseplate_motion.jpg",
            "data/messi5.jpg",
            "data/orange.jpg",
            "data/squirrel_cls.jpg",
            "dnn_superres/butterfly.png",
            "hfs/data/000.jpg",
            "reg/home.png",
            *[f"text/scenetext0{i}.jpg" for i in range(1, 7)],
            *[f"text/scenetext_segmented_word0{i}.jpg" for i in range(1, 6)],
        )
    ],
    ("visp-images-data", _VISP + "Solvay/Solvay_conference_1927_Version2_2126x1463.jpg"),
    *[
        ("hugin-data", _HUGIN + n)
        for n in (
            "360px-Pantheon-150x100-rect-panini.jpg",
            "600px-Tuebingen_Neckarfront_small15_2006-06-11.jpg",
            "800px-C_Marchi-GrandCentral-adj.jpg",
            "Big_ben_cylindrical.jpg",
            "CA_fringes00.jpg",
            "Medinet_habu_horizontal_fisheye.jpg",
            "300px-Lamp_enfuse.jpg",
        )
    ],
    ("digikam-data", "usr/share/digikam/about/images/body-background.jpg"),
    *[
        ("jigzo-data", _JIGZO + n + ".pzl")
        for n in [
            "bike-3x4",
            "bird-2x3",
            "blackberry-3x3",
            "castle-6x3",
            "clouds-4x4",
            "gorilla2-3x3",
            "heli-4x3",
            "horse-4x3",
            "penguin-3x2",
            "tobogan-4x3",
            "train-2x2",
            "windmill-4x4",
        ]
    ],
]

# Astrophotographs (real telescope photographs): every NEBULA_STEP-th PNG of at least
# 512 px in stellarium's nebula set, so the set holds some of the dark, low-detail photos
# that make perceptual hashes collide.
NEBULA_STEP = 3

PYPI_PHOTOS: list[tuple[str, str]] = [
    *[
        ("scikit-image", n)
        for n in [
            "astronaut.png",
            "brick.png",
            "camera.png",
            "chelsea.png",
            "clock_motion.png",
            "coffee.png",
            "coins.png",
            "grass.png",
            "gravel.png",
            "hubble_deep_field.jpg",
            "ihc.png",
            "moon.png",
            "page.png",
            "retina.jpg",
            "rocket.jpg",
        ]
    ],
    ("scikit-learn", "china.jpg"),
    ("scikit-learn", "flower.jpg"),
    ("matplotlib", "grace_hopper.jpg"),
]


@dataclass(frozen=True, slots=True)
class FrameSpec:
    """Frames taken from one real camera video, by time in seconds."""

    package: str
    file: str
    seconds: tuple[float, ...]


# Hard-negative groups: genuinely different photographs of one scene or object.
HARDNEG_STILLS: dict[str, list[tuple[str, str]]] = {
    "cv_aero": [("opencv-doc", _CV + "data/aero1.jpg"), ("opencv-doc", _CV + "data/aero3.jpg")],
    "cv_aloe_stereo": [
        ("opencv-doc", _CV + "data/aloeL.jpg"),
        ("opencv-doc", _CV + "data/aloeR.jpg"),
    ],
    "cv_basketball_frames": [
        ("opencv-doc", _CV + "data/basketball1.png"),
        ("opencv-doc", _CV + "data/basketball2.png"),
    ],
    "cv_graffiti_viewpoints": [
        ("opencv-doc", _CV + "data/graf1.png"),
        ("opencv-doc", _CV + "data/graf3.png"),
    ],
    "cv_leuven_exposure": [
        ("opencv-doc", _CV + "data/leuvenA.jpg"),
        ("opencv-doc", _CV + "data/leuvenB.jpg"),
    ],
    "cv_rubberwhale_frames": [
        ("opencv-doc", _CV + "data/rubberwhale1.png"),
        ("opencv-doc", _CV + "data/rubberwhale2.png"),
    ],
    "cv_chessboard_poses": [("opencv-doc", _CV + f"data/left0{i}.jpg") for i in (1, 2, 3, 4)],
    "sk_motorcycle_stereo": [
        ("scikit-image", "motorcycle_left.png"),
        ("scikit-image", "motorcycle_right.png"),
    ],
    "visp_cube_frames": [
        ("visp-images-data", _VISP + f"cube/image.00{i:02d}.pgm") for i in (0, 40, 79)
    ],
    "visp_mbt_cube_frames": [
        ("visp-images-data", _VISP + f"mbt/cube/image00{i:02d}.pgm") for i in (0, 40, 80)
    ],
    "visp_mire_frames": [
        ("visp-images-data", _VISP + f"mire-2/image.0{i:03d}.pgm") for i in (1, 15, 40)
    ],
}
HARDNEG_VIDEOS: dict[str, FrameSpec] = {
    "cv_vtest_frames": FrameSpec("opencv-doc", _CV + "data/vtest.avi", (10.0, 10.5, 11.5)),
    "cv_tree_frames": FrameSpec("opencv-doc", _CV + "data/tree.avi", (1.0, 1.6, 2.6)),
}

# Found by the audit: candidates that are the same photograph as another one (kept one per
# group), or that turned out not to be photographs. Key: source label, value: reason.
AUDIT_DROPS: dict[str, str] = {}

# Files looked at and left out, recorded in the manifest so the audit can be followed.
CONSIDERED_DROPPED: list[tuple[str, str, str]] = [
    ("opencv-doc", _CV + "data/ela_modified.jpg", "edited copy of data/ela_original.jpg"),
    ("opencv-doc", _CV + "data/starry_night.jpg", "painting"),
    ("opencv-doc", _CV + "data/Blender_Suzanne1.jpg", "rendering"),
    (
        "hugin-data",
        _HUGIN + "600px-Tuebingen_Neckarfront_withdustspots_small15_2006-06-11.jpg",
        "same photo as 600px-Tuebingen_Neckarfront_small15 with dust spots added",
    ),
    (
        "hugin-data",
        _HUGIN + "Big_ben_equirectangular.jpg",
        "same panorama as Big_ben_cylindrical.jpg, other projection",
    ),
    (
        "hugin-data",
        _HUGIN + "Medinet_habu_horizontal_stereographic.jpg",
        "same photo as Medinet_habu_horizontal_fisheye.jpg, other projection",
    ),
    (
        "visp-images-data",
        _VISP + "Solvay/Solvay_conference_1927_Version2_1280x881.jpg",
        "same photo as the 2126x1463 version (also shipped at 1024, 640 and as PNG)",
    ),
    (
        "visp-images-data",
        _VISP + "faces/1280px-Solvay_conference_1927.png",
        "another scan of the Solvay 1927 photo",
    ),
    ("visp-images-data", _VISP + "Klimt/Klimt.png", "painting"),
    (
        "mate-backgrounds",
        "usr/share/backgrounds/mate/abstract/Elephants.jpg",
        "digital art; also shipped at two more sizes",
    ),
    ("plasma-workspace-wallpapers", _PLASMA.format("Autumn", "2560x1600.jpg"), "painting"),
    (
        "plasma-workspace-wallpapers",
        _PLASMA.format("Volna", "1920x1080.jpg"),
        "symlink to another size of the Volna photo",
    ),
    (
        "lomiri-wallpapers-16.04",
        _LOMIRI16 + "greentock_by_Peter_Nerlich.jpg",
        "rendering (clock face)",
    ),
    (
        "lomiri-wallpapers-16.04",
        _LOMIRI16 + "analogpattern_by_Peter_Nerlich.jpg",
        "abstract texture",
    ),
    ("lomiri-wallpapers-16.04", _LOMIRI16 + "umang_by_Abhishek_Mudgal.jpg", "gradient"),
    ("lomiri-wallpapers-20.04", _LOMIRI16 + "Infinite-Sea_by_Aury88.jpg", "composite artwork"),
    ("ukui-wallpapers", "usr/share/backgrounds/*", "all drawings or gradients"),
    ("gnome-backgrounds", "usr/share/backgrounds/gnome/*", "all drawings or patterns"),
    ("desktop-base", "usr/share/desktop-base/*", "all drawings"),
    ("wordpress-theme-twentytwentyone", "assets/images/*", "paintings"),
    ("tuxpaint-stamps-default", "usr/share/tuxpaint/stamps/*", "mostly drawings; cut-outs"),
    (
        "gimp-help-en",
        "usr/share/gimp/2.0/help/en/images/*",
        "mostly one photo under many filters, and screenshots",
    ),
]


def _nebula_object(label: str) -> str | None:
    """Catalogue designation of a stellarium nebula photo (m81-vasey -> m81), else None."""
    if f"{_NEBULAE}/" not in label:
        return None
    return label.rsplit("/", 1)[1].removesuffix(".png").split("-")[0]


# Pairs that the audit flags but that were checked by eye and are different photographs.
AUDIT_DISTINCT: set[frozenset[str]] = set()

PHASH_FLAG = 14
CORR_FLAG = 0.92


@dataclass(frozen=True, slots=True)
class Candidate:
    """One photograph before normalisation."""

    label: str  # "package:file" (frame time appended for video frames)
    source: str  # "deb:package=version" or "pypi:package"
    file: str
    sha256: str
    image: Image.Image


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)


def fetch_debs(cache: Path) -> Path:
    """Download and unpack every pinned package; returns the folder holding the trees."""
    debs = cache / "debs"
    tree = cache / "x"
    debs.mkdir(parents=True, exist_ok=True)
    for package, version in DEBS.items():
        target = tree / package
        if target.is_dir():
            continue
        existing = list(debs.glob(f"{package}_*.deb"))
        if not existing:
            _run(["apt-get", "download", f"{package}={version}"], cwd=debs)
            existing = list(debs.glob(f"{package}_*.deb"))
        target.mkdir(parents=True)
        _run(["dpkg", "-x", str(existing[0]), str(target)])
    return tree


def _open_bytes(data: bytes, file: str) -> Image.Image:
    if file.endswith(".pzl"):
        # jigzo puzzles: a text header, the JPEG photo, then PNG piece masks.
        start = data.index(b"\xff\xd8\xff")
        end = data.find(b"\x89PNG", start)
        data = data[start : end if end > 0 else len(data)]
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _pypi_path(package: str, name: str) -> Path:
    if package == "scikit-image":
        import skimage

        return Path(skimage.__file__).parent / "data" / name
    if package == "scikit-learn":
        import sklearn

        return Path(sklearn.__file__).parent / "datasets" / "images" / name
    if package == "matplotlib":
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data" / name
    raise ValueError(package)


def _load(tree: Path, package: str, file: str) -> Candidate:
    if package in DEBS:
        path = tree / package / file
        source = f"deb:{package}={DEBS[package]}"
    else:
        path = _pypi_path(package, file)
        import importlib.metadata

        source = f"pypi:{package}=={importlib.metadata.version(package)}"
    data = path.read_bytes()
    return Candidate(
        label=f"{package}:{file}",
        source=source,
        file=file,
        sha256=hashlib.sha256(data).hexdigest(),
        image=_open_bytes(data, file),
    )


def _video_frames(tree: Path, spec: FrameSpec) -> list[Candidate]:
    path = tree / spec.package / spec.file
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames: list[Candidate] = []
    try:
        # Sequential decoding: seeking is unreliable in these AVI files.
        wanted = {round(second * fps): second for second in spec.seconds}
        index = 0
        while wanted:
            ok, bgr = capture.read()
            if not ok:
                raise RuntimeError(f"cannot read {path} at frame {index}")
            second = wanted.pop(index, None)
            index += 1
            if second is None:
                continue
            image = Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            frames.append(
                Candidate(
                    label=f"{spec.package}:{spec.file}@{second:.1f}s",
                    source=f"deb:{spec.package}={DEBS[spec.package]}",
                    file=f"{spec.file}@{second:.1f}s",
                    sha256=digest,
                    image=image,
                )
            )
    finally:
        capture.release()
    return frames


def nebula_files(tree: Path) -> list[str]:
    folder = tree / "stellarium-data" / _NEBULAE
    big = [p for p in sorted(folder.glob("*.png")) if min(Image.open(p).size) >= 512]
    return [f"{_NEBULAE}/{p.name}" for p in big[::NEBULA_STEP]]


def normalise(image: Image.Image, description: str) -> bytes:
    """JPEG bytes of the photo as a viewer shows it, long side capped, with a small EXIF."""
    exif = image.getexif() if image.format == "JPEG" else Image.Exif()
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        image = background
    image = image.convert("RGB")
    if max(image.size) > MAX_SIDE:
        scale = MAX_SIDE / max(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
    exif[0x0112] = 1  # orientation already applied to the pixels
    exif[0x010E] = description  # ImageDescription
    exif[0x0131] = "dupwatch accuracy benchmark"  # Software
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY, exif=exif.tobytes())
    return out.getvalue()


def _thumb(image: Image.Image) -> NDArray[np.float32]:
    grey = np.asarray(image.convert("L").resize((16, 16), Image.Resampling.BOX), np.float32)
    grey -= grey.mean()
    norm = float(np.linalg.norm(grey))
    return grey / norm if norm > 0 else grey


def audit(
    named: dict[str, Image.Image], groups: dict[str, str]
) -> list[tuple[str, str, int, float]]:
    """Flag candidate pairs that may be the same photograph (pHash or thumbnail correlation)."""
    labels = sorted(named)
    hashes = {k: imagehash.phash(named[k].convert("RGB")) for k in labels}
    thumbs = {k: _thumb(named[k]) for k in labels}
    flagged = []
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            if groups.get(a) is not None and groups.get(a) == groups.get(b):
                continue
            if frozenset((a, b)) in AUDIT_DISTINCT:
                continue
            # Photos of two different catalogue objects cannot be the same photograph; dark
            # frames with one central galaxy collide on coarse signals all the time.
            obj_a, obj_b = _nebula_object(a), _nebula_object(b)
            if obj_a is not None and obj_b is not None and obj_a != obj_b:
                continue
            distance = hashes[a] - hashes[b]
            corr = max(
                float((thumbs[a] * thumbs[b]).sum()),
                float((thumbs[a] * thumbs[b][:, ::-1]).sum()),
            )
            if distance <= PHASH_FLAG or corr >= CORR_FLAG:
                flagged.append((a, b, int(distance), corr))
    return flagged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=HERE.parent / ".cache")
    parser.add_argument("--audit-only", action="store_true", help="print flagged pairs only")
    args = parser.parse_args(argv)
    cache: Path = args.cache
    tree = fetch_debs(cache)

    originals = [_load(tree, p, f) for p, f in DEB_PHOTOS]
    originals += [_load(tree, "stellarium-data", f) for f in nebula_files(tree)]
    originals += [_load(tree, p, f) for p, f in PYPI_PHOTOS]
    hardneg: dict[str, list[Candidate]] = {
        g: [_load(tree, p, f) for p, f in members] for g, members in HARDNEG_STILLS.items()
    }
    for g, spec in HARDNEG_VIDEOS.items():
        hardneg[g] = _video_frames(tree, spec)

    named = {c.label: ImageOps.exif_transpose(c.image) for c in originals}
    groups: dict[str, str] = {}
    for g, members in hardneg.items():
        for c in members:
            named[c.label] = c.image
            groups[c.label] = g
    flagged = audit(named, groups)
    for a, b, distance, corr in flagged:
        print(f"flag phash={distance:2d} corr={corr:.3f}  {a}  <->  {b}")
    if args.audit_only:
        return 0

    out_orig = cache / "originals"
    out_hn = cache / "hardneg"
    for folder in (out_orig, out_hn):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.jpg"):
            old.unlink()
    rows = []
    seen_sha: dict[str, str] = {}
    number = 0
    for c in originals:
        reason = AUDIT_DROPS.get(c.label)
        if reason is None and c.sha256 in seen_sha:
            reason = f"byte-identical to {seen_sha[c.sha256]}"
        status = "dropped" if reason else "kept"
        oid = ""
        if not reason:
            number += 1
            oid = f"o{number:03d}"
            seen_sha[c.sha256] = c.label
            (out_orig / f"{oid}.jpg").write_bytes(normalise(c.image, oid))
        w, h = c.image.size
        rows.append(["original", oid, "", c.source, c.file, c.sha256, w, h, status, reason or ""])
    for g, members in hardneg.items():
        for k, c in enumerate(members):
            hid = f"{g}__{k}"
            (out_hn / f"{hid}.jpg").write_bytes(normalise(c.image, hid))
            w, h = c.image.size
            rows.append(["hardneg", hid, g, c.source, c.file, c.sha256, w, h, "kept", ""])
    for package, file, reason in CONSIDERED_DROPPED:
        source = f"deb:{package}={DEBS.get(package, 'bookworm')}"
        rows.append(["original", "", "", source, file, "", "", "", "dropped", reason])
    with MANIFEST.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "kind",
                "id",
                "group",
                "source",
                "file",
                "sha256",
                "width",
                "height",
                "status",
                "reason",
            ]
        )
        writer.writerows(rows)
    kept = sum(1 for r in rows if r[0] == "original" and r[8] == "kept")
    print(f"originals kept: {kept}; hard-negative groups: {len(hardneg)}; manifest: {MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
