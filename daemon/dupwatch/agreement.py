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

Image = NDArray[np.uint8]
Floats = NDArray[np.float32]

# Luma weights (BT.601), the same the decoders use for grey.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# A pixel this close to black or white in any channel says nothing about the content: a
# brightened copy clips highlights the original kept.
_CLIP_LOW = 4.0
_CLIP_HIGH = 251.0


@dataclass(frozen=True, slots=True)
class AgreementParams:
    compare_size: int  # long side of the comparison grid, pixels
    block: int  # block side at that size, pixels
    blur_sigma: float  # Gaussian blur at that size, pixels
    block_tolerance: float  # residual allowed everywhere, as a share of the global contrast
    texture_tolerance: float  # residual allowed in addition, as a share of the local texture
    band_disagreement: float  # an edge row or column of blocks this disagreeing is a band
    max_band_fraction: float  # at most this much of each axis is trimmed as bands


@dataclass(frozen=True, slots=True)
class Agreement:
    """Measurements of one alignment; fractions are in [0, 1]."""

    overlap_a: float  # fraction of a covered by b
    overlap_b: float  # fraction of b covered by a
    blocks: int  # blocks with enough valid pixels
    core_fraction: float  # share of those blocks left after trimming edge bands
    disagreeing: float  # share of core blocks that disagree
    worst_block: float  # largest block score in the core (above 1 the block disagrees)
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
        return _no_overlap(overlap_a, overlap_b), None
    return summarise(stats, params, overlap_a, overlap_b), stats


def compare(
    a: Image, b: Image, alignment: Alignment, params: AgreementParams
) -> tuple[BlockStats | None, float, float]:
    """Block statistics of ``b`` laid over ``a``, and the share of each the overlap covers."""
    ha, wa = a.shape[:2]
    hb, wb = b.shape[:2]
    src = mirror(b) if alignment.mirrored else b
    matrix = alignment.matrix
    scale = alignment.scale

    # Overlap in a's frame: the image of b's rectangle, clipped to a.
    corners = np.array([[-0.5, -0.5], [wb - 0.5, -0.5], [wb - 0.5, hb - 0.5], [-0.5, hb - 0.5]])
    mapped = corners @ matrix[:, :2].T + matrix[:, 2]
    x0 = max(0.0, float(mapped[:, 0].min()) + 0.5)
    y0 = max(0.0, float(mapped[:, 1].min()) + 0.5)
    x1 = min(float(wa), float(mapped[:, 0].max()) + 0.5)
    y1 = min(float(ha), float(mapped[:, 1].max()) + 0.5)
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None, 0.0, 0.0
    overlap_area = (x1 - x0) * (y1 - y0)
    overlap_a = overlap_area / (wa * ha)
    overlap_b = overlap_area / (wb * hb * scale * scale)

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
        src, warp, (gw, gh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
    ).astype(np.float32)
    covered = cv2.warpAffine(
        np.full(src.shape[:2], 255, np.uint8), warp, (gw, gh), flags=cv2.INTER_NEAREST
    )
    if params.blur_sigma > 0:
        grid_a = np.asarray(cv2.GaussianBlur(grid_a, (0, 0), params.blur_sigma), np.float32)
        grid_b = np.asarray(cv2.GaussianBlur(grid_b, (0, 0), params.blur_sigma), np.float32)
    # Erode so the blurred border of b does not count as content.
    inside = np.asarray(cv2.erode(covered, np.ones((3, 3), np.uint8)) > 0, dtype=bool)

    valid = inside & _unclipped(grid_a) & _unclipped(grid_b)
    if int(valid.sum()) < 64:
        return None, overlap_a, overlap_b
    return block_statistics(grid_a, grid_b, valid, params.block), overlap_a, overlap_b


@dataclass(frozen=True, slots=True)
class BlockStats:
    """Per-block measurements on the comparison grid (calibration reads these directly)."""

    residual: Floats  # median |luma - prediction| per block
    texture_a: Floats  # mean luma gradient magnitude per block, each image (after the fit)
    texture_b: Floats
    ok: NDArray[np.bool_]  # blocks with enough valid pixels
    contrast: float  # global luma spread the residual is measured against
    median_residual: float  # median residual over all valid pixels, in contrast units
    fit_direction: str


