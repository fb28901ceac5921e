"""How well two aligned images agree, block by block, once brightness and colour are undone.

A re-encoded, resized or recoloured copy of a photo differs from it almost nowhere; a burst
neighbour or the next video frame differs where the subject moved; a captioned copy differs in
one band along an edge. So ``b`` is warped onto ``a``'s frame over their overlap, both are
reduced to a common small size and blurred a little (which absorbs resampling, JPEG and blur
differences), ``a``'s luma is predicted from ``b``'s colour channels by a robust linear fit (or
the other way round, whichever fits better: that undoes brightness, contrast, hue shifts and
grayscale), and the residual is summarised per block. Full-width bands along the edges of the
overlap where most blocks disagree are trimmed as captions; what is left, the core, must agree
nearly everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from dupwatch.alignment import Alignment, mirror
from dupwatch.photometric import channel_max, luma_spread, photometric_fit

Image = NDArray[np.uint8]
Floats = NDArray[np.float32]
Box = tuple[int, int, int, int]  # x0, y0, x1, y1

# Where one image has a saturated channel and the other is bright, the pair says nothing: a
# brightened copy clips highlights the original kept.
_SATURATED = 250  # a channel this high at working size may have been clipped by an edit
_BRIGHT = 190  # ... and the other image this bright there means it was a brightening
_EDGE = 2  # grid pixels ignored along each side of the overlap
# A border row or column whose values span no more than this is a bar, not content.
_UNIFORM_RANGE = 12


@dataclass(frozen=True, slots=True)
class AgreementParams:
    compare_size: int  # long side of the comparison grid, pixels
    block: int  # block side at that size, pixels
    blur_sigma: float  # Gaussian blur at that size, pixels
    noise_floor: float  # residual allowed everywhere, grey levels (JPEG noise in flat areas)
    block_tolerance: float  # residual allowed everywhere, as a share of the global contrast
    texture_tolerance: float  # residual allowed in addition, as a share of the local texture
    band_disagreement: float  # an edge row or column of blocks this disagreeing is a band
    max_band_fraction: float  # at most this much of each axis is trimmed as bands
    # Below this containment the pair cannot pass, so its blocks are not measured (0: always).
    min_containment: float = 0.0


@dataclass(frozen=True, slots=True)
class Agreement:
    """Measurements of one alignment; fractions are in [0, 1]."""

    overlap_a: float  # fraction of a covered by b
    overlap_b: float  # fraction of b covered by a
    blocks: int  # blocks with enough valid pixels
    core_fraction: float  # share of those blocks left after trimming edge bands
    disagreeing: float  # share of core blocks that disagree
    worst_block: float  # largest block score in the core (above 1 the block disagrees)
    outliers: float  # share of core pixels scoring above OUTLIER_SCORE (thin edges moving)
    residual: float  # median normalised residual over the whole overlap
    fit_direction: str  # "b->a" or "a->b": which luma was predicted from which colour

    @property
    def containment(self) -> float:
        """How much of the smaller picture the other one holds: ~1 for crops and frames."""
        return max(self.overlap_a, self.overlap_b)


def measure_agreement(
    a: Image, b: Image, alignment: Alignment, params: AgreementParams
) -> tuple[Agreement, BlockStats | None]:
    """Compare ``b`` laid over ``a`` by ``alignment`` (see the module docstring).

    The block statistics are returned too, so calibration can re-summarise them under other
    tolerances without measuring again.
    """
    stats, overlap_a, overlap_b = compare(a, b, alignment, params)
    if stats is None:
        return no_overlap(overlap_a, overlap_b), None
    return summarise(stats, params, overlap_a, overlap_b), stats


def compare(
    a: Image, b: Image, alignment: Alignment, params: AgreementParams
) -> tuple[BlockStats | None, float, float]:
    """Block statistics of ``b`` laid over ``a``, and the share of each the overlap covers."""
    src = mirror(b) if alignment.mirrored else b
    matrix = alignment.matrix
    scale = alignment.scale
    hb, wb = b.shape[:2]

    found = overlap(content_box(a), content_box(src), matrix)
    if found is None:
        return None, 0.0, 0.0
    (x0, y0, x1, y1), overlap_a, overlap_b = found
    if max(overlap_a, overlap_b) < params.min_containment:
        return None, overlap_a, overlap_b  # two framings of a scene: nothing more to learn

    # Comparison grid over the overlap rectangle, no finer than either image's own pixels.
    long_side = max(x1 - x0, y1 - y0)
    size = min(float(params.compare_size), long_side, long_side / max(scale, 1e-6))
    factor = size / long_side  # a-pixels -> grid pixels
    gw = max(params.block, round((x1 - x0) * factor))
    gh = max(params.block, round((y1 - y0) * factor))
    # a's overlap rectangle onto the grid, by area averaging.
    crop_a = a[round(y0) : round(y1), round(x0) : round(x1)]
    grid_a = cv2.resize(crop_a, (gw, gh), interpolation=cv2.INTER_AREA).astype(np.float32)
    # b onto the grid: grid <- a (scale, shift) <- b (matrix). Pre-shrink b by area averaging
    # when the warp would skip pixels, so both sides are low-passed the same way.
    to_grid = np.array(
        [[gw / (x1 - x0), 0.0, -x0 * gw / (x1 - x0)], [0.0, gh / (y1 - y0), -y0 * gh / (y1 - y0)]]
    )
    full = to_grid[:, :2] @ matrix[:, :2]
    warp = np.hstack([full, (to_grid[:, :2] @ matrix[:, 2] + to_grid[:, 2]).reshape(2, 1)])
    src_full, warp_full = src, warp
    shrink = math.sqrt(abs(float(np.linalg.det(full))))
    if shrink < 0.7:
        small_w = max(8, round(wb * shrink))
        small_h = max(8, round(hb * shrink))
        src = np.asarray(
            cv2.resize(src, (small_w, small_h), interpolation=cv2.INTER_AREA), dtype=np.uint8
        )
        pre = np.array(
            [
                [wb / small_w, 0.0, 0.5 * wb / small_w - 0.5],
                [0.0, hb / small_h, 0.5 * hb / small_h - 0.5],
            ]
        )
        warp = np.hstack(
            [warp[:, :2] @ pre[:, :2], (warp[:, :2] @ pre[:, 2] + warp[:, 2]).reshape(2, 1)]
        )
    grid_b = cv2.warpAffine(
        src, warp, (gw, gh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    ).astype(np.float32)
    # Clipping is found at working size: once averaged onto the grid, a clipped highlight
    # stripe looks like an ordinary grey pixel that no longer follows the photometric fit.
    sat_a = cv2.resize(_saturated(crop_a), (gw, gh), interpolation=cv2.INTER_AREA) > 0
    sat_b = cv2.warpAffine(_saturated(src_full), warp_full, (gw, gh), flags=cv2.INTER_LINEAR) > 0
    clipped = _clipped_pairs(sat_a, sat_b, grid_a, grid_b)
    covered = cv2.warpAffine(
        np.full(src.shape[:2], 255, np.uint8), warp, (gw, gh), flags=cv2.INTER_NEAREST
    )
    if params.blur_sigma > 0:
        grid_a = np.asarray(cv2.GaussianBlur(grid_a, (0, 0), params.blur_sigma), np.float32)
        grid_b = np.asarray(cv2.GaussianBlur(grid_b, (0, 0), params.blur_sigma), np.float32)
    # Erode so the blurred border of b does not count as content.
    inside = np.asarray(cv2.erode(covered, np.ones((3, 3), np.uint8)) > 0, dtype=bool)

    valid = inside & ~clipped
    # The outermost grid pixels mix the photo with whatever surrounds it (a viewer's frame, a
    # bar): they say nothing, and the sliding median would repeat them outward.
    valid[:_EDGE], valid[-_EDGE:], valid[:, :_EDGE], valid[:, -_EDGE:] = False, False, False, False
    if int(valid.sum()) < 64:
        return None, overlap_a, overlap_b
    return block_statistics(grid_a, grid_b, valid, params.block), overlap_a, overlap_b


def overlap(
    box_a: Box, box_b: Box, matrix: NDArray[np.float64]
) -> tuple[tuple[float, float, float, float], float, float] | None:
    """Where ``b``'s content box, mapped by ``matrix``, overlaps ``a``'s, in ``a``'s frame, and
    the share of each box the overlap covers; None when they overlap by less than 8 pixels.

    Uniform borders such as letterbox bars are content of neither. Needs no pixels, only the
    boxes (``content_box``), so a pair that cannot contain one another is turned down early.
    """
    ax0, ay0, ax1, ay1 = box_a
    bx0, by0, bx1, by1 = box_b
    corners = np.array([[bx0, by0], [bx1, by0], [bx1, by1], [bx0, by1]], dtype=np.float64) - 0.5
    mapped = corners @ matrix[:, :2].T + matrix[:, 2] + 0.5
    mx0, my0 = (float(v) for v in mapped.min(axis=0))
    mx1, my1 = (float(v) for v in mapped.max(axis=0))
    x0, y0 = max(float(ax0), mx0), max(float(ay0), my0)
    x1, y1 = min(float(ax1), mx1), min(float(ay1), my1)
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    shared = (x1 - x0) * (y1 - y0)
    overlap_a = min(1.0, shared / max(float((ax1 - ax0) * (ay1 - ay0)), 1.0))
    overlap_b = min(1.0, shared / max((mx1 - mx0) * (my1 - my0), 1.0))
    return (x0, y0, x1, y1), overlap_a, overlap_b


@dataclass(frozen=True, slots=True)
class BlockStats:
    """Per-pixel measurements on the comparison grid, kept so calibration can re-score them."""

    residual: Floats  # |luma - prediction|
    texture: Floats  # the lower of the two images' mean gradient around each pixel
    valid: NDArray[np.bool_]  # pixels inside both images and not clipped
    block: int  # block side, pixels
    contrast: float  # global luma spread the residual is measured against
    median_residual: float  # median residual over all valid pixels, in contrast units
    fit_direction: str


def block_statistics(
    grid_a: Floats, grid_b: Floats, valid: NDArray[np.bool_], block: int
) -> BlockStats:
    target, predicted, direction = photometric_fit(grid_a, grid_b, valid)
    residual = np.abs(target - predicted).astype(np.float32)
    contrast = luma_spread(target, valid)
    window = (block, block)
    # The lower texture counts, so a subject moved onto a plain background, or a region
    # blurred away, is measured against the plain side.
    texture = np.minimum(
        cv2.blur(_gradient(target), window), cv2.blur(_gradient(predicted), window)
    ).astype(np.float32)
    return BlockStats(
        residual=residual,
        texture=texture,
        valid=valid,
        block=block,
        contrast=contrast,
        median_residual=float(np.median(residual[valid])) / contrast,
        fit_direction=direction,
    )


def _gradient(luma: Floats) -> Floats:
    """|d/dx| + |d/dy| by central differences: how fast luma changes at each pixel."""
    gx = np.abs(cv2.Sobel(luma, cv2.CV_32F, 1, 0, ksize=1)) * 0.5
    gy = np.abs(cv2.Sobel(luma, cv2.CV_32F, 0, 1, ksize=1)) * 0.5
    return (gx + gy).astype(np.float32)


# A pixel scoring above this is an outlier: a copy has almost none, even along edges, while
# a frame where things moved by a pixel or two has them along every moving edge.
OUTLIER_SCORE = 2.0
# Scores are quantised to this many steps per unit for the sliding median (uint8 only).
_SCORE_STEPS = 50.0


def pixel_scores(stats: BlockStats, params: AgreementParams) -> Floats:
    """Each pixel's residual over what a copy may show there (0 where not valid)."""
    allowed = (
        params.noise_floor
        + params.block_tolerance * stats.contrast
        + params.texture_tolerance * stats.texture
    )
    return np.where(stats.valid, stats.residual / allowed, 0.0).astype(np.float32)


