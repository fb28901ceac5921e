"""A glance at a photo: what it takes to turn down most look-alikes without decoding them.

Most candidates that reach verification are look-alikes (the next shot of a scene, another
photo of the same kind), and verifying one costs a decode of the known file and two feature
detections at working size. A glance is made once per photo when it is fingerprinted and kept
in the store (12-22 KB): its size and content box, a 64 x 64 grey thumbnail and ORB features
at 256 pixels. Two glances settle a pair as *not* a copy when no whole-frame variant looks alike
(in layout and in detail) and no features line up on most of either picture; anything else
goes to full verification, which alone can say "the same photo". A glance never confirms a
pair, so it cannot add a false duplicate; it is tuned so that every copy of the accuracy
benchmark still reaches verification (bench/RESULTS.md, "Verification cost").
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from dupwatch.agreement import Box, content_box, overlap
from dupwatch.alignment import (
    Features,
    Thumb,
    correlation,
    dihedral_correlations,
    gray,
    looks_mirrored,
    variant,
    variant_fits,
)
from dupwatch.verify import Verification

Image = NDArray[np.uint8]

GLANCE_SIDE = 256  # long side the features are detected at, pixels...
GLANCE_FEATURES = 500
ORB_SCALE_FACTOR = 1.2  # between the levels of ORB's image pyramid
# ...unless fewer keypoints than this are found there (a soft or plain picture): then they are
# detected at working size, the resolution verification looks at.
SPARSE_KEYPOINTS = 100
THUMB_SIDE = 64
# Whole-frame copies (resized, re-encoded, recoloured, blurred, turned, mirrored) correlate at
# 0.949 or more on 64-pixel thumbnails in the accuracy benchmark (brightened copies with
# clipped highlights lowest); look-alikes mostly lower, but a frame this close is compared
# pixel by pixel whatever its features say.
WHOLE_FRAME_CORRELATION = 0.90
# A whole-frame copy keeps the picture's detail as well as its layout: the thumbnails less
# their 5 x 5 local means correlate at 0.937 or more (25 % resized copies lowest), while
# photos of one kind whose layouts match at 0.90-0.96 (star fields, seascapes) share none of
# it (0.14 at most) and bursts of one scene much of it (0.74-0.98: those are verified).
DETAIL_WINDOW = 5
MIN_DETAIL_CORRELATION = 0.5
# A plain picture's detail (a clear sky's) is noise, a grey level or less: its layout decides.
MIN_DETAIL_SPREAD = 1.0
MIN_INLIERS = 12  # as verification's
RATIO = 0.8  # Lowe ratio test, as verification's
REPROJECTION_PX = 3.0  # RANSAC inlier distance at working size, as verification's
# A feature alignment worth verifying: nearly a quarter turn, one picture nearly inside the
# other. Copies of the accuracy benchmark sit at angle error <= 1.4 degrees and containment
# >= 0.98 at glance size; look-alikes that align at all mostly below 0.8.
MAX_ANGLE_ERROR = 5.0
MIN_CONTAINMENT = 0.90
MAX_ASPECT_ERROR = 0.03  # as verification's: a whole-frame variant needs the same shape

_FORMAT = 1  # version of the stored encoding; a glance of another version is made again
# version, framed, h, w, box x0 y0 x1 y1, long side of the features, thumb side, n
_HEADER = struct.Struct("<BBHHHHHHHHH")


@dataclass(frozen=True, slots=True)
class Glance:
    """The parts of a photo at working size that ``turned_down`` reads."""

    size: tuple[int, int]  # height, width of the working-size image
    box: Box  # content box at working size (letterbox bars and mats excluded)
    thumb: Image  # THUMB_SIDE x THUMB_SIDE grey
    features: Features  # ORB, points in pixels of the image scaled by ``scale``
    scale: float  # of the features: their pixels per working-size pixel
    framed: bool  # the photo sits inside a frame (a screenshot): always verified in full

    @classmethod
    def of(cls, image: Image, *, framed: bool) -> Glance:
        """The glance of ``image`` (RGB, working size)."""
        return cls._made(image, framed)[0]

    @classmethod
    def with_mirrored(cls, image: Image, *, framed: bool) -> tuple[Glance, Features]:
        """The glance of ``image`` and the features of ``image`` mirrored left to right, at
        the glance's scale: ORB is not mirror-invariant, and a mirrored copy that was also
        cropped lines up with its original only this way."""
        glance, detection = cls._made(image, framed)
        return glance, _mirrored(detection)

    @classmethod
    def _made(cls, image: Image, framed: bool) -> tuple[Glance, _Detection]:
        height, width = image.shape[:2]
        grey = gray(image)
        thumb = np.asarray(
            cv2.resize(grey, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA), np.uint8
        )
        found = _detect(grey, GLANCE_SIDE)
        if len(found.keypoints) < SPARSE_KEYPOINTS and found.scale < 1.0:
            found = _detect(grey, max(height, width))
        glance = cls(
            (height, width), content_box(image), thumb, found.features, found.scale, framed
        )
        return glance, found

    def encode(self) -> bytes:
        """The stored form."""
        points = np.round(self.features.points * 64.0).astype("<u2")  # 1/64 px, at most 1023
        descriptors = self.features.descriptors
        n = 0 if descriptors is None else len(descriptors)
        side = round(self.scale * max(self.size))
        header = _HEADER.pack(_FORMAT, int(self.framed), *self.size, *self.box, side, THUMB_SIDE, n)
        parts = [header, np.ascontiguousarray(self.thumb, dtype=np.uint8).tobytes()]
        if descriptors is not None:
            parts += [points[:n].tobytes(), np.ascontiguousarray(descriptors).tobytes()]
        return b"".join(parts)

    @classmethod
    def decode(cls, blob: bytes) -> Glance | None:
        """The glance ``encode`` wrote, or None for one of another version or a damaged one."""
        if len(blob) < _HEADER.size or blob[0] != _FORMAT:
            return None
        _, framed, h, w, x0, y0, x1, y1, long_side, side, n = _HEADER.unpack_from(blob)
        if min(h, w, long_side) < 1:
            return None
        thumb_end = _HEADER.size + side * side
        points_end = thumb_end + n * 4
        if len(blob) != points_end + n * 32 or side != THUMB_SIDE:
            return None
        thumb = np.frombuffer(blob, np.uint8, side * side, _HEADER.size).reshape(side, side)
        points = np.frombuffer(blob, "<u2", n * 2, thumb_end).reshape(n, 2)
        descriptors = np.frombuffer(blob, np.uint8, n * 32, points_end).reshape(n, 32)
        features = Features(points.astype(np.float32) / 64.0, descriptors.copy() if n else None)
        scale = long_side / max(h, w)
        return cls((h, w), (x0, y0, x1, y1), thumb.copy(), features, scale, bool(framed))


@dataclass(frozen=True, slots=True)
class _Detection:
    grey: Image  # the image the features were found in
    keypoints: Sequence[cv2.KeyPoint]
    features: Features
    scale: float  # of ``grey``: its pixels per working-size pixel


def _orb() -> cv2.ORB:
    # Smaller patches than verification's: at 256 px the default 31-pixel patch leaves no
    # keypoints near the borders, where a crop's overlap is decided.
    return cv2.ORB.create(
        nfeatures=GLANCE_FEATURES,
        scaleFactor=ORB_SCALE_FACTOR,
        nlevels=8,
        fastThreshold=10,
        edgeThreshold=15,
        patchSize=15,
    )


def _features_of(keypoints: Sequence[cv2.KeyPoint], descriptors: object) -> Features:
    points = np.array([kp.pt for kp in keypoints], dtype=np.float32).reshape(-1, 2)
    return Features(points, None if descriptors is None else np.asarray(descriptors, np.uint8))


def _detect(grey: Image, side: int) -> _Detection:
    """ORB features of ``grey`` scaled to long side ``side`` (never enlarged)."""
    height, width = grey.shape[:2]
    scale = min(1.0, side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        grey = np.asarray(cv2.resize(grey, size, interpolation=cv2.INTER_AREA), np.uint8)
    keypoints, descriptors = _orb().detectAndCompute(grey, None)
    return _Detection(grey, keypoints, _features_of(keypoints, descriptors), scale)


def _mirrored(found: _Detection) -> Features:
    """The features ``_detect`` finds in the mirror image of ``found.grey``, at half the cost.

    FAST corners and their Harris scores are symmetric, so the mirror image has the same
    keypoints at mirrored places, with mirrored orientations; only their descriptors must be
    computed from the mirrored pixels. A keypoint of pyramid level ``octave`` is mirrored
    within that level's image, whose width ORB rounds from the scaled one.
    """
    width = found.grey.shape[1]
    turned = []
    for kp in found.keypoints:
        level_scale = ORB_SCALE_FACTOR**kp.octave
        x = (round(width / level_scale) - 1) * level_scale - kp.pt[0]
        angle = (180.0 - kp.angle) % 360.0
        turned.append(
            cv2.KeyPoint(x, kp.pt[1], kp.size, angle, kp.response, kp.octave, kp.class_id)
        )
    flipped = np.ascontiguousarray(found.grey[:, ::-1])
    keypoints, descriptors = _orb().compute(flipped, turned)
    return _features_of(keypoints, descriptors)


def turned_down(new: Glance, known: Glance, mirrored: Features | None) -> Verification | None:
    """The verdict "not the same photo" when the glances show it, else None (verify in full).

    ``mirrored``: the new image's features mirrored (``Glance.with_mirrored``), tried only for
    a pair that looks mirrored, the only pairs whose mirrored features verification would
    try; ValueError when such a pair comes without them.
    """
    if new.framed or known.framed:
        return None
    known_thumb, new_thumb = _thumb(known), _thumb(new)
    correlations = dihedral_correlations(known_thumb, new_thumb)
    if _alike_whole_frame(known_thumb, new_thumb, known.size, new.size, correlations):
        return None
    attempts = [_aligned(new.features, new.box, new, known)]
    if looks_mirrored(correlations):
        x0, y0, x1, y1 = new.box
        mirrored_box = (new.size[1] - x1, y0, new.size[1] - x0, y1)
        if mirrored is None:
            raise ValueError("a pair that looks mirrored needs the mirrored features")
        attempts.append(_aligned(mirrored, mirrored_box, new, known))
    if any(a.worth_verifying for a in attempts):
        return None
    shown = max(attempts, key=lambda a: a.inliers)
    return Verification(
        same=False,
        reason="different_at_a_glance",
        transform="",
        matches=shown.matches,
        inliers=shown.inliers,
        containment=round(shown.containment, 4),
        core_fraction=0.0,
        disagreeing=1.0,
        worst_block=None,
        outliers=1.0,
        residual=None,
        attempts=0,
    )


def _alike_whole_frame(
    known_thumb: Thumb,
    new_thumb: Thumb,
    known_size: tuple[int, int],
    new_size: tuple[int, int],
    correlations: NDArray[np.float64],
) -> bool:
    """Whether a dihedral variant of the new thumbnail with the known shape looks like the
    known one (``correlations`` of the thumbnails): in its layout and, unless either is plain,
    in its detail."""
    known_detail: Thumb | None = None
    for index in variant_fits(known_size, new_size, max_aspect_error=MAX_ASPECT_ERROR):
        if correlations[index] < WHOLE_FRAME_CORRELATION:
            continue
        if known_detail is None:  # made for the rare pair whose layouts match
            known_detail = _detail(known_thumb)
        detail = _detail(variant(new_thumb, index))
        if min(known_detail.std(), detail.std()) < MIN_DETAIL_SPREAD:
            return True
        if correlation(known_detail, detail) >= MIN_DETAIL_CORRELATION:
            return True
    return False


def _detail(thumb: Thumb) -> Thumb:
    """The thumbnail less its local mean: what is left when the layout is taken away."""
    return np.asarray(thumb - cv2.blur(thumb, (DETAIL_WINDOW, DETAIL_WINDOW)), np.float32)


def _thumb(glance: Glance) -> Thumb:
    return glance.thumb.astype(np.float32)


@dataclass(frozen=True, slots=True)
class _Attempt:
    matches: int = 0
    inliers: int = 0
    containment: float = 0.0
    angle_error: float = 180.0

    @property
    def worth_verifying(self) -> bool:
        return (
            self.inliers >= MIN_INLIERS
            and self.angle_error <= MAX_ANGLE_ERROR
            and self.containment >= MIN_CONTAINMENT
        )


def _aligned(features: Features, box: Box, new: Glance, known: Glance) -> _Attempt:
    """How well ``features`` of the new image (as they are or mirrored) line up with the
    known image's: RANSAC inliers of a similarity transform, its distance from a quarter turn
    and how much of either picture it lays inside the other."""
    fk = known.features
    if features.descriptors is None or fk.descriptors is None:
        return _Attempt()
    if len(features.points) < 3 or len(fk.points) < 3:
        return _Attempt()
    # The two nearest known descriptors of each new one, as arrays: the same matches as a
    # BFMatcher's knnMatch without a Python object per match (this runs in the daemon).
    distances, nearest = cv2.batchDistance(
        features.descriptors, fk.descriptors, cv2.CV_32S, normType=cv2.NORM_HAMMING, K=2
    )
    good = np.flatnonzero((nearest[:, 1] >= 0) & (distances[:, 0] < RATIO * distances[:, 1]))
    if len(good) < MIN_INLIERS:  # too few matches for enough inliers: no RANSAC needed
        return _Attempt(matches=len(good))
    src = features.points[good]
    dst = fk.points[nearest[good, 0]]
    matrix, mask = cv2.estimateAffinePartial2D(
        src,
        dst,
        method=cv2.RANSAC,
        ransacReprojThreshold=REPROJECTION_PX * known.scale,
        maxIters=2000,
        confidence=0.995,
    )
    if matrix is None or mask is None:
        return _Attempt(matches=len(good))
    angle = math.degrees(math.atan2(matrix[1, 0], matrix[0, 0]))
    angle_error = abs(angle - 90.0 * round(angle / 90.0))
    transform = np.asarray(matrix, dtype=np.float64)
    shares = overlap(_scaled(known.box, known.scale), _scaled(box, new.scale), transform)
    containment = 0.0 if shares is None else max(shares[1], shares[2])
    return _Attempt(len(good), int(mask.sum()), containment, angle_error)


def _scaled(box: Box, scale: float) -> Box:
    x0, y0, x1, y1 = box
    return round(x0 * scale), round(y0 * scale), round(x1 * scale), round(y1 * scale)
