"""Calibrate dupwatch's candidate thresholds on a labelled set of your own photos.

Two steps:

``collect``  scans a labelled set (made by ``bench/accuracy/generate.py`` from a folder of your
             photos, or the benchmark's own set) once with the real pipeline, in dry-run mode and
             with a wide net: candidates are verified down to a low similarity. Each
             candidate's signals (embedding similarity, rank, pHash distance and symmetry, the
             verification's verdict and reason) come from the pipeline's ``candidate_examined``
             debug events and are saved as JSON lines, with the file's own result.
``report``   replays the pipeline's candidate rule on those signals under a grid of settings
             (candidate_threshold, how many candidates are verified, the pHash distance that
             sends a candidate to verification whatever its similarity) and prints, for each,
             pair precision, recall and hard-negative false pairs; then where recall is lost,
             per transform class, under the shipped defaults; then the chosen setting checked
             on a split (calibrated on half of the originals, reported on the other half).

The replay is exact for settings inside the collected net (a candidate threshold at or above
the one collected, no more verified candidates, the shipped pHash reach for verification) with
one exception: when the net's first confirmed original falls outside a stricter setting, the
candidates after it were never verified. The replay counts those as not confirmed and reports
how many files that touched ("unknown" below); other pHash reaches reorder verification and
show more of them. A wider net (the COLLECT_* constants) removes them.

Usage:
    python bench/calibrate.py collect bench/.cache/accuracy-set --out signals.jsonl
    python bench/calibrate.py report bench/.cache/accuracy-set/labels.csv signals.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import itertools
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "accuracy"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import Label, read_labels

# The net cast by ``collect``: candidates at or above this similarity or with a pHash within
# this distance are verified in order of similarity until one is confirmed (as the pipeline
# does), at most this many. Wider nets cost a verification per look-alike in the library.
COLLECT_THRESHOLD = 0.5
SECTION = "Calibration"
COLLECT_VERIFIED = 10
COLLECT_HASH_DISTANCE = 12


# --- collect ---------------------------------------------------------------------------------


def collect(set_dir: Path, out: Path, config_path: Path | None) -> None:
    """Scan ``set_dir`` (sorted order, dry run, fresh state) and save every candidate's signals."""
    from dupwatch import candidates as search
    from dupwatch.config import Config, load_config
    from dupwatch.filters import PathFilter
    from dupwatch.logs import configure_logging
    from dupwatch.reconcile import walk_files
    from dupwatch.runtime import open_services

    config = load_config(config_path) if config_path else Config()
    wide = dataclasses.replace(
        config.policy, candidate_threshold=COLLECT_THRESHOLD, similar_threshold=COLLECT_THRESHOLD
    )
    config = dataclasses.replace(config, policy=wide)
    search.MAX_VERIFIED_CANDIDATES = COLLECT_VERIFIED
    # Hash matches are gathered from further out; which of them are verified (first) stays
    # as shipped, so the order of verification is the pipeline's.
    search.HASH_CANDIDATE_DISTANCE = COLLECT_HASH_DISTANCE

    events = io.StringIO()
    configure_logging("debug", "json", stream=events)
    path_filter = PathFilter(
        config.watch.include_extensions, config.watch.ignore, config.quarantine.dir_name
    )
    files = sorted(p for p, _ in walk_files(set_dir, path_filter, start=set_dir))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dupwatch-calibrate-") as state, out.open("w") as fh:
        services = open_services(config, Path(state), [set_dir], dry_run=True, log_to_stderr=True)
        try:
            for n, path in enumerate(files, 1):
                events.seek(0)
                events.truncate()
                result = services.pipeline.process(path)
                candidates = []
                for line in events.getvalue().splitlines():
                    start = line.find("{")
                    if start < 0:
                        continue
                    event = json.loads(line[start:])
                    if event.get("event") == "candidate_examined":
                        candidates.append({k: event[k] for k in _CANDIDATE_FIELDS if k in event})
                row = {
                    "path": _relative(path, set_dir),
                    "tier": None if result is None else result.tier.value,
                    "duplicate_of": _relative(result.duplicate_of, set_dir) if result else None,
                    "duration_ms": None if result is None else result.duration_ms,
                    "candidates": [
                        {**c, "candidate": _relative(Path(c["candidate"]), set_dir)}
                        for c in candidates
                    ],
                }
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                if n % 100 == 0:
                    rate = n / (time.perf_counter() - started)
                    print(f"{n}/{len(files)} files, {rate:.1f}/s", file=sys.stderr)
        finally:
            services.close()


