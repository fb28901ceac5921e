"""Find a photo shown inside a frame: letterbox bars, an image viewer's window, a phone's gallery.

A screenshot of a photo or a letterboxed copy embeds far from the photo itself, because most of
its pixels are the frame. The frame is flat (bars, window chrome, a screen background, thin text
and icons) and its colours run along the image's sides from corner to corner or all round;
a photograph is textured almost everywhere. Filling the frame's colours inward from the sides,
through flat pixels only, leaves the photo: the largest part left, when it is a rectangle with
straight edges well inside the image. That holds for a dark photo in a dark frame too, whose
darkest parts match the frame's grey: they are rarely flat, and never reach the corners.
The pipeline searches with the photo's embedding too and verifies it as itself first. Only
candidates come of this; verification still decides.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.typing import NDArray

Image = NDArray[np.uint8]
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end exclusive

# A 3 x 3 neighbourhood whose grey levels span no more than this is flat: interface fills are
# exactly flat in PNG screenshots and nearly so in JPEG ones.
_FLAT_RANGE = 3
# A frame region holds grey levels within this of the flat border pixel it grows from (at
# most: less when the frame is cleaner, see ``_fill_tolerance``); a fixed range (not pixel to
# pixel) keeps a fill from creeping down a photo's smooth gradient.
_FILL_RANGE = 4
# Seeds along each side of the box, every this many pixels ...
_SEED_STEP = 4
# ... and, inside a frame already peeled, past its edge: the blend of two fills that
# resampling leaves there is not flat and can be this many pixels deep.
_MAX_INSET = 6
# A frame runs along the sides: unless this share of the outermost pixels is flat, there is
# none (most photos stop here, before any filling). Bars on two sides of a 4:3 photo
# letterboxed to 16:9 take 36 % of them.
_MIN_FLAT_SIDES = 0.3
# A fill starts only from a frame colour. Sure ones are grey levels (give or take the fill
# range) that run along a side from one corner to the other, unbroken but for text and icons
# (a bar, a title bar, a screen background) ...
_FULL_SIDE = 0.75
# ... or along a good part of every side (a window's fill round a photo). A photo touching a
# side can be flat there too (a night sky, a black background), but only on the sides it
# touches and only along the stretch it takes, which stops short of the corners.
_ALL_ROUND = 0.2
# Failing those, a level found along this share of the sides in all.
_COMMON = 0.2
# The photo is a rectangle: each side of its box runs straight along it for at least this
# share of its length (its darkest stretch may fill in with a black bar) ...
_STRAIGHT = 0.5
# ... or does so for this share once what a fill leaves of the frame next to the photo is
# trimmed off (a title bar's text, a toolbar's buttons) ...
_MIN_EDGE = 0.85
# ... which is at most this share of the photo's width or height ...
_MAX_TRIM = 0.15
# ... and stops short of the photo at once: lines that run along half of it or more are a
# rounded or ragged shape (a planet in a black sky, a tree against a clear one), unless there
# are at most this many of them (the blend of its edge after resampling).
_MAX_SOFT = 2
# What a fill leaves of the frame itself is thin: text, icons, outlines and the blended line
# where two fills meet. An opening this wide removes it.
_OPEN = 9
# Frames nest (a screen background around a window around the photo): peel at most this many.
_LAYERS = 3
# The photo left after peeling must fill its box this well: its darkest parts next to a black
# bar fill in with the bar ...
_MIN_FILL = 0.7
# ... and cover this share of the image: smaller boxes are thumbnails or icons, larger ones
# leave too little to be a frame.
_MIN_AREA = 0.08
_MAX_AREA = 0.85


def _peel(grey: Image, flat: NDArray[np.bool_], box: Box) -> Box | None:
    """Fill the flat frame inward from the sides of ``box``; the box of what is left.

    None when too little of the sides is flat (no frame) or nothing rectangular is left.
    """
    x0, y0, x1, y1 = box
    outer = box == (0, 0, grey.shape[1], grey.shape[0])
    if not outer:
        x0, y0, x1, y1 = _inside_edges(grey, flat, box)
    if x1 - x0 < 16 or y1 - y0 < 16:
        return None
    sides = (
        (slice(y0, y0 + 1), slice(x0, x1)),
        (slice(y1 - 1, y1), slice(x0, x1)),
        (slice(y0, y1), slice(x0, x0 + 1)),
        (slice(y0, y1), slice(x1 - 1, x1)),
    )
    ring = np.concatenate([flat[side].ravel() for side in sides])
    if float(ring.mean()) < _MIN_FLAT_SIDES:
        return None  # textured all round: the photo itself, not a frame around it
    region = np.ascontiguousarray(grey[y0:y1, x0:x1])
    region_flat = flat[y0:y1, x0:x1]
    sure, common = _frame_colours(grey, flat, sides)
    # The sure colours first; a colour that is only common along the sides (a window's fill
    # between its title bar and toolbar) is tried when they leave no rectangle.
    for colours in (sure, common) if bool((common & ~sure).any()) else (sure,):
        if not colours.any():
            continue
        tolerance = _fill_tolerance(grey, flat, sides, colours)
        left = _fill_frame(region, region_flat, colours, tolerance)
        found = _rectangle(left)
        if found is not None:
            x, y, bw, bh = found
            return x0 + x, y0 + y, x0 + x + bw, y0 + y + bh
    return None


def _inside_edges(grey: Image, flat: NDArray[np.bool_], box: Box) -> Box:
    """``box`` moved in past its own edges: the blend of two fills after resampling.

    Each side moves in, at most ``_MAX_INSET`` lines, past lines that are even along their
    length (a blend, or a margin too thin to be flat) to the first flat one, or to the first
    textured one: then the photo itself runs along that side.
    """
    x0, y0, x1, y1 = box
    inner = grey[y0:y1, x0:x1].astype(np.int16)
    inner_flat = flat[y0:y1, x0:x1]
    # Along a row, neighbours differ little in a blend or a frame and much in a photo.
    even_rows = np.abs(np.diff(inner, axis=1)) <= _FLAT_RANGE
    even_cols = np.abs(np.diff(inner, axis=0)) <= _FLAT_RANGE

    def steps(lines: list[tuple[float, float]]) -> int:
        for depth, (flat_share, even_share) in enumerate(lines[:_MAX_INSET]):
            if flat_share >= 0.5 or even_share < 0.5:
                return depth
        return _MAX_INSET

    rows = list(zip(inner_flat.mean(axis=1), even_rows.mean(axis=1), strict=True))
    cols = list(zip(inner_flat.mean(axis=0), even_cols.mean(axis=0), strict=True))
    return (
        x0 + steps(cols),
        y0 + steps(rows),
        x1 - steps(cols[::-1]),
        y1 - steps(rows[::-1]),
    )


def _fill_frame(
    region: Image, region_flat: NDArray[np.bool_], colours: NDArray[np.bool_], tolerance: int
) -> Image:
    """What is left of ``region`` (255) after filling the frame from its sides (0)."""
    h, w = region.shape
    # The frame is flat everywhere but on its text and icons: a fill kept to flat pixels stops
    # at a dark photo's edge even where the photo's grey levels match the frame's, because a
    # photo's texture is rarely flat for long.
    mask = np.ones((h + 2, w + 2), np.uint8)
    mask[1:-1, 1:-1] = ~region_flat
    flags = 4 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (255 << 8)
    seeds = [(x, 0) for x in range(0, w, _SEED_STEP)] + [
        (x, h - 1) for x in range(0, w, _SEED_STEP)
    ]
    seeds += [(0, y) for y in range(0, h, _SEED_STEP)] + [
        (w - 1, y) for y in range(0, h, _SEED_STEP)
    ]
    for x, y in seeds:
        if mask[y + 1, x + 1] or not colours[region[y, x]]:
            continue
        cv2.floodFill(region, mask, (x, y), 0, tolerance, tolerance, flags)
    unfilled = (mask[1:-1, 1:-1] != 255).view(np.uint8) * np.uint8(255)
    return np.asarray(
        cv2.morphologyEx(unfilled, cv2.MORPH_OPEN, np.ones((_OPEN, _OPEN), np.uint8)), np.uint8
    )


def _rectangle(left: Image) -> tuple[int, int, int, int] | None:
    """The largest part left, as x, y, width, height, if it is a solid rectangle."""
    # Labels without OpenCV's statistics, which take four times as long as the labelling:
    # only the largest part's area and box are needed.
    count, labels = cv2.connectedComponents(left, connectivity=4)
    if count < 2:
        return None
    areas = np.bincount(labels.ravel(), minlength=count)
    largest = 1 + int(np.argmax(areas[1:]))
    whole = labels == largest
    rows, cols = np.flatnonzero(whole.any(axis=1)), np.flatnonzero(whole.any(axis=0))
    x, y = int(cols[0]), int(rows[0])
    bw, bh = int(cols[-1]) + 1 - x, int(rows[-1]) + 1 - y
    part = whole[y : y + bh, x : x + bw]
    # A photo's edges are straight (see ``_trim``); a round or ragged shape on a flat ground
    # (a planet in a black sky, a tree against a clear one) has none.
    rows, cols = part.mean(axis=1), part.mean(axis=0)
    trims = [_trim(rows), _trim(rows[::-1]), _trim(cols), _trim(cols[::-1])]
    if None in trims:
        return None
    top, bottom, lft, rgt = (int(t) for t in trims if t is not None)
    if max(top, bottom) > _MAX_TRIM * bh or max(lft, rgt) > _MAX_TRIM * bw:
        return None
    part = part[top : bh - bottom, lft : bw - rgt]
    if part.size == 0 or float(part.mean()) < _MIN_FILL:
        return None
    return x + lft, y + top, part.shape[1], part.shape[0]


def _trim(shares: NDArray[np.float64]) -> int | None:
    """Lines to trim from the start of ``shares`` (each line's share of the part) to reach the
    photo's edge, or None when the part narrows gradually there instead of having an edge.

    No trimming where the part runs along half of the line already: a straight edge (the
    darkest stretch of it may have filled in with a black bar).
    """
    if shares[0] >= _STRAIGHT:
        return 0
    solid = np.flatnonzero(shares >= _MIN_EDGE)
    if solid.size == 0:
        return None
    trimmed = int(solid[0])
    if int((shares[:trimmed] >= _STRAIGHT).sum()) > _MAX_SOFT:
        return None
    return trimmed


def _frame_colours(
    grey: Image, flat: NDArray[np.bool_], sides: tuple[tuple[slice, slice], ...]
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """The frame's sure and common colours along the given sides, as masks over grey levels.

    Sure: a level (give or take the fill range) that runs along a side from corner to corner
    but for text and icons, or along a good part of every side. Common: one that takes a good
    share of the sides in all.
    """
    window = np.ones(2 * _FILL_RANGE + 1)
    grey_levels = np.arange(256)
    shares = []
    corner_to_corner = []
    for side in sides:
        line, line_flat = grey[side].ravel(), flat[side].ravel()
        counts = np.bincount(line[line_flat], minlength=256)
        shares.append(np.convolve(counts, window, "same") / line.size)
        ends = [int(line[0]), int(line[-1])]
        corner_to_corner.append(
            np.all([np.abs(grey_levels - end) <= _FILL_RANGE for end in ends], axis=0)
        )
    share = np.stack(shares)
    lengths = np.array([grey[side].size for side in sides], np.float64)
    bars = ((share >= _FULL_SIDE) & np.stack(corner_to_corner)).any(axis=0)
    sure: NDArray[np.bool_] = bars | (share.min(axis=0) >= _ALL_ROUND)
    common: NDArray[np.bool_] = (share * lengths[:, None]).sum(axis=0) >= _COMMON * lengths.sum()
    return sure, common | sure


def _fill_tolerance(
    grey: Image,
    flat: NDArray[np.bool_],
    sides: tuple[tuple[slice, slice], ...],
    colours: NDArray[np.bool_],
) -> int:
    """How far a fill may stray from its seed: the frame's own noise, at most the fill range.

    An interface drawn in PNG is exactly flat, and a fill that tolerates no more than that
    stops at a dark photo's edge even where the photo is almost as dark as the frame; a JPEG
    screenshot's frame varies by a few grey levels and needs them.
    """
    steps = []
    for side in sides:
        line = grey[side].ravel()
        keep = flat[side].ravel() & colours[line]
        both = keep[1:] & keep[:-1]
        steps.append(np.abs(np.diff(line.astype(np.int16)))[both])
    found = np.concatenate(steps)
    if found.size == 0:
        return _FILL_RANGE
    return int(min(_FILL_RANGE, 1 + np.percentile(found, 99)))


def photo_box(image: Image) -> Box | None:
    """The box of the photo inside a frame, or None when the image is not framed."""
    h, w = image.shape[:2]
    if h < 32 or w < 32:
        return None
    grey = np.asarray(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    flat = cv2.subtract(cv2.dilate(grey, kernel), cv2.erode(grey, kernel)) <= _FLAT_RANGE
    box: Box = (0, 0, w, h)
    found: Box | None = None
    for _ in range(_LAYERS):
        inner = _peel(grey, flat, box)
        if inner is None or inner == box:
            break
        box = found = inner
    if found is None:
        return None
    x0, y0, x1, y1 = found
    share = (x1 - x0) * (y1 - y0) / (w * h)
    return found if _MIN_AREA <= share <= _MAX_AREA else None


def photo_inside(image: Image) -> Image | None:
    """The framed photo's pixels (see ``photo_box``), or None."""
    box = photo_box(image)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(image[y0:y1, x0:x1])