def block_scores(stats: BlockStats, params: AgreementParams) -> tuple[Floats, NDArray[np.bool_]]:
    """Per block: the worst sliding-window median score inside it, and whether it has data.

    A pixel's score is its residual over what a copy may show there: a little everywhere
    (``noise_floor`` grey levels plus ``block_tolerance`` of the global contrast) plus a share
    of the local texture
    (``texture_tolerance``: resampling and JPEG errors grow with fine texture). The median
    over a block-sized window slid across the grid ignores thin misalignment along edges but
    catches a change covering half a window wherever it falls, not only on the block grid.
    Above 1, a window disagrees.
    """
    score = pixel_scores(stats, params)
    quantised = np.clip(score * _SCORE_STEPS, 0, 255).astype(np.uint8)
    size = stats.block | 1  # medianBlur needs an odd window
    median = cv2.medianBlur(quantised, size).astype(np.float32) / _SCORE_STEPS
    block = stats.block
    h, w = median.shape
    gh, gw = h // block, w // block

    def blocks(values: NDArray[Any]) -> NDArray[Any]:
        cut = values[: gh * block, : gw * block]
        return cut.reshape(gh, block, gw, block).transpose(0, 2, 1, 3).reshape(gh, gw, -1)

    ok = blocks(stats.valid).sum(axis=2) >= (block * block) // 2
    worst = np.where(blocks(stats.valid), blocks(median), 0.0).max(axis=2)
    return np.where(ok, worst, 0.0).astype(np.float32), ok


