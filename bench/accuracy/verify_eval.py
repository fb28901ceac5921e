"""Evaluate and calibrate verification on the labelled accuracy set.

Runs ``dupwatch.verify.verify`` on every labelled positive pair (each copy against its
original, the copy as the new file), on every pair inside a hard-negative group, and on each
original against its nearest other original by perceptual hash (look-alikes the index might
propose). Prints per-class pass rates, every hard-negative false positive, and the time per
pair. With ``--sweep`` it also measures every alignment once and re-scores it under a grid of
tolerances, printing the settings with no false positive and the most positives.

Files are decoded exactly as the daemon does (``read_file`` + ``decode_image`` at 512 px).

Usage: python bench/accuracy/verify_eval.py SETDIR [--sweep] [--limit N] [--cache PIXELS.npz]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
from generate import read_labels
from numpy.typing import NDArray

from dupwatch.filebytes import read_file
from dupwatch.images import decode_image
from dupwatch.phash import hamming, perceptual_hash
from dupwatch.verify import (
    Candidate,
    VerifyThresholds,
    decide,
    measure,
    verify,
)

Pair = tuple[str, str, str, str]  # kind ("pos"/"hardneg"/"lookalike"), class, new file, known file

# Tolerances that change the block scores (each pair is re-scored once per combination) ...
SCORE_SWEEP = {
    "noise_floor": [1.0, 2.0, 3.0],
    "block_tolerance": [0.02, 0.03],
    "texture_tolerance": [0.4, 0.5, 0.7],
}
# ... and the decision thresholds applied to the scores (cheap).
DECISION_SWEEP = {
    "max_worst_block": [1.0, 1.25, 1.5, 2.0],
    "max_disagreeing": [0.0, 0.005, 0.01],
    "min_containment": [0.985],
    "max_outliers": [0.005, 0.01, 0.02, 1.0],
}


def load(root: Path, name: str, cache: dict[str, NDArray[np.uint8]]) -> NDArray[np.uint8]:
    if name not in cache:
        cache[name] = decode_image(read_file(root / name)).pixels
    return cache[name]


def load_cache(path: Path | None) -> dict[str, NDArray[np.uint8]]:
    """Decoded pixels saved by an earlier run (decoding full-size photos dominates a run)."""
    if path is None or not path.exists():
        return {}
    with np.load(path) as saved:
        return {name: saved[name] for name in saved.files}


def build_pairs(root: Path, limit: int | None) -> list[Pair]:
    labels = read_labels(root / "labels.csv")
    originals = {lab.original_id: lab.file for lab in labels if lab.transform == "original"}
    pairs: list[Pair] = []
    copies = [lab for lab in labels if lab.transform not in ("original", "hardneg")]
    for lab in copies[:limit] if limit else copies:
        pairs.append(("pos", lab.transform, lab.file, originals[lab.original_id]))
    groups: dict[str, list[str]] = defaultdict(list)
    for lab in labels:
        if lab.transform == "hardneg":
            groups[lab.group].append(lab.file)
    for group, files in sorted(groups.items()):
        for first, second in itertools.combinations(sorted(files), 2):
            pairs.append(("hardneg", group, second, first))
    return pairs


def lookalike_pairs(root: Path, cache: dict[str, NDArray[np.uint8]]) -> list[Pair]:
    """Each original with its nearest other original by pHash."""
    labels = read_labels(root / "labels.csv")
    files = sorted(lab.file for lab in labels if lab.transform == "original")
    hashes = {f: perceptual_hash(load(root, f, cache)) for f in files}
    pairs: list[Pair] = []
    for f in files:
        nearest = min((g for g in files if g != f), key=lambda g: hamming(hashes[f], hashes[g]))
        if f > nearest:  # one direction is enough
            pairs.append(("lookalike", "nearest_phash", f, nearest))
    return pairs


def evaluate(root: Path, pairs: list[Pair], cache: dict[str, NDArray[np.uint8]]) -> None:
    passed: Counter[tuple[str, str]] = Counter()
    total: Counter[tuple[str, str]] = Counter()
    times: list[float] = []
    for kind, cls, new, known in pairs:
        a, b = load(root, new, cache), load(root, known, cache)
        start = time.perf_counter()
        result = verify(a, b)
        times.append(time.perf_counter() - start)
        total[(kind, cls)] += 1
        passed[(kind, cls)] += result.same
        if kind != "pos" and result.same:
            print(f"FALSE POSITIVE {kind} {cls}: {new} vs {known}: {result.explain()}")
        if kind == "pos" and not result.same:
            print(f"miss {cls}: {new}: {result.explain()}")
    print(f"\n{'kind':10s} {'class':28s} same/total")
    for key in sorted(total):
        print(f"{key[0]:10s} {key[1]:28s} {passed[key]}/{total[key]}")
    pos = [k for k in total if k[0] == "pos"]
    pos_pass = sum(passed[k] for k in pos)
    pos_total = sum(total[k] for k in pos)
    neg_fp = sum(passed[k] for k in total if k[0] != "pos")
    print(f"\npositives {pos_pass}/{pos_total} = {pos_pass / max(pos_total, 1):.4f}")
    print(f"false positives among negatives: {neg_fp}")
    ms = sorted(t * 1000 for t in times)
    print(
        f"ms per pair: median {statistics.median(ms):.1f}, "
        f"p95 {ms[int(0.95 * (len(ms) - 1))]:.1f}, max {ms[-1]:.1f} (n={len(ms)})"
    )


def sweep(root: Path, pairs: list[Pair], cache: dict[str, NDArray[np.uint8]]) -> None:
    base = VerifyThresholds()
    measured: list[tuple[str, str, list[Candidate]]] = []
    for kind, cls, new, known in pairs:
        a, b = load(root, new, cache), load(root, known, cache)
        measured.append((kind, cls, measure(a, b, base, exhaustive=True)))
    results = []
    score_names, decision_names = list(SCORE_SWEEP), list(DECISION_SWEEP)
    for score_values in itertools.product(*(SCORE_SWEEP[n] for n in score_names)):
        scored_th = replace(base, **dict(zip(score_names, score_values, strict=True)))
        rescored = [
            (kind, cls, [c.rescore(scored_th) for c in candidates])
            for kind, cls, candidates in measured
        ]
        for decision_values in itertools.product(*(DECISION_SWEEP[n] for n in decision_names)):
            th = replace(scored_th, **dict(zip(decision_names, decision_values, strict=True)))
            fp = 0
            missed: Counter[str] = Counter()
            for kind, cls, candidates in rescored:
                same = any(decide(c, th)[0] for c in candidates)
                if kind == "pos" and not same:
                    missed[cls] += 1
                elif kind != "pos" and same:
                    fp += 1
            results.append((fp, sum(missed.values()), score_values + decision_values, missed))
    results.sort(key=lambda r: (r[0], r[1]))
    print("\nsweep: false positives, missed positives, " + ", ".join(score_names + decision_names))
    for fp, miss, values, missed in results[:20]:
        print(fp, miss, values, dict(missed))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--limit", type=int, default=None, help="first N copies only")
    parser.add_argument("--cache", type=Path, default=None, help="decoded pixels (.npz)")
    args = parser.parse_args()
    cache = load_cache(args.cache)
    pairs = build_pairs(args.root, args.limit) + lookalike_pairs(args.root, cache)
    evaluate(args.root, pairs, cache)
    if args.cache is not None and not args.cache.exists():
        np.savez(args.cache, **cache)  # type: ignore[arg-type]
    if args.sweep:
        sweep(args.root, pairs, cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
