"""The "Daemon" section of bench/RESULTS.md: what was fed, what the daemon decided, how fast."""

from __future__ import annotations

import os
import platform
import re
from collections import Counter
from typing import Any

from library_set import COPY_KINDS, EXCLUDED, EXPECTED, Item

_POSITION = re.compile(r"IMG_(\d+)\.")


def check_decisions(items: list[Item], paths: list[str], decided: dict[str, Any]) -> list[Any]:
    """Per kind of file: count, expected tier, the daemon's tiers, and right matches.

    A copy's match is right when the daemon names the file it copies, or another copy of it.
    """

    def family(position: int) -> int:
        origin = items[position].origin
        return position if origin is None else origin

    rows = []
    for kind in ("distinct", *COPY_KINDS):
        positions = [i for i, item in enumerate(items) if item.kind == kind]
        if not positions:
            continue
        tiers: Counter[str] = Counter()
        right = 0
        for i in positions:
            event = decided.get(paths[i])
            tiers[event["tier"] if event else "missing"] += 1
            match = _POSITION.search(str(event.get("duplicate_of", ""))) if event else None
            right += match is not None and family(int(match.group(1))) == family(i)
        rows.append((kind, len(positions), EXPECTED[kind], tiers, right))
    return rows


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _set_text(r: dict[str, Any]) -> str:
    fast = r["throughput"]
    if r["set"] == "crops":
        return (
            f"Photos (`--set crops`, a stress set): {fast['files']} distinct {r['size']} JPEGs "
            f"({r['dims']}, quality 85-94, mild noise), each a 45-90 % crop of one of the 23 "
            "photographic Debian wallpapers listed in bench/photo_sets.py, so many crops "
            "contain each other and nearly every file has look-alike candidates to verify: "
            "this set measures the verification stage more than a library."
        )
    c = r["composition"]
    copies = ", ".join(f"{k} {v}" for k, v in c["copies"].items())
    return (
        f"Photos (`--set library`, bench/library_set.py): {c['files']} files in arrival order, "
        f"{c['distinct']} distinct photos and {sum(c['copies'].values())} copies of files that "
        f"arrived earlier ({copies}). The distinct photos are non-overlapping windows "
        f"(4:3 or 3:4, a gap between neighbours) of {c['sources']} of the "
        f"{c['sources_total']} real photographs of the accuracy benchmark "
        "(bench/accuracy/originals_manifest.csv; left out: "
        + "; ".join(EXCLUDED.values())
        + "), brought to "
        f"{r['dims']} with mild noise and JPEG quality 85-94; each window holds "
        f"{c['window_mp_min']:.2f}-{c['window_mp_max']:.2f} MP of source pixels "
        f"(median {c['window_mp_median']:.2f}): the photos hold about 300 MP in all, so "
        "this many windows are small and upscaled (windows of 0.4 MP would give about 500). "
        "Windows with almost no structure "
        f"(clear sky, sand, black sky around a galaxy; {c['windows_dropped']} of those cut) "
        "were dropped, because the windows of such a patch are the same picture."
    )