def summarise(
    stats: BlockStats, params: AgreementParams, overlap_a: float, overlap_b: float
) -> Agreement:
    scores, ok = block_scores(stats, params)
    if int(ok.sum()) == 0:
        return no_overlap(overlap_a, overlap_b)
    disagree = (scores > 1.0) & ok
    rows, cols = _trim_bands(disagree, ok, params)
    core_ok = ok[rows[0] : rows[1], cols[0] : cols[1]]
    core_dis = disagree[rows[0] : rows[1], cols[0] : cols[1]]
    core_scores = scores[rows[0] : rows[1], cols[0] : cols[1]]
    core_blocks = int(core_ok.sum())
    total = int(ok.sum())
    b = stats.block
    core = (slice(rows[0] * b, rows[1] * b), slice(cols[0] * b, cols[1] * b))
    core_valid = stats.valid[core]
    high = pixel_scores(stats, params)[core] > OUTLIER_SCORE
    outliers = float(high.sum()) / max(int(core_valid.sum()), 1)
    return Agreement(
        overlap_a=min(1.0, overlap_a),
        overlap_b=min(1.0, overlap_b),
        blocks=total,
        core_fraction=core_blocks / total,
        disagreeing=float(core_dis.sum()) / core_blocks if core_blocks else 1.0,
        worst_block=float(core_scores[core_ok].max()) if core_blocks else math.inf,
        outliers=outliers,
        residual=stats.median_residual,
        fit_direction=stats.fit_direction,
    )


