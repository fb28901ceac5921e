"""A sketch of a known photo: what turning down a look-alike needs, without its pixels.

Most candidates that reach verification are look-alikes (the next shot of a scene, another
part of one panorama), and most of those are turned down because their features do not line
up, or line up on only part of either picture. That decision reads four things of the known
photo: its size at working resolution, its content box, a 24x24 thumbnail and its ORB
features. Kept between verifications (about 45 KB a photo), they spare decoding the known
file and detecting its features again for every new file it is compared with.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from dupwatch.agreement import Box, content_box
from dupwatch.alignment import (
    Features,
    Thumb,
    mirror,
    orb_features,
    remembered_features,
    thumbnail,
)


@dataclass(frozen=True, slots=True)
class Sketch:
    """The parts of a photo at working size that screening reads (``verify.screen``)."""

    size: tuple[int, int]  # height, width of the working-size image
    box: Box  # content_box: the picture without uniform borders
    thumb: Thumb
    features: Features  # ORB, as verification detects them
    # ORB of the mirrored image, when verification needed them (a pair that looked mirrored).
    mirrored_features: Features | None = None

    @classmethod
    def of(cls, image: NDArray[np.uint8], *, orb_count: int) -> Sketch:
        """The sketch of ``image`` (RGB, working size). The ORB features come from the same
        content-keyed cache verification uses, so sketching an image just verified is cheap."""
        height, width = image.shape[:2]
        return cls(
            (height, width),
            content_box(image),
            thumbnail(image),
            orb_features(image, count=orb_count),
            remembered_features(mirror(image), count=orb_count),
        )

    def mirrored_box(self) -> Box:
        """``content_box`` of the mirrored image."""
        x0, y0, x1, y1 = self.box
        width = self.size[1]
        return width - x1, y0, width - x0, y1


class SketchCache:
    """The most recently used sketches, by the SHA-256 of the file they were made from.

    Keyed by content, so a renamed or re-found file keeps its sketch and a changed one does
    not reuse the old. Bounded: at about 45 KB a sketch, the default holds ~23 MB.
    """

    def __init__(self, capacity: int = 512) -> None:
        self._capacity = capacity
        self._sketches: OrderedDict[str, Sketch] = OrderedDict()

    def get(self, sha256: str | None) -> Sketch | None:
        if sha256 is None:
            return None
        sketch = self._sketches.get(sha256)
        if sketch is not None:
            self._sketches.move_to_end(sha256)
        return sketch

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self._sketches

    def put(self, sha256: str | None, sketch: Sketch | None) -> None:
        if sha256 is None or sketch is None or self._capacity < 1:
            return
        self._sketches[sha256] = sketch
        self._sketches.move_to_end(sha256)
        while len(self._sketches) > self._capacity:
            self._sketches.popitem(last=False)

    def __len__(self) -> int:
        return len(self._sketches)
