"""Run the accuracy benchmark end to end and write the "Accuracy" section of bench/RESULTS.md.

Steps: (1) fetch and audit the originals if ``bench/.cache/originals`` is missing, (2) generate
the labelled set into ``bench/.cache/accuracy-set`` (seeded), (3) run the real
``dupwatch scan --dry-run --json`` on it as a subprocess with a fresh state directory, (4) run
the baselines with the same file order, (5) score everything with one scorer, plot
``bench/accuracy/pr.png`` and replace the Accuracy section of ``bench/RESULTS.md``.

If the dupwatch scan fails, the runner says so on stderr and in the report, still scores the
baselines, and exits 1.

Usage: python bench/accuracy/run.py [--seed 7] [--subset 60] [--skip-baselines cnn_cosine]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import baselines
import fetch_originals
from generate import generate, read_labels
from score import Score, per_transform_table, plot, read_decisions, score, summary_table

HERE = Path(__file__).resolve().parent
BENCH = HERE.parent
CACHE = BENCH / ".cache"
RESULTS = BENCH / "RESULTS.md"
PLOT = HERE / "pr.png"
SECTION = "## Accuracy"


def run_dupwatch(set_dir: Path, out: Path) -> tuple[bool, float, str]:
    """Scan the set with the real CLI; returns (ok, seconds, error text)."""
    dupwatch = Path(sys.executable).parent / "dupwatch"
    with tempfile.TemporaryDirectory(prefix="dupwatch-bench-state-") as state:
        cmd = [str(dupwatch), "--state-dir", state, "scan", "--dry-run", "--json", str(set_dir)]
        started = time.perf_counter()
        try:
            with out.open("w") as handle:
                proc = subprocess.run(
                    cmd, stdout=handle, stderr=subprocess.PIPE, text=True, check=False
                )
        except FileNotFoundError as exc:
            return False, 0.0, f"cannot run {dupwatch}: {exc}"
        seconds = time.perf_counter() - started
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        return False, seconds, f"`{' '.join(cmd[:1] + cmd[3:])}` exited {proc.returncode}: {tail}"
    return True, seconds, ""


def replace_section(text: str, body: str) -> str:
    """Replace the "## Accuracy" section (up to the next "## " heading) or append it."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == SECTION), None)
    if start is None:
        return (text.rstrip() + "\n\n" if text.strip() else "") + body.rstrip() + "\n"
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    new = lines[:start] + body.rstrip().splitlines() + ([""] if end < len(lines) else [])
    return "\n".join(new + lines[end:]).rstrip() + "\n"


def report(
    scores: list[Score],
    counts: dict[str, int],
    timings: dict[str, float],
    seed: int,
    dupwatch_error: str,
    load: float,
) -> str:
    lines = [
        SECTION,
        "",
        f"Run by `python bench/accuracy/run.py --seed {seed}` on {platform.machine()},"
        f" Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}; 2 cores, load"
        f" average {load:.1f} at the start (other work on the machine slows the timings).",
        "",
        f"Set: {counts['originals']} original photographs, {counts['hardneg']} hard-negative"
        f" photos in {counts['groups']} groups, {counts['copies']} copies"
        f" ({counts['subset']} originals x {counts['transforms']} transform classes);"
        " sources and audit in `bench/accuracy/originals_manifest.csv`. Files are scanned in"
        " sorted order (originals, hard negatives, copies); each is compared with every file"
        " scanned before it.",
        "",
        "`quarantine` = exact + duplicate tiers (moved by default); `flagged` = also `similar`.",
        "Recall counts a copy as found when its reported match is its original or another copy"
        " of it. Baselines: imagehash pHash <= 10 (ignores EXIF orientation), PDQ <= 31,"
        " raw EfficientNet-Lite0 cosine >= 0.9 without verification; each also reports"
        " byte-identical files as exact.",
        "",
    ]
    if dupwatch_error:
        lines += [f"**dupwatch was not scored:** {dupwatch_error}", ""]
    lines += [summary_table(scores), "", "Recall per transform class (quarantine / flagged):", ""]
    lines += [per_transform_table(scores), ""]
    lines += ["Run time per method (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())]
    lines += [
        "",
        f"Plot: `bench/accuracy/{PLOT.name}`",
        "",
        f"![precision-recall]({HERE.name}/{PLOT.name})",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--subset", type=int, default=60)
    parser.add_argument("--skip-baselines", nargs="*", default=[], help="baseline names to skip")
    parser.add_argument("--no-dupwatch", action="store_true", help="score the baselines only")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]

    if not (CACHE / "originals").is_dir() or not (CACHE / "hardneg").is_dir():
        fetch_originals.main([])
    set_dir = CACHE / "accuracy-set"
    labels = generate(
        CACHE / "originals", CACHE / "hardneg", set_dir, seed=args.seed, subset=args.subset
    )
    files = sorted(lab.file for lab in labels)
    decisions_dir = CACHE / "accuracy-decisions"
    shutil.rmtree(decisions_dir, ignore_errors=True)
    decisions_dir.mkdir(parents=True)

    scores: list[Score] = []
    timings: dict[str, float] = {}
    error = "skipped (--no-dupwatch)" if args.no_dupwatch else ""
    if not args.no_dupwatch:
        out = decisions_dir / "dupwatch.jsonl"
        ok, seconds, error = run_dupwatch(set_dir, out)
        timings["dupwatch"] = seconds
        if ok:
            scores.append(score("dupwatch", labels, read_decisions(out, set_dir)))
        else:
            print(f"dupwatch scan failed: {error}", file=sys.stderr)
    for baseline in baselines.BASELINES:
        if baseline.name in args.skip_baselines:
            continue
        out = decisions_dir / f"{baseline.name}.jsonl"
        timings[baseline.name] = baselines.run_baseline(baseline, set_dir, files, out)
        scores.append(score(baseline.name, labels, read_decisions(out, set_dir)))

    labels_again = read_labels(set_dir / "labels.csv")
    counts = {
        "originals": sum(lab.transform == "original" for lab in labels_again),
        "hardneg": sum(lab.transform == "hardneg" for lab in labels_again),
        "groups": len({lab.group for lab in labels_again if lab.group}),
        "copies": sum(lab.transform not in ("original", "hardneg") for lab in labels_again),
        "subset": args.subset,
        "transforms": len({lab.transform for lab in labels_again}) - 2,
    }
    plot(scores, PLOT)
    body = report(scores, counts, timings, args.seed, error, load)
    print(body)
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    RESULTS.write_text(replace_section(old, body))
    return 1 if error and not args.no_dupwatch else 0


if __name__ == "__main__":
    sys.exit(main())