def no_overlap(overlap_a: float = 0.0, overlap_b: float = 0.0) -> Agreement:
    """The agreement of a pair that does not overlap enough to be compared."""
    return Agreement(
        min(1.0, overlap_a), min(1.0, overlap_b), 0, 0.0, 1.0, math.inf, 1.0, math.inf, ""
    )


def _saturated(image: Image) -> NDArray[np.uint8]:
    """255 where a pixel has a saturated channel, else 0."""
    return np.where(channel_max(image) >= _SATURATED, 255, 0).astype(np.uint8)


def _clipped_pairs(
    sat_a: NDArray[np.bool_], sat_b: NDArray[np.bool_], grid_a: Floats, grid_b: Floats
) -> NDArray[np.bool_]:
    """Grid pixels where one image is clipped and the other bright: a brightened copy.

    There the copy is not a smooth function of the original, so the pixel says nothing. A
    white subject moved onto a darker background is clipped on one side only: still counted.
    """
    bright_a = channel_max(grid_a) >= _BRIGHT
    bright_b = channel_max(grid_b) >= _BRIGHT
    pairs = ((sat_a & bright_b) | (sat_b & bright_a)).astype(np.uint8)
    return np.asarray(cv2.dilate(pairs, np.ones((3, 3), np.uint8)) > 0, dtype=bool)


def content_box(image: Image) -> Box:
    """(x0, y0, x1, y1) of the image without uniform borders (letterbox bars, mats)."""
    g = channel_max(image).astype(np.int16)
    rows = (g.max(axis=1) - g.min(axis=1)) > _UNIFORM_RANGE
    cols = (g.max(axis=0) - g.min(axis=0)) > _UNIFORM_RANGE
    if not rows.any() or not cols.any():
        return 0, 0, image.shape[1], image.shape[0]
    ys = np.flatnonzero(rows)
    xs = np.flatnonzero(cols)
    return int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1


def _trim_bands(
    disagree: NDArray[np.bool_], ok: NDArray[np.bool_], params: AgreementParams
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Trim edge rows/columns of blocks that mostly disagree (captions, bars, overlays).

    A caption's edge rarely falls on the block grid, so the line just inside a trimmed band
    (straddled by the band's edge) is trimmed too.
    """
    gh, gw = disagree.shape
    # [first row, end row, first column, end column]; sides: top, bottom, left, right.
    box: list[int] = [0, int(gh), 0, int(gw)]
    budget = {0: int(params.max_band_fraction * gh), 2: int(params.max_band_fraction * gw)}
    banded = [False, False, False, False]

    def line(side: int) -> float:
        r0, r1, c0, c1 = box
        index = box[side] - (side % 2)  # the first or last row/column still inside
        cut = (
            (slice(index, index + 1), slice(c0, c1))
            if side < 2
            else (slice(r0, r1), slice(index, index + 1))
        )
        n = int(ok[cut].sum())
        return float((disagree[cut] & ok[cut]).sum()) / n if n else 1.0

    def room(side: int) -> bool:
        axis = 0 if side < 2 else 2
        size = gh if side < 2 else gw
        used = box[axis] + size - box[axis + 1]
        return used < budget[axis] and box[axis + 1] - box[axis] > 1

    def trim(side: int) -> None:
        box[side] += 1 if side % 2 == 0 else -1

    changed = True
    while changed:
        changed = False
        for side in range(4):
            if room(side) and line(side) >= params.band_disagreement:
                trim(side)
                banded[side] = changed = True
    for side in range(4):
        if banded[side] and box[side | 1] - box[side & 2] > 1:
            trim(side)
    return (box[0], box[1]), (box[2], box[3])
