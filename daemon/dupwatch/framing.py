"""Find a photo shown inside a frame: letterbox bars, an image viewer's window, a phone's gallery.

A screenshot of a photo or a letterboxed copy embeds far from the photo itself, because most of
its pixels are the frame. The frame is flat (bars, window chrome, a screen background, thin text
and icons); a photograph is textured almost everywhere. The largest textured region, when it is
a clear rectangle well inside the image, is the photo: the pipeline searches with its embedding
too. Only candidates come of this; verification still decides.
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
# A frame region holds grey levels within this of the flat border pixel it grows from; a fixed
# range (not pixel to pixel) keeps a fill from creeping down a photo's smooth gradient.
_FILL_RANGE = 4
# Seeds along each side of the box, every this many pixels ...
_SEED_STEP = 4
# ... and, inside a frame already peeled, this many pixels in from its edge.
_INSET = 2
# A frame runs along the sides: unless this share of the outermost pixels is flat, there is
# none (most photos stop here, before any filling) ...
_MIN_FLAT_SIDES = 0.4
# ... and a frame inside a frame (a window on a screen) runs all round the photo.
_MIN_FLAT_INNER = 0.6
# A fill starts only from a frame colour: a grey level (give or take the fill range) found
# along at least this share of the sides.
_MIN_FRAME_COLOUR = 0.2
# Frames nest (a screen background around a window around the photo): peel at most this many.
_LAYERS = 3
# The photo left after peeling must fill its box this well: it is a rectangle, though its
# darkest parts next to a black bar fill in with the bar ...
_MIN_FILL = 0.7
# ... and cover this share of the image: smaller boxes are thumbnails or icons, larger ones
# leave too little to be a frame.
_MIN_AREA = 0.08
_MAX_AREA = 0.85


def _peel(grey: Image, flat: NDArray[np.bool_], box: Box) -> Box | None:
    """Fill the flat frame inward from the sides of ``box``; the box of what is left.

    None when too little of the sides is flat (no frame) or nothing solid is left.
    """
    x0, y0, x1, y1 = box
    outer = box == (0, 0, grey.shape[1], grey.shape[0])
    if not outer:
        # An inner box's own edge is a blend of two fills after resampling: start just inside.
        x0, y0, x1, y1 = x0 + _INSET, y0 + _INSET, x1 - _INSET, y1 - _INSET
    if x1 - x0 < 16 or y1 - y0 < 16:
        return None
    sides = (
        (slice(y0, y0 + 1), slice(x0, x1)),
        (slice(y1 - 1, y1), slice(x0, x1)),
        (slice(y0, y1), slice(x0, x0 + 1)),
        (slice(y0, y1), slice(x1 - 1, x1)),
    )
    ring = np.concatenate([flat[side].ravel() for side in sides])
    if float(ring.mean()) < (_MIN_FLAT_SIDES if outer else _MIN_FLAT_INNER):
        return None  # textured all round: the photo itself, not a frame around it
    # The frame's own colours: grey levels that run along a good part of the sides. A photo
    # touching a side may be flat there too (a night sky), but only along a short stretch.
    levels = np.concatenate([grey[side].ravel() for side in sides])[ring]
    counts = np.convolve(np.bincount(levels, minlength=256), np.ones(2 * _FILL_RANGE + 1), "same")
    frame_level = counts >= _MIN_FRAME_COLOUR * ring.size
    region = np.ascontiguousarray(grey[y0:y1, x0:x1])
    h, w = region.shape
    mask = np.zeros((h + 2, w + 2), np.uint8)
    flags = 4 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (255 << 8)
    seeds = [(x, 0) for x in range(0, w, _SEED_STEP)] + [
        (x, h - 1) for x in range(0, w, _SEED_STEP)
    ]
    seeds += [(0, y) for y in range(0, h, _SEED_STEP)] + [
        (w - 1, y) for y in range(0, h, _SEED_STEP)
    ]
    filled_any = False
    for x, y in seeds:
        if mask[y + 1, x + 1] or not flat[y0 + y, x0 + x] or not frame_level[region[y, x]]:
            continue
        cv2.floodFill(region, mask, (x, y), 0, _FILL_RANGE, _FILL_RANGE, flags)
        filled_any = True
    if not filled_any:
        return None
    unfilled = np.where(mask[1:-1, 1:-1] == 0, 255, 0).astype(np.uint8)
    left = np.asarray(
        cv2.morphologyEx(unfilled, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)), np.uint8
    )
    count, _labels, stats, _centroids = cv2.connectedComponentsWithStats(left, connectivity=4)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, bw, bh, area = (int(v) for v in stats[largest])
    if area < _MIN_FILL * bw * bh:
        return None
    return x0 + x, y0 + y, x0 + x + bw, y0 + y + bh


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