def section(r: dict[str, Any]) -> str:
    """The Markdown of the section from the benchmark's measurements ``r``."""
    fast, slow = r["throughput"], r["latency"]
    target_rate = 0.8 * r["reference"]
    peak_rss = max(fast["rss_total"], slow["rss_total"])
    lines = [
        "## Daemon",
        "",
        f"Run of `python bench/daemon_bench.py --set {r['set']} --count {r['count']}"
        f"{'' if not r.get('workers') else ' --workers ' + str(r['workers'])}` on "
        f"{r['when']} ({platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}); 1-minute load average {r.get('load', float('nan')):.1f}"
        " when it started (other work on the machine slows every figure). " + _set_text(r),
        "",
        "Each run is `dupwatch run` on an empty root with a fresh state directory, default "
        f"config except `settle_seconds = {r['settle']}` (the default 5 s would put every "
        "latency above 5 s: a file is handed over only after a quiet settle period and a second "
        "identical stat sample), model threads 1, "
        + (
            f"{r['workers']} analysis worker(s)"
            if r.get("workers")
            else "analysis workers as by default (one per core, at most 2: here "
            f"{min(2, os.cpu_count() or 1)})"
        )
        + ". A run waits at most "
        f"{r['drain']:.0f} s after its last file for the remaining decisions.",
        "",
        "| run | offered files/s | sustained files/s | latency p50 / p95 / p99, s | "
        "median processing, ms | peak RSS, MB: all processes (daemon, largest worker) | "
        "decisions / files |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in (("throughput", fast), ("latency", slow)):
        q = run["latency"]
        quantiles = "n/a" if q is None else f"{q[50]:.2f} / {q[95]:.2f} / {q[99]:.2f}"
        processing = "n/a" if run["processing_ms"] is None else f"{run['processing_ms']:.0f}"
        parts = ", ".join(f"{run['rss'].get(k, 0):.0f}" for k in ("daemon", "worker"))
        lines.append(
            f"| {name} | {run['offered_rate']:.1f} | {_rate(run['sustained'])} | {quantiles} | "
            f"{processing} | {run['rss_total']:.0f} ({parts}) | {run['decided']} / "
            f"{run['files']} |"
        )
    for name, run in (("throughput", fast), ("latency", slow)):
        if run["missing"]:
            lines += [
                "",
                f"**The {name} run ended with {run['missing']} of {run['files']} files "
                f"undecided** ({run['ended']}); its latency quantiles cover the decided files "
                "only and so understate the truth.",
            ]
    cpu = fast.get("cpu")
    if cpu and fast["decided"] and fast["sustained"]:
        per_file = {k: 1000 * v / fast["decided"] for k, v in sorted(cpu.items())}
        busy = sum(cpu.values()) / ((os.cpu_count() or 1) * fast["decided"] / fast["sustained"])
        shown = ", ".join(f"{k} {v:.1f}" for k, v in per_file.items())
        lines += [
            "",
            f"CPU per file in the throughput run, ms: {shown} (from the first arrival to the "
            f"end); all cores together were busy {100 * busy:.0f} % of the time files were "
            "being decided.",
        ]
    tiers = ", ".join(f"{k} {v}" for k, v in sorted(fast["tiers"].items()))
    lines += ["", f"Decisions in the throughput run: {tiers}."]
    if r["set"] == "library":
        lines += [
            "",
            "Expected and actual decisions in the throughput run (a copy's match is right when "
            "the daemon names the file it copies or another copy of it):",
            "",
            "| files | count | expected | daemon's decisions | right match |",
            "|---|---|---|---|---|",
        ]
        for kind, count, expected, got, right in fast["check"]:
            shown = ", ".join(f"{k} {v}" for k, v in sorted(got.items()))
            lines.append(
                f"| {kind} | {count} | {expected} | {shown} | "
                f"{'-' if kind == 'distinct' else right} |"
            )
    quoted = r["results_md"]
    quoted_text = (
        f"; the Embedding section reports {quoted:.1f} on 1 core for its {r['size']} set"
        if quoted
        else ""
    )
    lat95 = slow["latency"][95] if slow["latency"] else None
    sustained = fast["sustained"] or 0.0
    lines += [
        "",
        "Latency in the throughput run is queueing (files offered faster than they can be "
        f"taken). Reference: the embedding pipeline alone on the first {r['reference_files']} "
        f"files, one thread, in this run: **{r['reference']:.1f} images/s**{quoted_text}.",
        "",
        f"Targets: sustained >= 80% of the reference ({target_rate:.1f} files/s): "
        f"{sustained:.1f} ({'met' if sustained >= target_rate else 'NOT met'}); "
        "p95 latency < 2 s at half that rate: "
        + ("n/a (no decisions)" if lat95 is None else f"{lat95:.2f} s")
        + f" ({'met' if lat95 is not None and lat95 < 2 and not slow['missing'] else 'NOT met'}); "
        f"RSS < 1 GiB: {peak_rss:.0f} MB ({'met' if peak_rss < 1024 else 'NOT met'}).",
        "",
    ]
    return "\n".join(lines)