def block_statistics(
    grid_a: Floats, grid_b: Floats, valid: NDArray[np.bool_], block: int
) -> BlockStats:
    target, predicted, direction = _photometric_fit(grid_a, grid_b, valid)
    residual = np.abs(target - predicted)
    contrast = _contrast(target, valid)
    h, w = residual.shape
    gh, gw = h // block, w // block

    def blocks(values: NDArray[Any]) -> NDArray[Any]:
        cut = values[: gh * block, : gw * block]
        return cut.reshape(gh, block, gw, block).transpose(0, 2, 1, 3).reshape(gh, gw, -1)

    mask = blocks(valid)
    counts = mask.sum(axis=2)
    ok = counts >= (block * block) // 2
    # Median over the valid pixels only: invalid ones sort last as +inf.
    ordered = np.sort(np.where(mask, blocks(residual), np.inf), axis=2)
    middle = np.maximum(counts - 1, 0) // 2
    res = np.take_along_axis(ordered, middle[:, :, None], axis=2)[:, :, 0]
    safe = np.maximum(counts, 1)
    texture_a = (blocks(_gradient(target)) * mask).sum(axis=2) / safe
    texture_b = (blocks(_gradient(predicted)) * mask).sum(axis=2) / safe
    return BlockStats(
        residual=np.where(ok, res, 0.0).astype(np.float32),
        texture_a=texture_a.astype(np.float32),
        texture_b=texture_b.astype(np.float32),
        ok=ok,
        contrast=contrast,
        median_residual=float(np.median(residual[valid])) / contrast,
        fit_direction=direction,
    )


def _gradient(luma: Floats) -> Floats:
    """|d/dx| + |d/dy| by central differences: how fast luma changes at each pixel."""
    gx = np.abs(cv2.Sobel(luma, cv2.CV_32F, 1, 0, ksize=1)) * 0.5
    gy = np.abs(cv2.Sobel(luma, cv2.CV_32F, 0, 1, ksize=1)) * 0.5
    return (gx + gy).astype(np.float32)


def block_scores(stats: BlockStats, params: AgreementParams) -> Floats:
    """Residual of each block over what a copy may show there; above 1 the block disagrees.

    A copy may differ by a little everywhere (``block_tolerance`` of the global contrast) and
    by a share of the local gradient (``texture_tolerance``): resampling and JPEG errors grow
    with fine texture. The lower of the two images' textures counts, so a subject moved onto a
    plain background, or a region blurred away, is measured against the plain side.
    """
    texture = np.minimum(stats.texture_a, stats.texture_b)
    allowed = params.block_tolerance * stats.contrast + params.texture_tolerance * texture
    return (stats.residual / allowed).astype(np.float32)


def summarise(
    stats: BlockStats, params: AgreementParams, overlap_a: float, overlap_b: float
) -> Agreement:
    ok = stats.ok
    if int(ok.sum()) == 0:
        return _no_overlap(overlap_a, overlap_b)
    scores = block_scores(stats, params)
    disagree = (scores > 1.0) & ok
    rows, cols = _trim_bands(disagree, ok, params)
    core_ok = ok[rows[0] : rows[1], cols[0] : cols[1]]
    core_dis = disagree[rows[0] : rows[1], cols[0] : cols[1]]
    core_scores = scores[rows[0] : rows[1], cols[0] : cols[1]]
    core_blocks = int(core_ok.sum())
    total = int(ok.sum())
    return Agreement(
        overlap_a=min(1.0, overlap_a),
        overlap_b=min(1.0, overlap_b),
        blocks=total,
        core_fraction=core_blocks / total,
        disagreeing=float(core_dis.sum()) / core_blocks if core_blocks else 1.0,
        worst_block=float(core_scores[core_ok].max()) if core_blocks else math.inf,
        residual=stats.median_residual,
        fit_direction=stats.fit_direction,
    )


def _no_overlap(overlap_a: float = 0.0, overlap_b: float = 0.0) -> Agreement:
    return Agreement(min(1.0, overlap_a), min(1.0, overlap_b), 0, 0.0, 1.0, math.inf, math.inf, "")


def _unclipped(grid: Floats) -> NDArray[np.bool_]:
    """Pixels away from black and white: near a clipped area a brightened copy is not linear."""
    low = grid.min(axis=2) if grid.ndim == 3 else grid
    high = grid.max(axis=2) if grid.ndim == 3 else grid
    clipped = ((low <= _CLIP_LOW) | (high >= _CLIP_HIGH)).astype(np.uint8)
    return np.asarray(cv2.dilate(clipped, np.ones((3, 3), np.uint8)) == 0, dtype=bool)


