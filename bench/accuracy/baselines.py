"""Baseline duplicate finders run with dupwatch's protocol: each file against all files before it.

Files are taken in sorted path order (originals, then hard negatives, then copies: the order
``dupwatch scan`` walks them). Every method first reports a byte-identical earlier file as
``exact`` (SHA-256), as every common tool does; otherwise its nearest earlier file is reported as
``duplicate`` when it passes the method's usual threshold, and is kept as ``best_match`` for the
precision-recall curve either way.

- ``phash``: imagehash pHash (64 bits), Hamming distance <= 10 (imagededup's default). It hashes
  the stored pixels and ignores the EXIF orientation, as imagehash does.
- ``pdq``: pdqhash (256 bits), distance <= 31 (ThreatExchange's recommendation), on the stored
  pixels reduced to 512 px as the reference implementation suggests; no orientation either.
- ``cnn_cosine``: dupwatch's own embedding (EfficientNet-Lite0, classifier removed) of
  ``dupwatch.images.decode_image`` pixels (oriented), cosine >= 0.9 (imagededup's CNN default),
  without any verification.

Similarity written for the curves: 1 - d/64 (pHash), 1 - d/256 (PDQ), cosine (CNN).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

PHASH_MAX = 10
PDQ_MAX = 31
COSINE_MIN = 0.9


@dataclass(frozen=True, slots=True)
class Baseline:
    """A method: signatures for all files, then a distance matrix turned into similarity."""

    name: str
    signatures: Callable[[list[Path]], NDArray[np.float32]]
    similarity: Callable[[NDArray[np.float32], NDArray[np.float32]], NDArray[np.float32]]
    threshold: float  # on the similarity


def _bits_similarity(
    bits: int,
) -> Callable[[NDArray[np.float32], NDArray[np.float32]], NDArray[np.float32]]:
    def similarity(query: NDArray[np.float32], earlier: NDArray[np.float32]) -> NDArray[np.float32]:
        distance = np.abs(earlier - query).sum(axis=1)
        return (1.0 - distance / bits).astype(np.float32)

    return similarity


def _cosine(query: NDArray[np.float32], earlier: NDArray[np.float32]) -> NDArray[np.float32]:
    return (earlier @ query).astype(np.float32)


def _open_unoriented(path: Path, max_side: int | None = None) -> Image.Image:
    image = Image.open(path)
    if max_side is not None:
        image.draft("RGB", (max_side, max_side))
    image = image.convert("RGB")
    if max_side is not None and max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.BOX)
    return image


def phash_signatures(paths: list[Path]) -> NDArray[np.float32]:
    import imagehash

    rows = [imagehash.phash(_open_unoriented(p, 1024)).hash.flatten() for p in paths]
    return np.asarray(rows, np.float32)


def pdq_signatures(paths: list[Path]) -> NDArray[np.float32]:
    import pdqhash

    rows = []
    for p in paths:
        pixels = np.asarray(_open_unoriented(p, 512))
        bits, _quality = pdqhash.compute(pixels)
        rows.append(bits)
    return np.asarray(rows, np.float32)


def cnn_signatures(paths: list[Path]) -> NDArray[np.float32]:
    from dupwatch.embedder import load_embedder
    from dupwatch.images import decode_image, read_file

    embedder = load_embedder(threads=2)
    vectors = []
    for p in paths:
        pixels = decode_image(read_file(p)).pixels
        vectors.append(embedder.embed([pixels])[0])
    return np.asarray(vectors, np.float32)


BASELINES = (
    Baseline("phash", phash_signatures, _bits_similarity(64), 1.0 - PHASH_MAX / 64),
    Baseline("pdq", pdq_signatures, _bits_similarity(256), 1.0 - PDQ_MAX / 256),
    Baseline("cnn_cosine", cnn_signatures, _cosine, COSINE_MIN),
)


def run_baseline(baseline: Baseline, root: Path, files: list[str], out: Path) -> float:
    """Write the baseline's decisions (JSON lines) for ``files`` under ``root``; returns seconds."""
    started = time.perf_counter()
    paths = [root / f for f in files]
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    signatures = baseline.signatures(paths)
    first_by_digest: dict[str, int] = {}
    with out.open("w") as handle:
        for i, path in enumerate(files):
            row: dict[str, object] = {"path": path, "tier": "unique", "duplicate_of": None}
            row["similarity"] = None
            if i > 0:
                sims = baseline.similarity(signatures[i], signatures[:i])
                j = int(np.argmax(sims))
                row["best_match"] = files[j]
                row["best_similarity"] = round(float(sims[j]), 6)
            exact = first_by_digest.get(digests[i])
            if exact is not None:
                row.update(tier="exact", duplicate_of=files[exact], similarity=1.0)
            elif i > 0 and float(row["best_similarity"]) >= baseline.threshold:  # type: ignore[arg-type]
                row.update(
                    tier="duplicate",
                    duplicate_of=row["best_match"],
                    similarity=row["best_similarity"],
                )
            first_by_digest.setdefault(digests[i], i)
            handle.write(json.dumps(row) + "\n")
    return time.perf_counter() - started