_CANDIDATE_FIELDS = (
    "candidate",
    "rank",
    "similarity",
    "variant",
    "hash_distance",
    "verified",
    "reason",
)


def _relative(path: Path | None, root: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


# --- replay ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setting:
    """The candidate rule replayed: what the pipeline and the policy would do."""

    candidate_threshold: float
    verified: int  # MAX_VERIFIED_CANDIDATES
    hash_distance: int  # verify a pHash match this close whatever its similarity; -1 = never
    similar_threshold: float = 0.90

    def label(self) -> str:
        hd = "off" if self.hash_distance < 0 else str(self.hash_distance)
        return f"t={self.candidate_threshold:.2f} n={self.verified} hash<={hd}"


@dataclass(frozen=True, slots=True)
class Outcome:
    tier: str  # exact, duplicate, similar, unique
    match: str | None
    loss: str | None = None  # for a copy not found: why
    verifications: int = 0


def _hash_near(c: dict[str, Any], s: Setting) -> bool:
    hd = c.get("hash_distance")
    return hd is not None and s.hash_distance >= 0 and hd <= s.hash_distance


def _proposed(c: dict[str, Any], s: Setting) -> bool:
    return c["similarity"] >= s.candidate_threshold or _hash_near(c, s)


def replay(row: dict[str, Any], s: Setting, is_true: Any = None) -> Outcome:
    """The decision under ``s``; ``is_true(candidate)`` names the loss for a missed copy."""
    if row["tier"] in ("exact", "failed"):
        return Outcome(row["tier"], row["duplicate_of"])
    cands = row["candidates"]
    eligible = [c for c in cands if _proposed(c, s)]
    # As the pipeline: near hashes first, then by similarity (the sort is stable).
    eligible.sort(key=lambda c: not _hash_near(c, s))
    unknown = False
    for n, c in enumerate(eligible[: s.verified], 1):
        if c["verified"] is None:
            unknown = True  # never verified while collecting: counted as not confirmed
        elif c["verified"]:
            return Outcome("duplicate", c["candidate"], verifications=n)
    top = cands[0] if cands else None
    tier = "similar" if top and top["similarity"] >= s.similar_threshold else "unique"
    loss = "unknown" if unknown else None
    if is_true is not None and not unknown:
        true = [c for c in cands if is_true(c["candidate"])]
        if not true:
            loss = "a_not_found"
        elif not any(_proposed(c, s) for c in true):
            loss = "b_below_threshold"
        elif not any(c in eligible[: s.verified] for c in true):
            loss = "d_beyond_n"
        else:
            reasons = {c["reason"] for c in true if c in eligible[: s.verified]}
            loss = "c_rejected:" + "/".join(sorted(r or "?" for r in reasons))
    return Outcome(tier, top["candidate"] if top else None, loss, min(len(eligible), s.verified))


@dataclass(slots=True)
class Tally:
    predicted: int = 0
    correct: int = 0
    hardneg: int = 0
    unknown: int = 0  # files whose decision needed a verdict never collected
    files: int = 0
    verifications: int = 0
    positives: Counter[str] = dataclasses.field(default_factory=Counter)
    hits: Counter[str] = dataclasses.field(default_factory=Counter)
    losses: dict[str, Counter[str]] = dataclasses.field(
        default_factory=lambda: defaultdict(Counter)
    )

    def precision(self) -> float:
        return self.correct / self.predicted if self.predicted else 1.0

    def recall(self, transform: str | None = None) -> float:
        if transform is None:
            total = sum(self.positives.values())
            return sum(self.hits.values()) / total if total else 1.0
        return self.hits[transform] / self.positives[transform] if self.positives[transform] else 1


def evaluate(rows: list[dict[str, Any]], labels: dict[str, Label], s: Setting) -> Tally:
    tally = Tally()
    for row in rows:
        lab = labels.get(row["path"])
        if lab is None:
            continue
        copy = lab.transform not in ("original", "hardneg")

        def is_true(other: str | None, lab: Label = lab) -> bool:
            o = labels.get(other or "")
            return o is not None and o.transform != "hardneg" and o.original_id == lab.original_id

        out = replay(row, s, is_true if copy else None)
        tally.unknown += out.loss == "unknown"
        tally.files += 1
        tally.verifications += out.verifications
        if copy:
            tally.positives[lab.transform] += 1
        if out.tier not in ("exact", "duplicate"):
            if copy:
                tally.losses[lab.transform][out.loss or "?"] += 1
            continue
        tally.predicted += 1
        if copy and is_true(out.match):
            tally.correct += 1
            tally.hits[lab.transform] += 1
            continue
        if copy:
            tally.losses[lab.transform]["e_wrong_match"] += 1
        other = labels.get(out.match or "")
        if other is not None and lab.group and other.group == lab.group:
            tally.hardneg += 1
    return tally


def _half(original_id: str) -> int:
    """A stable split of the originals (hard-negative groups follow their group id)."""
    return hashlib.sha256(original_id.encode()).digest()[0] % 2


def _subset(rows: list[dict[str, Any]], labels: dict[str, Label], half: int) -> list[Any]:
    keep = []
    for row in rows:
        lab = labels.get(row["path"])
        if lab is not None and _half(lab.group or lab.original_id) == half:
            keep.append(row)
    return keep


THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
VERIFIED = (1, 2, 3, 5, 10)
HASH_REACH = (-1, 4, 6, 8, 10, 12)


def grid() -> list[Setting]:
    return [Setting(*v) for v in itertools.product(THRESHOLDS, VERIFIED, HASH_REACH)]


def choose(rows: list[dict[str, Any]], labels: dict[str, Label]) -> tuple[Setting, Tally] | None:
    """Precision first: no hard-negative pair, precision >= 0.999; then the most recall (to
    0.001), then the fewest verifications per file, then the higher threshold."""
    best: tuple[tuple[float, ...], Setting, Tally] | None = None
    for s in grid():
        t = evaluate(rows, labels, s)
        if t.hardneg or t.precision() < 0.999:
            continue
        key = (round(t.recall(), 3), -t.verifications / max(t.files, 1), s.candidate_threshold)
        if best is None or key > best[0]:
            best = (key, s, t)
    return None if best is None else (best[1], best[2])


def _row(s: Setting, t: Tally) -> str:
    return (
        f"| {s.label()} | {t.precision():.4f} | {t.recall():.4f} | {t.predicted} "
        f"| {t.predicted - t.correct} | {t.hardneg} | {t.unknown} "
        f"| {t.verifications / max(t.files, 1):.2f} |"
    )


_HEADER = [
    "| setting | pair precision | recall | predicted pairs | false pairs | hard-negative pairs"
    " | unknown | verifications per file |",
    "|---|---|---|---|---|---|---|---|",
]


def report(labels_path: Path, signals: Path, current: Setting, *, full: bool) -> list[str]:
    """The report as markdown lines; ``full`` adds every setting of the grid."""
    labels = {lab.file: lab for lab in read_labels(labels_path)}
    rows = [json.loads(line) for line in signals.read_text().splitlines() if line.strip()]
    out = [
        f"{len(rows)} files, {sum(len(r['candidates']) for r in rows)} candidates examined."
        " Unknown: files whose decision under that setting needs a verdict the collection"
        " never made (counted as not confirmed).",
        "",
        f"Candidate threshold, at {current.verified} verified candidates and pHash reach"
        f" {current.hash_distance}:",
        "",
        *_HEADER,
    ]
    for threshold in THRESHOLDS:
        s = dataclasses.replace(current, candidate_threshold=threshold)
        out.append(_row(s, evaluate(rows, labels, s)))
    out += ["", "Verified candidates and pHash reach, at the shipped threshold:", "", *_HEADER]
    for n, hd in itertools.product(VERIFIED, HASH_REACH):
        s = dataclasses.replace(current, verified=n, hash_distance=hd)
        out.append(_row(s, evaluate(rows, labels, s)))
    if full:
        out += ["", "Every setting:", "", *_HEADER]
        out += [_row(s, evaluate(rows, labels, s)) for s in grid()]
    t = evaluate(rows, labels, current)
    out += [
        "",
        f"Shipped setting {current.label()}: pair precision {t.precision():.4f}, recall"
        f" {t.recall():.4f}, hard-negative pairs {t.hardneg}. Where missed copies are lost"
        " (a: the original is not among the candidates; b: below the threshold and not a"
        " near hash; c: verified and rejected, with the reason; d: beyond the verified"
        " candidates; e: another file was confirmed first):",
        "",
        "| transform | recall | misses |",
        "|---|---|---|",
    ]
    for transform in sorted(t.positives):
        losses = ", ".join(f"{k} {v}" for k, v in t.losses[transform].most_common())
        out.append(f"| {transform} | {t.recall(transform):.3f} | {losses} |")
    picked = choose(rows, labels)
    out.append("")
    if picked is None:
        out.append("No setting of the grid meets precision >= 0.999 without a hard-negative pair.")
    else:
        s, best = picked
        out.append(
            f"Best setting of the grid on all files (precision >= 0.999, no hard-negative pair,"
            f" then recall, then fewest verifications): {s.label()}, recall {best.recall():.4f},"
            f" {best.verifications / max(best.files, 1):.2f} verifications per file."
        )
    out += ["", "Split check (chosen on one half of the originals, scored on the other):", ""]
    for half in (0, 1):
        fit_rows, test_rows = _subset(rows, labels, half), _subset(rows, labels, 1 - half)
        fitted = choose(fit_rows, labels)
        shipped = evaluate(test_rows, labels, current)
        line = (
            f"- half {1 - half}: shipped setting precision {shipped.precision():.4f},"
            f" recall {shipped.recall():.4f}, hard-negative pairs {shipped.hardneg}"
        )
        if fitted is not None:
            s, fit = fitted
            test = evaluate(test_rows, labels, s)
            line += (
                f"; best on half {half} ({s.label()}, recall there {fit.recall():.4f}):"
                f" precision {test.precision():.4f}, recall {test.recall():.4f},"
                f" hard-negative pairs {test.hardneg}"
            )
        out.append(line)
    return out


def shipped() -> Setting:
    """The candidate rule as shipped: config defaults and the pipeline's constants."""
    from dupwatch import candidates as search
    from dupwatch.config import PolicyConfig

    policy = PolicyConfig()
    return Setting(
        policy.candidate_threshold,
        search.MAX_VERIFIED_CANDIDATES,
        search.HASH_VERIFY_DISTANCE,
        policy.similar_threshold,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="scan a labelled set and save every candidate's signals")
    c.add_argument("set_dir", type=Path)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--config", type=Path, help="a dupwatch config to start from")
    r = sub.add_parser("report", help="precision/recall per setting from saved signals")
    r.add_argument("labels", type=Path)
    r.add_argument("signals", type=Path)
    r.add_argument("--threshold", type=float, help="candidate_threshold (default: shipped)")
    r.add_argument("--verified", type=int, help="verified candidates (default: shipped)")
    r.add_argument("--hash-distance", type=int, help="pHash reach, -1 for none (default: shipped)")
    r.add_argument("--all", action="store_true", help="also print every setting of the grid")
    r.add_argument("--write", action="store_true", help="rewrite bench/RESULTS.md's section")
    args = parser.parse_args(argv)
    if args.command == "collect":
        collect(args.set_dir, args.out, args.config)
        return 0
    current = shipped()
    current = Setting(
        current.candidate_threshold if args.threshold is None else args.threshold,
        current.verified if args.verified is None else args.verified,
        current.hash_distance if args.hash_distance is None else args.hash_distance,
        current.similar_threshold,
    )
    lines = report(args.labels, args.signals, current, full=args.all)
    print("\n".join(lines))
    if args.write:
        from results import write_section

        body = [
            f"## {SECTION}",
            "",
            f"Run by `python bench/calibrate.py collect` + `report --write` on"
            f" {time.strftime('%Y-%m-%d')}, on the accuracy set (see Accuracy). Each setting is"
            " a replay of the pipeline's candidate rule on signals collected once with a wide"
            " net by the real pipeline; every verdict comes from the real verification.",
            "",
            *lines,
        ]
        write_section(SECTION, "\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