def _design(grid: Floats) -> Floats:
    """Second-order colour terms (and a constant) per pixel, for the photometric fit.

    Quadratic terms follow gamma and tone curves and hue rotations, which a linear map of
    the channels does not; with ten coefficients for the whole overlap the fit cannot paint
    in a moved subject.
    """
    c = (grid.reshape(-1, grid.shape[2]) if grid.ndim == 3 else grid.reshape(-1, 1)) / 255.0
    terms = [c]
    n = c.shape[1]
    for i in range(n):
        for j in range(i, n):
            terms.append(c[:, i : i + 1] * c[:, j : j + 1])
    terms.append(np.ones((c.shape[0], 1), np.float32))
    return np.hstack(terms).astype(np.float32)


def _luma(grid: Floats) -> Floats:
    return grid @ _LUMA if grid.ndim == 3 else grid


def _photometric_fit(
    grid_a: Floats, grid_b: Floats, valid: NDArray[np.bool_]
) -> tuple[Floats, Floats, str]:
    """One image's luma and its robust linear prediction from the other's channels.

    Both directions are fitted and the better one kept: a grey copy predicts the original's
    luma poorly, but the original's colours predict the grey copy's luma well.
    """
    best: tuple[float, Floats, Floats, str] | None = None
    flat_valid = valid.ravel()
    for direction, target, source in (("b->a", grid_a, grid_b), ("a->b", grid_b, grid_a)):
        y = _luma(target)
        design = _design(source)
        x = design[flat_valid]
        yv = y.ravel()[flat_valid]
        keep = np.ones(yv.shape, dtype=bool)
        coef = np.zeros(x.shape[1], np.float32)
        # Refit on the pixels that fit: a caption or a moved subject must not bend the fit.
        for _ in range(3):
            coef = np.linalg.lstsq(x[keep], yv[keep], rcond=None)[0].astype(np.float32)
            err = np.abs(x @ coef - yv)
            keep = err <= 2.5 * float(np.median(err)) + 1.0
        predicted = (design @ coef).reshape(y.shape)
        score = float(np.median(np.abs(y - predicted)[valid]))
        if best is None or score < best[0]:
            best = (score, y, predicted, direction)
    assert best is not None
    return best[1], best[2], best[3]


def _contrast(target: Floats, valid: NDArray[np.bool_]) -> float:
    """A robust spread of luma (the interquartile range), floored so a dark frame is not
    held to an impossibly tight tolerance."""
    q1, q3 = np.percentile(target[valid], [25, 75])
    return max(float(q3 - q1), 8.0)


def _trim_bands(
    disagree: NDArray[np.bool_], ok: NDArray[np.bool_], params: AgreementParams
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Trim edge rows/columns of blocks that mostly disagree (captions, bars, overlays)."""
    gh, gw = disagree.shape
    r0, r1, c0, c1 = 0, gh, 0, gw
    max_rows = int(params.max_band_fraction * gh)
    max_cols = int(params.max_band_fraction * gw)

    def fraction(line_dis: NDArray[np.bool_], line_ok: NDArray[np.bool_]) -> float:
        n = int(line_ok.sum())
        return float((line_dis & line_ok).sum()) / n if n else 1.0

    changed = True
    while changed:
        changed = False
        if (r0 + gh - r1) < max_rows and r1 - r0 > 1:
            if fraction(disagree[r0, c0:c1], ok[r0, c0:c1]) >= params.band_disagreement:
                r0 += 1
                changed = True
            elif fraction(disagree[r1 - 1, c0:c1], ok[r1 - 1, c0:c1]) >= params.band_disagreement:
                r1 -= 1
                changed = True
        if (c0 + gw - c1) < max_cols and c1 - c0 > 1:
            if fraction(disagree[r0:r1, c0], ok[r0:r1, c0]) >= params.band_disagreement:
                c0 += 1
                changed = True
            elif fraction(disagree[r0:r1, c1 - 1], ok[r0:r1, c1 - 1]) >= params.band_disagreement:
                c1 -= 1
                changed = True
    return (r0, r1), (c0, c1)
