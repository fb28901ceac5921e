"""The photometric part of comparing two aligned images: undo brightness, contrast and colour.

One image's luma (or value channel) is predicted from the other's colours by a robust
second-order fit over the whole overlap; what the fit cannot explain is the residual the
block comparison judges.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float32]

# Luma weights (BT.601), the same the decoders use for grey.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def channel_max(image: NDArray[Any]) -> NDArray[Any]:
    """The largest of the three channels per pixel, as ``image.max(axis=2)``.

    numpy reduces a short last axis one pixel at a time; two elementwise maxima over the
    channel planes give the same values some fifty times faster, and verification takes this
    several times per candidate.
    """
    largest: NDArray[Any] = np.maximum(np.maximum(image[..., 0], image[..., 1]), image[..., 2])
    return largest


def _design(grid: Floats) -> Floats:
    """Second-order colour terms (and a constant) per pixel, for the photometric fit.

    Quadratic terms follow gamma and tone curves, which a linear map of the channels does not;
    the value channel (the largest of R, G, B) is what a hue or saturation change keeps. With
    a dozen coefficients for the whole overlap the fit cannot paint in a moved subject.
    """
    c = (grid.reshape(-1, grid.shape[2]) if grid.ndim == 3 else grid.reshape(-1, 1)) / 255.0
    value = channel_max(c)[:, None] if c.shape[1] == 3 else c.max(axis=1, keepdims=True)
    terms = [c, value, value * value]
    n = c.shape[1]
    for i in range(n):
        for j in range(i, n):
            terms.append(c[:, i : i + 1] * c[:, j : j + 1])
    terms.append(np.ones((c.shape[0], 1), np.float32))
    return np.hstack(terms).astype(np.float32)


def _targets(grid: Floats) -> list[tuple[str, Floats]]:
    """What is predicted: luma, and the value channel (unchanged by hue and saturation)."""
    if grid.ndim == 2:
        return [("luma", grid)]
    return [("luma", grid @ _LUMA), ("value", channel_max(grid))]


def photometric_fit(
    grid_a: Floats, grid_b: Floats, valid: NDArray[np.bool_]
) -> tuple[Floats, Floats, str]:
    """One image's luma (or value) and its robust prediction from the other's colours.

    Both directions and both targets are fitted and the best kept: a grey copy predicts the
    original's luma poorly, but the original's colours predict the grey copy's luma well; a
    hue shift is undone exactly on the value channel.
    """
    best: tuple[float, Floats, Floats, Floats, str] | None = None
    # Every sixth valid pixel (thousands) is plenty for a dozen coefficients; the whole grid is
    # predicted only once, under the fit that wins.
    sample = np.flatnonzero(valid.ravel())[::6]
    for direction, target_grid, source in (("b->a", grid_a, grid_b), ("a->b", grid_b, grid_a)):
        pixels = source.reshape(-1, 1, source.shape[2]) if source.ndim == 3 else source.ravel()
        x = _design(pixels[sample])
        for kind, y in _targets(target_grid):
            yv = y.ravel()[sample]
            keep = np.ones(yv.shape, dtype=bool)
            coef = np.zeros(x.shape[1], np.float32)
            err = yv
            # Refit on the pixels that fit: a caption or a moved subject must not bend it.
            for _ in range(3):
                coef = _least_squares(x[keep], yv[keep])
                err = np.abs(x @ coef - yv)
                keep = err <= 2.5 * float(np.median(err)) + 1.0
            score = float(np.median(err))
            if best is None or score < best[0]:
                best = (score, y, source, coef, f"{direction} {kind}")
    assert best is not None
    _, target, source, coef, how = best
    predicted = (_design(source) @ coef).reshape(target.shape)
    return target, predicted, how


def _least_squares(x: Floats, y: Floats) -> Floats:
    """Solve min |x c - y| through the normal equations.

    For a dozen well-scaled columns this is exact enough in float64 and some 25 times faster
    than an SVD-based ``lstsq``, which dominated the cost of a verification.
    """
    xd = x.astype(np.float64)
    gram = xd.T @ xd
    # A grey image makes the colour columns identical and the system singular: a small ridge,
    # relative to the data, keeps the coefficients small enough to use in float32.
    gram += 1e-6 * float(np.trace(gram)) / len(gram) * np.eye(len(gram))
    try:
        solution = np.linalg.solve(gram, xd.T @ y.astype(np.float64))
    except np.linalg.LinAlgError:
        solution = np.linalg.lstsq(xd, y, rcond=None)[0]
    return np.asarray(solution, dtype=np.float32)


def luma_spread(target: Floats, valid: NDArray[np.bool_]) -> float:
    """A robust spread of luma (the interquartile range), floored so a dark frame is not
    held to an impossibly tight tolerance."""
    q1, q3 = np.percentile(target[valid], [25, 75])
    return max(float(q3 - q1), 8.0)
