"""Geometric alignment of two images: the similarity transform that maps one onto the other.

A copy of a photo differs from its original by a resize, a crop, a 90-degree rotation, a mirror,
a letterbox or a frame around it: all of these are a similarity transform (scale, rotation by a
multiple of 90 degrees, translation), possibly after a mirror. A different photo of the same
scene (another viewpoint, a camera that moved) is not explained by one, or only with a rotation
that is not a multiple of 90 degrees. Two ways to find the transform are offered: a cheap one
for copies that keep the whole frame (compare tiny thumbnails under the eight dihedral
variants) and ORB features matched with a ratio test and RANSAC for the rest.

Transforms are 2x3 float64 matrices mapping pixel coordinates of ``b`` (after the mirror, if
any) to pixel coordinates of ``a``.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

Image = NDArray[np.uint8]
Matrix = NDArray[np.float64]
Thumb = NDArray[np.float32]

_THUMB = 24  # thumbnail side for the dihedral comparison: enough to tell orientations apart


@dataclass(frozen=True, slots=True)
class Alignment:
    """One proposed way to lay ``b`` over ``a``."""

    matrix: Matrix  # 2x3, b (mirrored first when ``mirrored``) -> a
    mirrored: bool  # b is flipped left-right before ``matrix`` applies
    method: str  # "dihedral" or "features"
    matches: int  # ratio-test matches (features) or 0
    inliers: int  # RANSAC inliers (features) or 0
    correlation: float  # thumbnail correlation (dihedral) or inlier ratio (features)
    angle_error: float = 0.0  # degrees RANSAC's rotation was from a quarter turn (features)

    @property
    def scale(self) -> float:
        return math.sqrt(abs(float(np.linalg.det(self.matrix[:, :2]))))

    @property
    def angle(self) -> float:
        """Rotation in degrees, in (-180, 180]."""
        return math.degrees(math.atan2(self.matrix[1, 0], self.matrix[0, 0]))

    def describe(self) -> str:
        tx, ty = self.matrix[:, 2]
        mirror = "mirror+" if self.mirrored else ""
        return (
            f"{mirror}rotate {self.angle:.0f} scale {self.scale:.3f} "
            f"shift ({tx:.0f},{ty:.0f}) via {self.method}"
        )


def gray(image: Image) -> Image:
    if image.ndim == 2:
        return image
    return np.asarray(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), dtype=np.uint8)


def mirror(image: Image) -> Image:
    """``image`` flipped left to right, as a new contiguous array (cv2.flip: several times
    faster than copying a reversed numpy view)."""
    if image.size == 0:
        return np.ascontiguousarray(image[:, ::-1])
    return np.asarray(cv2.flip(np.ascontiguousarray(image), 1), dtype=np.uint8)


def _dihedral_matrix(k: int, width: int, height: int, sx: float, sy: float) -> Matrix:
    """The point map from a w x h image to its ``np.rot90(image, k)`` scaled by (sx, sy).

    Written on pixel centres so the result is exact for any size.
    """
    w, h = float(width), float(height)
    k %= 4
    if k == 0:
        rot = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    elif k == 1:  # (x, y) -> (y, w - 1 - x)
        rot = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, w - 1.0]])
    elif k == 2:  # (x, y) -> (w - 1 - x, h - 1 - y)
        rot = np.array([[-1.0, 0.0, w - 1.0], [0.0, -1.0, h - 1.0]])
    else:  # (x, y) -> (h - 1 - y, x)
        rot = np.array([[0.0, -1.0, h - 1.0], [1.0, 0.0, 0.0]])
    # Scale about pixel centres: x' = (x + 0.5) * s - 0.5.
    scale = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
    return np.asarray((scale @ np.vstack([rot, [0.0, 0.0, 1.0]]))[:2], dtype=np.float64)


def dihedral_correlations(thumb_a: Thumb, thumb_b: Thumb) -> NDArray[np.float64]:
    """The correlation of square thumbnail ``a`` with each dihedral variant of square thumbnail
    ``b``, at index ``4 * mirrored + turns`` (``b`` flipped left to right first when mirrored,
    then ``np.rot90`` by ``turns``); all 0 when either is plain.

    One product with the eight variants stacked: a pair's whole-frame and mirror tests read the
    same eight numbers.
    """
    a = thumb_a - thumb_a.mean()
    b = thumb_b - thumb_b.mean()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    if denom < 1e-6:
        return np.zeros(8)
    variants = np.stack([np.rot90(t, k) for t in (b, b[:, ::-1]) for k in range(4)])
    return np.asarray(variants.reshape(8, -1) @ a.ravel(), np.float64) / denom


def variant_fits(
    size_a: tuple[int, ...], size_b: tuple[int, ...], *, max_aspect_error: float
) -> list[int]:
    """The dihedral variants (indices as ``dihedral_correlations``') that give image ``b``
    the aspect ratio of image ``a``, from their (height, width)."""
    ha, wa = size_a[:2]
    hb, wb = size_b[:2]
    fits = []
    for index in range(8):
        rw, rh = (wb, hb) if index % 2 == 0 else (hb, wb)
        if abs(math.log((wa / ha) / (rw / rh))) <= max_aspect_error:
            fits.append(index)
    return fits


def variant(thumb: Thumb, index: int) -> Thumb:
    """Dihedral variant ``index`` (as ``dihedral_correlations``') of ``thumb``."""
    return np.rot90(thumb[:, ::-1] if index >= 4 else thumb, index % 4)


def dihedral_alignments(
    thumb_a: Thumb,
    size_a: tuple[int, ...],
    thumb_b: Thumb,
    size_b: tuple[int, ...],
    *,
    max_aspect_error: float,
    min_correlation: float,
) -> list[Alignment]:
    """Whole-frame alignments of image ``b`` onto image ``a`` under the eight dihedral variants,
    from their thumbnails (``thumbnail``) and their (height, width).

    Only variants whose aspect ratio matches ``a``'s are tried; each is scored by the
    correlation of the thumbnails, and those above ``min_correlation`` are returned, best
    first. This catches resized, re-encoded, recoloured, rotated and mirrored copies without
    any feature matching.
    """
    ha, wa = size_a[:2]
    hb, wb = size_b[:2]
    correlations = dihedral_correlations(thumb_a, thumb_b)
    found: list[Alignment] = []
    for index in variant_fits(size_a, size_b, max_aspect_error=max_aspect_error):
        corr = float(correlations[index])
        if corr < min_correlation:
            continue
        k = index % 4
        rw, rh = (wb, hb) if k % 2 == 0 else (hb, wb)
        matrix = _dihedral_matrix(k, wb, hb, wa / rw, ha / rh)
        found.append(Alignment(matrix, index >= 4, "dihedral", 0, 0, corr))
    found.sort(key=lambda al: -al.correlation)
    return found


def thumbs_look_mirrored(thumb_a: Thumb, thumb_b: Thumb) -> bool:
    """Whether mirrored image ``b`` looks more like image ``a`` than ``b`` as it is, turned
    either way, from their thumbnails (see ``looks_mirrored``)."""
    return looks_mirrored(dihedral_correlations(thumb_a, thumb_b))


def looks_mirrored(correlations: NDArray[np.float64]) -> bool:
    """Whether the mirrored variants (``dihedral_correlations``) beat the others.

    Thumbnails are squashed to a square, so a crop or a bar changes little; a mirrored copy
    resembles its original far more mirrored than not.
    """
    return float(correlations[4:].max()) > float(correlations[:4].max())


def thumbnail(image: Image) -> Thumb:
    """The 24x24 grey thumbnail the whole-frame comparisons use."""
    return _thumb(gray(image))


def _thumb(g: Image) -> Thumb:
    return cv2.resize(g, (_THUMB, _THUMB), interpolation=cv2.INTER_AREA).astype(np.float32)


def correlation(x: NDArray[np.float32], y: NDArray[np.float32]) -> float:
    """Pearson correlation of two arrays of one shape (0 when either is constant)."""
    xc = x - x.mean()
    yc = y - y.mean()
    denom = math.sqrt(float((xc * xc).sum()) * float((yc * yc).sum()))
    if denom < 1e-6:
        return 0.0
    return float((xc * yc).sum()) / denom


@dataclass(frozen=True, slots=True)
class Features:
    """ORB keypoints of one image (pixel coordinates) and their descriptors."""

    points: NDArray[np.float32]  # (n, 2)
    descriptors: NDArray[np.uint8] | None  # (n, 32)


# Features of recently seen images, by content: one new file is verified against several
# candidates, and a known original against each of its copies as they arrive. About 40 KB each.
_FEATURE_CACHE: OrderedDict[tuple[bytes, tuple[int, ...], int], Features] = OrderedDict()
_FEATURE_CACHE_SIZE = 64


def _feature_key(image: Image, count: int) -> tuple[bytes, tuple[int, ...], int]:
    digest = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).digest()
    return digest, image.shape, count


def orb_features(image: Image, *, count: int) -> Features:
    """ORB features of ``image``; remembered by content, since detection costs ~15 ms."""
    key = _feature_key(image, count)
    cached = _FEATURE_CACHE.get(key)
    if cached is not None:
        _FEATURE_CACHE.move_to_end(key)
        return cached
    # A low FAST threshold keeps blurred and low-contrast copies from running out of corners.
    orb = cv2.ORB.create(nfeatures=count, scaleFactor=1.2, nlevels=8, fastThreshold=10)
    keypoints, descriptors = orb.detectAndCompute(gray(image), None)
    points = np.array([kp.pt for kp in keypoints], dtype=np.float32).reshape(-1, 2)
    features = Features(points, None if descriptors is None else np.asarray(descriptors, np.uint8))
    _FEATURE_CACHE[key] = features
    while len(_FEATURE_CACHE) > _FEATURE_CACHE_SIZE:
        _FEATURE_CACHE.popitem(last=False)
    return features


def feature_alignment(
    fa: Features,
    fb: Features,
    *,
    mirrored: bool,
    ratio: float,
    reprojection_px: float,
) -> Alignment | None:
    """The similarity transform most matches agree on, or None when too few matches exist.

    ``fb`` must have been computed on the mirrored image when ``mirrored`` is set.
    """
    if fa.descriptors is None or fb.descriptors is None:
        return None
    if len(fa.points) < 3 or len(fb.points) < 3:
        return None
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    pairs = matcher.knnMatch(fb.descriptors, fa.descriptors, k=2)
    src: list[int] = []
    dst: list[int] = []
    for pair in pairs:
        if len(pair) == 2 and pair[0].distance < ratio * pair[1].distance:
            src.append(pair[0].queryIdx)
            dst.append(pair[0].trainIdx)
    if len(src) < 3:
        return None
    pts_b = fb.points[src]
    pts_a = fa.points[dst]
    matrix, inlier_mask = cv2.estimateAffinePartial2D(
        pts_b,
        pts_a,
        method=cv2.RANSAC,
        ransacReprojThreshold=reprojection_px,
        maxIters=2000,
        confidence=0.995,
        refineIters=10,
    )
    if matrix is None or inlier_mask is None:
        return None
    keep = inlier_mask.ravel().astype(bool)
    inliers = int(keep.sum())
    if inliers < 3:
        return None
    raw_angle = math.degrees(math.atan2(matrix[1, 0], matrix[0, 0]))
    quarter = round(raw_angle / 90.0)
    snapped = _fit_quarter_turn(pts_b[keep], pts_a[keep], quarter)
    return Alignment(
        snapped,
        mirrored,
        "features",
        len(src),
        inliers,
        inliers / len(src),
        abs(raw_angle - 90.0 * quarter),
    )


def _fit_quarter_turn(
    pts_b: NDArray[np.float32], pts_a: NDArray[np.float32], quarter: int
) -> Matrix:
    """Least-squares scale and shift for a rotation fixed at ``quarter`` quarter turns.

    Copies are rotated only in quarter turns; fixing the angle removes the small error RANSAC
    leaves, which would otherwise show as residual along every edge of the comparison.
    """
    theta = math.radians(90.0 * quarter)
    rot = np.round(
        np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    )
    pb = pts_b.astype(np.float64)
    pa = pts_a.astype(np.float64)
    keep = np.ones(len(pb), dtype=bool)
    linear = rot
    shift = np.zeros(2)
    # Keypoints from coarse pyramid levels are off by a pixel or two; refitting on the
    # closest half tightens the scale, which matters at the far edges of the overlap.
    for _ in range(3):
        mb = pb[keep].mean(axis=0)
        ma = pa[keep].mean(axis=0)
        rb = (pb[keep] - mb) @ rot.T
        denom = float((rb * rb).sum())
        scale = float(((pa[keep] - ma) * rb).sum()) / denom if denom > 1e-9 else 1.0
        linear = scale * rot
        shift = ma - linear @ mb
        err = np.linalg.norm(pb @ linear.T + shift - pa, axis=1)
        if len(err) < 8:
            break
        keep = err <= max(float(np.median(err)), 0.5)
    return np.hstack([linear, shift.reshape(2, 1)])
