"""Verification: is a candidate pair the same photo, or only a similar one?

The index proposes candidates generously; this module decides, and its answer sends a file to
the quarantine, so it is built for precision. Two images are the same photo when

1. a similarity transform (scale, a quarter-turn rotation, a shift, optionally after a mirror)
   lays one over the other: found either on tiny thumbnails under the eight dihedral variants
   (resized, re-encoded, recoloured, rotated, mirrored copies) or with ORB features and RANSAC
   (crops, letterboxes, frames, screenshots);
2. one of them holds (nearly) all of the other: two framings of a scene overlap only partly;
3. after undoing brightness, contrast and colour, the overlap agrees block by block everywhere
   except full-width bands along its edges (captions, bars): a burst neighbour or the next
   video frame differs where something moved;
4. almost no pixel is far off even along edges: in consecutive frames where things moved by
   a pixel or two, every moving edge is.

``measure`` returns every signal (for logs and for calibration on labelled data); ``decide``
turns one measured candidate into a decision under a ``VerifyThresholds``; ``verify`` does both.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from dupwatch.agreement import (
    Agreement,
    AgreementParams,
    BlockStats,
    measure_agreement,
    summarise,
)
from dupwatch.alignment import (
    Alignment,
    dihedral_alignments,
    feature_alignment,
    mirror,
    orb_features,
    thumbnail,
    thumbs_look_mirrored,
)

Image = NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class VerifyThresholds:
    """Every tunable of verification, with the defaults calibrated on labelled pairs."""

    # --- alignment ---
    orb_features: int = 1000  # ORB keypoints per image at working size (512 px)
    ratio: float = 0.8  # Lowe ratio test for a match to count
    reprojection_px: float = 3.0  # RANSAC inlier distance, working-size pixels
    min_inliers: int = 12  # fewer RANSAC inliers: no geometric match
    max_angle_error: float = 3.0  # degrees a rotation may be off a quarter turn
    max_aspect_error: float = 0.03  # |log aspect ratio difference| for whole-frame variants
    # 24x24 thumbnail correlation to compare a whole-frame variant pixel by pixel. Whole-frame
    # copies of the accuracy set sit at 0.95-1.00 (one recoloured copy at 0.76, found by its
    # features instead); look-alikes between 0.70 and 0.85 cost a comparison each for nothing.
    min_thumb_correlation: float = 0.85
    # --- comparison (these change what is measured) ---
    compare_size: int = 256  # long side of the comparison grid, pixels
    block: int = 16  # block side on that grid, pixels
    blur_sigma: float = 1.0  # blur on that grid, pixels: absorbs resampling, JPEG and blur
    noise_floor: float = 2.0  # residual allowed everywhere, grey levels (JPEG noise)
    block_tolerance: float = 0.03  # residual allowed everywhere, share of the luma IQR
    texture_tolerance: float = 0.4  # residual allowed in addition, share of the local gradient
    band_disagreement: float = 0.5  # an edge line of blocks disagreeing this much is a band
    max_band_fraction: float = 0.25  # at most this share of each axis is trimmed as bands
    # --- decision ---
    min_containment: float = 0.985  # one image must hold this share of the other
    min_core_fraction: float = 0.7  # share of the overlap left after trimming bands
    max_disagreeing: float = 0.005  # share of core blocks allowed to disagree
    max_worst_block: float = 1.5  # largest core block score (1 = the edge of disagreeing)
    max_outliers: float = 0.01  # share of core pixels above the outlier score, whole frame
    # ... and after feature alignment, whose sub-pixel error leaves edge outliers of its own
    # (screenshots at half scale reach 2 %):
    max_outliers_aligned: float = 0.03

    def agreement_params(self) -> AgreementParams:
        return AgreementParams(
            compare_size=self.compare_size,
            block=self.block,
            blur_sigma=self.blur_sigma,
            noise_floor=self.noise_floor,
            block_tolerance=self.block_tolerance,
            texture_tolerance=self.texture_tolerance,
            band_disagreement=self.band_disagreement,
            max_band_fraction=self.max_band_fraction,
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    """One alignment tried, and how well the images agree under it."""

    alignment: Alignment
    agreement: Agreement
    stats: BlockStats | None  # per-block measurements, for re-scoring during calibration

    def rescore(self, thresholds: VerifyThresholds) -> Candidate:
        """This candidate summarised under other tolerances, without measuring again.

        Valid for changes of ``noise_floor``, ``block_tolerance``, ``texture_tolerance``,
        ``band_disagreement`` and ``max_band_fraction`` and of the decision thresholds; the
        others change what is measured.
        """
        if self.stats is None:
            return self
        ag = self.agreement
        summary = summarise(self.stats, thresholds.agreement_params(), ag.overlap_a, ag.overlap_b)
        return Candidate(self.alignment, summary, self.stats)


@dataclass(frozen=True, slots=True)
class Verification:
    """The decision on one pair, with what it rests on (``dupwatch check`` prints it).

    Every field is a plain number, string or None, so ``dataclasses.asdict`` gives a record
    that can be stored as JSON.
    """

    same: bool
    reason: str  # stable snake_case code, e.g. "aligned_match", "content_differs"
    transform: str  # how the known image lies over the new one; "" when none was found
    matches: int  # ORB ratio-test matches of the alignment shown (0 for whole-frame)
    inliers: int  # RANSAC inliers of the alignment shown (0 for whole-frame)
    containment: float  # share of the smaller picture the other holds
    core_fraction: float  # share of the overlap left after trimming caption bands
    disagreeing: float  # share of core blocks that disagree
    worst_block: float | None  # largest core block score (above 1 a block disagrees)
    outliers: float  # share of core pixels far above tolerance (edges that moved)
    residual: float | None  # median residual over the overlap, in units of the luma spread
    attempts: int  # alignments tried

    def explain(self) -> str:
        verdict = "same photo" if self.same else "not the same photo"
        if self.reason == "different_at_a_glance":  # settled from glances (glance.py)
            return (
                f"{verdict} ({self.reason}): the whole frames do not look alike and at most "
                f"{self.inliers} of {self.matches} feature matches line up"
            )
        if not self.transform:
            return f"{verdict} ({self.reason}): no alignment found after {self.attempts} tries"
        worst = "-" if self.worst_block is None else f"{self.worst_block:.2f}"
        return (
            f"{verdict} ({self.reason}): {self.transform}; inliers {self.inliers}/{self.matches}, "
            f"containment {self.containment:.3f}, core {self.core_fraction:.2f}, "
            f"disagreeing {self.disagreeing:.3f}, worst block {worst}, "
            f"outliers {self.outliers:.4f}"
        )


def decide(candidate: Candidate, thresholds: VerifyThresholds) -> tuple[bool, str]:
    """Whether one measured candidate shows the same photo, and the reason code."""
    al, ag = candidate.alignment, candidate.agreement
    if al.method == "features":
        if al.inliers < thresholds.min_inliers:
            return False, "too_few_inliers"
        if al.angle_error > thresholds.max_angle_error:
            return False, "not_a_quarter_turn"
    if ag.containment < thresholds.min_containment:
        return False, "partial_overlap" if ag.containment > 0 else "no_overlap"
    if ag.blocks == 0:
        return False, "no_overlap"
    if ag.core_fraction < thresholds.min_core_fraction:
        return False, "content_differs"
    if ag.disagreeing > thresholds.max_disagreeing:
        return False, "content_differs"
    if ag.worst_block > thresholds.max_worst_block:
        return False, "content_differs"
    limit = thresholds.max_outliers_aligned if al.method == "features" else thresholds.max_outliers
    if ag.outliers > limit:
        return False, "edges_moved"
    return True, "aligned_match" if al.method == "features" else "whole_frame_match"


def measure(
    a: Image,
    b: Image,
    thresholds: VerifyThresholds = VerifyThresholds(),
    *,
    exhaustive: bool = False,
) -> list[Candidate]:
    """Try alignments of ``b`` onto ``a`` in order of cost, measuring agreement under each.

    Stops at the first candidate ``decide`` accepts unless ``exhaustive`` (calibration wants
    every signal). Order: whole-frame dihedral variants (no features needed), ORB on ``b``,
    ORB on mirrored ``b`` (ORB is rotation- but not mirror-invariant).
    """
    params = thresholds.agreement_params()
    if not exhaustive:
        # A pair one of whose images does not hold the other fails whatever its blocks say.
        params = dataclasses.replace(params, min_containment=thresholds.min_containment)
    tried: list[Candidate] = []

    def attempt(alignment: Alignment) -> bool:
        candidate = Candidate(alignment, *measure_agreement(a, b, alignment, params))
        tried.append(candidate)
        return decide(candidate, thresholds)[0] and not exhaustive

    thumb_a, thumb_b = thumbnail(a), thumbnail(b)
    for alignment in dihedral_alignments(
        thumb_a,
        a.shape,
        thumb_b,
        b.shape,
        max_aspect_error=thresholds.max_aspect_error,
        min_correlation=thresholds.min_thumb_correlation,
    )[:2]:
        if attempt(alignment):
            return tried

    features_a = orb_features(a, count=thresholds.orb_features)
    # Features are not mirror-invariant: a mirrored search costs a detection and a match
    # of its own, so it is made only for a pair that looks mirrored.
    mirrors = (False, True) if exhaustive or thumbs_look_mirrored(thumb_a, thumb_b) else (False,)
    for mirrored in mirrors:
        features_b = orb_features(mirror(b) if mirrored else b, count=thresholds.orb_features)
        found = feature_alignment(
            features_a,
            features_b,
            mirrored=mirrored,
            ratio=thresholds.ratio,
            reprojection_px=thresholds.reprojection_px,
        )
        if found is None or found.inliers < thresholds.min_inliers:
            continue
        if attempt(found):
            return tried
        if not exhaustive and found.angle_error <= thresholds.max_angle_error:
            # The images already line up as they are (two framings of one scene): a mirror
            # cannot relate them as well, and its features would cost as much again.
            break
    return tried


def verify(a: Image, b: Image, thresholds: VerifyThresholds = VerifyThresholds()) -> Verification:
    """Decide whether ``a`` and ``b`` (RGB uint8, H x W x 3, at working size) are the same photo.

    The decision does not depend on which image is passed first beyond the ordering of the
    alignments tried. Raises ValueError for arrays that are not RGB uint8 images.
    """
    _check(a, "a")
    _check(b, "b")
    candidates = measure(a, b, thresholds)
    return summarise_candidates(candidates, thresholds)


def summarise_candidates(candidates: list[Candidate], thresholds: VerifyThresholds) -> Verification:
    """The verification for a list of measured candidates: the first accepted one, or else
    the closest miss (the one with the least of its overlap disagreeing)."""
    if not candidates:
        return Verification(
            False, "no_geometric_match", "", 0, 0, 0.0, 0.0, 1.0, None, 1.0, None, 0
        )
    decisions = [decide(c, thresholds) for c in candidates]
    chosen = next((i for i, d in enumerate(decisions) if d[0]), None)
    if chosen is None:
        chosen = min(
            range(len(candidates)),
            key=lambda i: (
                candidates[i].agreement.disagreeing,
                -candidates[i].agreement.containment,
            ),
        )
    c = candidates[chosen]
    same, reason = decisions[chosen]
    ag = c.agreement
    return Verification(
        same=same,
        reason=reason,
        transform=c.alignment.describe(),
        matches=c.alignment.matches,
        inliers=c.alignment.inliers,
        containment=round(ag.containment, 4),
        core_fraction=round(ag.core_fraction, 4),
        disagreeing=round(ag.disagreeing, 4),
        worst_block=round(ag.worst_block, 3) if math.isfinite(ag.worst_block) else None,
        outliers=round(ag.outliers, 4),
        residual=round(ag.residual, 4) if math.isfinite(ag.residual) else None,
        attempts=len(candidates),
    )


def _check(image: Image, name: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"{name}: expected a uint8 numpy array")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name}: expected an RGB image of shape H x W x 3, got {image.shape}")
