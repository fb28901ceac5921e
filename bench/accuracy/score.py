"""Score duplicate decisions against the accuracy set's labels.

A decisions file has one JSON object per scanned file with at least ``path``, ``tier``
(unique|exact|duplicate|similar|failed), ``duplicate_of`` (a path or null) and ``similarity``;
this is what ``dupwatch scan --dry-run --json`` prints. Baselines may add ``best_match`` and
``best_similarity`` (their nearest earlier file even when it is not reported as a duplicate), so
that a precision-recall curve can be swept over their score.

Ground truth: a copy is a positive; its decision is correct when ``duplicate_of`` is its original
or another copy of the same original. Every other reported pair is a false positive; one between
two members of a hard-negative group is also counted as a hard-negative false positive.

Tiers are cumulative as a user meets them: ``quarantine`` = exact + duplicate (moved by default),
``flagged`` = exact + duplicate + similar (anything reported).

Usage: python bench/accuracy/score.py LABELS.csv DECISIONS.jsonl [--root SETDIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from generate import Label, read_labels

TIER_SETS: dict[str, frozenset[str]] = {
    "quarantine": frozenset({"exact", "duplicate"}),
    "flagged": frozenset({"exact", "duplicate", "similar"}),
}


@dataclass(frozen=True, slots=True)
class Decision:
    """One file's decision, paths relative to the set's root."""

    path: str
    tier: str
    duplicate_of: str | None
    similarity: float | None
    candidate: str | None  # duplicate_of, else the best earlier match a baseline saw
    score: float | None


@dataclass(slots=True)
class TierScore:
    """Pair precision and recall of one method at one tier set."""

    predicted: int = 0
    correct: int = 0
    hardneg_fp: int = 0
    recall_hits: Counter[str] = field(default_factory=Counter)

    def precision(self) -> float:
        return self.correct / self.predicted if self.predicted else 1.0


@dataclass(slots=True)
class Score:
    """Everything the report prints for one method."""

    method: str
    positives: Counter[str]
    tiers: dict[str, TierScore]
    failed: int
    missing: int
    zero_fp_threshold: float | None
    zero_fp_recall: float
    curve: list[tuple[float, float, float]]  # (threshold, precision, recall)

    def recall(self, tier: str, transform: str | None = None) -> float:
        hits = self.tiers[tier].recall_hits
        if transform is None:
            total = sum(self.positives.values())
            return sum(hits.values()) / total if total else 1.0
        total = self.positives[transform]
        return hits[transform] / total if total else 1.0


def _relative(path: str, root: Path | None) -> str:
    p = Path(path)
    if root is not None and p.is_absolute():
        try:
            return str(p.resolve().relative_to(root.resolve()))
        except ValueError:
            return str(p)
    return str(p)


def read_decisions(path: Path, root: Path | None) -> list[Decision]:
    decisions = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        row = json.loads(line)
        dup = row.get("duplicate_of")
        dup_rel = _relative(dup, root) if dup else None
        best = row.get("best_match")
        candidate = dup_rel or (_relative(best, root) if best else None)
        score = row.get("similarity")
        if dup_rel is None and row.get("best_similarity") is not None:
            score = row["best_similarity"]
        decisions.append(
            Decision(
                path=_relative(row["path"], root),
                tier=row["tier"],
                duplicate_of=dup_rel,
                similarity=row.get("similarity"),
                candidate=candidate,
                score=None if score is None else float(score),
            )
        )
    return decisions


def score(method: str, labels: list[Label], decisions: list[Decision]) -> Score:
    by_file = {lab.file: lab for lab in labels}
    positives: Counter[str] = Counter(
        lab.transform for lab in labels if lab.transform not in ("original", "hardneg")
    )
    tiers = {name: TierScore() for name in TIER_SETS}
    seen = {d.path for d in decisions}
    failed = sum(1 for d in decisions if d.tier == "failed")

    def correct(a: str, b: str) -> bool:
        la, lb = by_file.get(a), by_file.get(b)
        return la is not None and lb is not None and la.original_id == lb.original_id

    def same_group(a: str, b: str) -> bool:
        la, lb = by_file.get(a), by_file.get(b)
        return la is not None and lb is not None and la.group != "" and la.group == lb.group

    for d in decisions:
        if d.duplicate_of is None:
            continue
        ok = correct(d.path, d.duplicate_of)
        transform = by_file[d.path].transform if d.path in by_file else "?"
        for name, members in TIER_SETS.items():
            if d.tier not in members:
                continue
            ts = tiers[name]
            ts.predicted += 1
            ts.correct += ok
            ts.hardneg_fp += same_group(d.path, d.duplicate_of)
            if ok and transform in positives:
                ts.recall_hits[transform] += 1

    # Curve over the method's own score: every decision with a candidate counts as a
    # prediction once its score reaches the threshold.
    scored = sorted(
        (
            (d.score, correct(d.path, d.candidate), by_file.get(d.path))
            for d in decisions
            if d.candidate is not None and d.score is not None
        ),
        key=lambda item: -item[0],
    )
    total_pos = sum(positives.values())
    wrong_scores = [s for s, ok, _ in scored if not ok]
    zero_fp_threshold = max(wrong_scores) if wrong_scores else None
    hits_above = sum(
        1
        for s, ok, lab in scored
        if ok
        and lab is not None
        and lab.transform in positives
        and (zero_fp_threshold is None or s > zero_fp_threshold)
    )
    curve: list[tuple[float, float, float]] = []
    tp = fp = 0
    for i, (s, ok, lab) in enumerate(scored):
        if ok and lab is not None and lab.transform in positives:
            tp += 1
        elif not ok:
            fp += 1
        if i + 1 == len(scored) or scored[i + 1][0] != s:
            curve.append((s, tp / (tp + fp) if tp + fp else 1.0, tp / total_pos))
    return Score(
        method=method,
        positives=positives,
        tiers=tiers,
        failed=failed,
        missing=sum(1 for lab in labels if lab.file not in seen),
        zero_fp_threshold=zero_fp_threshold,
        zero_fp_recall=hits_above / total_pos if total_pos else 1.0,
        curve=curve,
    )


def summary_table(scores: list[Score]) -> str:
    lines = [
        "| method | tier | pair precision | recall | predicted pairs | false pairs |"
        " hard-negative false pairs |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in scores:
        for name, ts in s.tiers.items():
            lines.append(
                f"| {s.method} | {name} | {ts.precision():.4f} | {s.recall(name):.4f} |"
                f" {ts.predicted} | {ts.predicted - ts.correct} | {ts.hardneg_fp} |"
            )
    lines += [
        "",
        "| method | recall at the strictest zero-false-positive score threshold |"
        " that threshold | failed files | files without a decision |",
        "|---|---|---|---|---|",
    ]
    for s in scores:
        thr = "none needed" if s.zero_fp_threshold is None else f"> {s.zero_fp_threshold:.4f}"
        lines.append(f"| {s.method} | {s.zero_fp_recall:.4f} | {thr} | {s.failed} | {s.missing} |")
    return "\n".join(lines)


def per_transform_table(scores: list[Score]) -> str:
    transforms = list(scores[0].positives) if scores else []
    head = "| transform (copies) | " + " | ".join(f"{s.method} q / f" for s in scores) + " |"
    lines = [head, "|---|" + "---|" * len(scores)]
    for t in transforms:
        cells = [f"{s.recall('quarantine', t):.2f} / {s.recall('flagged', t):.2f}" for s in scores]
        lines.append(f"| {t} ({scores[0].positives[t]}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(scores: list[Score], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=90)
    for s in scores:
        if s.curve:
            axes[0].plot([c[2] for c in s.curve], [c[1] for c in s.curve], label=s.method)
    axes[0].set_title("precision-recall over each method's score")
    for k, s in enumerate(scores):
        marker = "os^Dv<>"[k % 7]
        colour = f"C{k}"
        axes[1].scatter(
            s.recall("quarantine"),
            s.tiers["quarantine"].precision(),
            marker=marker,
            color=colour,
            s=45,
            label=s.method,
            zorder=3,
        )
        axes[1].scatter(
            s.recall("flagged"),
            s.tiers["flagged"].precision(),
            marker=marker,
            facecolors="none",
            edgecolors=colour,
            s=90,
            zorder=3,
        )
    axes[1].set_title("operating points per tier (filled: quarantine, ringed: flagged)")
    for ax in axes:
        ax.set_xlabel("pair recall")
        ax.set_ylabel("pair precision")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower left")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labels", type=Path)
    parser.add_argument("decisions", type=Path, nargs="+")
    parser.add_argument("--root", type=Path, help="set folder (paths in decisions may be absolute)")
    args = parser.parse_args(argv)
    labels = read_labels(args.labels)
    root = args.root or args.labels.parent
    scores = [score(p.stem, labels, read_decisions(p, root)) for p in args.decisions]
    print(summary_table(scores))
    print()
    print(per_transform_table(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
