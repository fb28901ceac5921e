"""The soak's share outage and its verdicts: what it checks and the Markdown block it prints."""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proc_sampler import Sample

from dupwatch.records import FileStatus
from dupwatch.statepaths import database_path
from dupwatch.store import Store

if TYPE_CHECKING:
    from audit import AuditReport
    from soak import Soak

STATE_CHANGES = (
    "file_processed", "file_failed", "file_gone", "file_quarantined", "file_renamed",
    "mass_change_paused",
)  # fmt: skip
REATTACH_LIMIT_S = 90.0
RSS_GROWTH_LIMIT = 0.10
WARM_FILES = 1000


def timestamp(event: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def store_view(state: Path, root: Path) -> dict[Path, str]:
    with Store.open(database_path(state)) as store:
        return {r.path: r.status.value for r in store.files_under(root)}


def _under(event: dict[str, Any], root: Path) -> bool:
    where = event.get("path") or event.get("root")
    return where is not None and Path(str(where)).is_relative_to(root)


@dataclass
class Outage:
    """One share root renamed away and back, and what the daemon did meanwhile."""

    pulled_at: float | None = None
    back_at: float | None = None
    before: dict[Path, str] = field(default_factory=dict)
    after: dict[Path, str] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.pulled_at is not None and self.back_at is None

    def returned_for(self, seconds: float) -> bool:
        """The share may be touched: before the outage, or ``seconds`` after its return."""
        if self.pulled_at is None:
            return True
        return self.back_at is not None and time.time() - self.back_at >= seconds

    def prepare(self, soak: Soak, share: Path, timeout: float = 600) -> None:
        """Let the share's files in flight finish, so the outage is judged on its own."""
        deadline = time.monotonic() + timeout
        waiting = soak.under(share)
        while time.monotonic() < deadline and not all(soak.outcomes[p] for p in waiting):
            time.sleep(0.5)
            soak.consume()
        time.sleep(20)  # deletions of renamed paths are reported after a quiet delay

    def pull(self, share: Path, state: Path) -> None:
        self.before = store_view(state, share)
        share.rename(share.with_name(share.name + "-unmounted"))
        self.pulled_at = time.time()

    def restore(self, share: Path, state: Path) -> None:
        self.after = store_view(state, share)  # what the outage itself changed, nothing later
        share.with_name(share.name + "-unmounted").rename(share)
        self.back_at = time.time()

    def check_after(self, soak: Soak, share: Path) -> None:
        if self.pulled_at is None or self.back_at is None:
            return
        start, end = self.pulled_at, self.back_at
        events = soak.daemon.snapshot()
        here = [e for e in events if _under(e, share) and "timestamp" in e]
        during = [e for e in here if start <= timestamp(e) <= end and e["event"] in STATE_CHANGES]
        went = [timestamp(e) for e in here if e["event"] == "root_unavailable"]
        back = [timestamp(e) for e in here if e["event"] == "root_available"]
        known_before = set(self.before)
        again = [
            e
            for e in here
            if e["event"] in ("file_processed", "file_failed")
            and timestamp(e) > start
            and Path(e["path"]) in known_before
        ]
        changed = [p for p, status in self.before.items() if self.after.get(p) != status]
        self.figures = {
            "minutes": (end - start) / 60,
            "files": len(self.before),
            "changes_during": len(during),
            "paused_after_s": next((t - start for t in went if t >= start), None),
            "reattached_after_s": next((t - end for t in back if t >= end), None),
            "processed_again": len(again),
            "store_changed": len(changed),
        }

    def ok(self) -> bool:
        f = self.figures
        reattach = f.get("reattached_after_s")
        return bool(f) and (
            f["changes_during"] == 0
            and f["processed_again"] == 0
            and f["store_changed"] == 0
            and reattach is not None
            and reattach <= REATTACH_LIMIT_S
        )


def _at(samples: Sequence[Sample], files: int) -> Sample:
    return next((s for s in samples if s.progress >= files), samples[0])


def _resources(samples: Sequence[Sample]) -> tuple[list[str], bool]:
    warm, end = _at(samples, WARM_FILES), samples[-1]
    later = [s for s in samples if s.elapsed_s >= warm.elapsed_s]
    # Points along the run, by files processed, to show a trend rather than two ends.
    quarters = [_at(samples, end.progress * q // 4) for q in (1, 2, 3)]
    points = sorted({id(p): p for p in [warm, *quarters, end]}.values(), key=lambda p: p.elapsed_s)
    points = [p for p in points if p.elapsed_s >= warm.elapsed_s]
    per_1000 = max(end.progress - warm.progress, 1) / 1000
    rows: dict[str, Callable[[Sample], Any]] = {
        "RSS, daemon (MiB)": lambda s: s.daemon.rss_mib,
        "RSS, its children (MiB)": lambda s: s.children.rss_mib,
        "RSS, total (MiB)": lambda s: s.daemon.rss_mib + s.children.rss_mib,
        "RSS anonymous, daemon (MiB)": lambda s: s.daemon.rss_anon_mib,
        "RSS anonymous, children (MiB)": lambda s: s.children.rss_anon_mib,
        "threads, daemon": lambda s: s.daemon.threads,
        "threads, children": lambda s: s.children.threads,
        "open fds but the snapshot's, daemon": lambda s: s.daemon.fds - s.daemon.snapshot_fds,
        "open snapshot files, daemon": lambda s: s.daemon.snapshot_fds,
        "open fds, children": lambda s: s.children.fds,
        "child processes": lambda s: s.child_count,
    }
    heads = " | ".join(f"{p.progress:,} files" for p in points[:-1])  # the last is "end"
    lines = [
        f"| sampled every few s ({len(samples)} samples) | {heads} | end | max after "
        f"{WARM_FILES:,} files | growth, end vs {warm.progress:,} files | per 1,000 files |",
        "|---" * (len(points) + 4) + "|",
    ]
    ok = True
    for name, value in rows.items():
        first, last = value(warm), value(end)
        peak = max(value(s) for s in later)
        growth = (last - first) / first if first else 0.0
        rss = name.startswith("RSS")
        # RSS may grow by a bounded share; counts must come back to where they were, but
        # for the index's open snapshot file: one from the first snapshot on, never more
        # (an old one left open after a rebuild would be a leak). The anonymous rows break
        # RSS down (what the allocator holds, as against mapped files) to show where growth
        # comes from; the limit is on RSS itself.
        if name.startswith("RSS anonymous"):
            pass  # a breakdown of the RSS rows, which are held to the limit
        elif rss:
            ok &= growth <= RSS_GROWTH_LIMIT
        elif name.startswith("open snapshot files"):
            ok &= last <= 1
        else:
            ok &= last <= first
        values = [value(p) for p in points] + [peak]
        cells = " | ".join(f"{v:.0f}" if rss else f"{v:d}" for v in values)
        lines.append(f"| {name} | {cells} | {growth:+.1%} | {(last - first) / per_1000:+.1f} |")
    return lines, ok


def after_rebuilds(samples: Sequence[Sample], events: list[dict[str, Any]]) -> list[str]:
    """Memory just after each snapshot rebuild: the buffer of recent vectors is at its
    smallest then, so these points show growth that the buffer's sawtooth does not explain.

    The daemon logs ``snapshot_loaded`` when it swaps a new snapshot in (``snapshot_built``
    comes from the build's own process, whose log is not the daemon's).
    """
    points = []
    for event in events:
        if event.get("event") == "snapshot_loaded" and "timestamp" in event:
            after = [s for s in samples if s.wall >= timestamp(event) + 2]
            if after:
                points.append(after[0])
    return [
        f"{p.progress:,} files: daemon {p.daemon.rss_mib:.0f} MiB "
        f"({p.daemon.rss_anon_mib:.0f} anonymous), total "
        f"{p.daemon.rss_mib + p.children.rss_mib:.0f} MiB"
        for p in points
    ]


def report(
    *,
    args: argparse.Namespace,
    soak: Soak,
    samples: Sequence[Sample],
    outage: Outage,
    counts: dict[FileStatus, int],
    fed_s: float,
    drain_s: float,
    exit_code: int,
    stop_s: float,
    audited: AuditReport | None,
    events: list[dict[str, Any]],
) -> tuple[str, bool]:
    """The Markdown block and whether every check held."""
    per_path = [soak.outcomes[p] for p in soak.arrived]
    twice, missing = sum(n > 1 for n in per_path), sum(n == 0 for n in per_path)
    renamed_again = sum(soak.outcomes[new] > 0 for _, new, _ in soak.renames)
    followed = sum(e.get("event") == "file_renamed" for e in events)
    tiers = Counter(e.get("tier") for e in events if e.get("event") == "file_processed")
    failed = sum(e.get("event") == "file_failed" for e in events)
    paused = sum(e.get("event") == "mass_change_paused" for e in events)
    records = sum(counts.values())
    table, resources_ok = _resources(samples)
    o = outage.figures
    checks = {
        "each arrival processed exactly once": twice == 0 and missing == 0,
        "renames not processed as new": renamed_again == 0,
        "store: one record per arrival, none gone": records == len(soak.arrived)
        and counts.get(FileStatus.GONE, 0) == 0,
        "outage: no state change, re-attached, nothing new": outage.ok(),
        "no mass-change pause": paused == 0,
        "RSS growth <= 10 %, threads and fds flat": resources_ok,
        "SIGTERM: exit 0": exit_code == 0,
        "audit (tests/reliability/audit.py)": audited is not None,
    }
    held = [f"{'held' if ok else 'FAILED'}: {name}" for name, ok in checks.items()]
    lines = [
        f"Soak (`python bench/soak.py --files {args.files} --minutes {args.minutes:g}`): "
        f"{len(soak.arrived):,} files arrived over {fed_s / 60:.1f} min into two roots "
        f"({soak.copies} exact copies of earlier arrivals); {len(soak.renames)} processed files "
        f"renamed, one by one into another folder or with their album folder "
        f"({len(soak.folders)} folders renamed whole: "
        f"{', '.join(str(n) for _, n in soak.folders) or 'none'} files); the share root "
        "renamed away for "
        f"{o.get('minutes', 0):.1f} min halfway. The last arrival was processed "
        f"{drain_s:.0f} s after it was written.",
        "",
        f"- Outcomes: {dict(tiers)} processed, {failed} failed; "
        f"{per_path.count(1):,}/{len(per_path):,} arrivals processed exactly once "
        f"({twice} twice or more, {missing} never); renamed files processed again as new: "
        f"{renamed_again} of {len(soak.renames)} ({followed} `file_renamed` lines).",
        f"- Store: {records:,} file records for {len(soak.arrived):,} arrivals "
        f"({', '.join(f'{s.value} {n:,}' for s, n in counts.items() if n)}); audit: "
        + (
            "not run (the daemon did not catch up)"
            if audited is None
            else f"{audited.in_place:,} in place, {audited.quarantined} quarantined, every "
            "byte kept."
        ),
        f"- Share outage: {o.get('files', 0):,} known files; paused "
        f"{_secs(o.get('paused_after_s'))} after it went, {o.get('changes_during')} state "
        f"changes while away, re-attached {_secs(o.get('reattached_after_s'))} after its "
        f"return (limit {REATTACH_LIMIT_S:.0f} s), {o.get('processed_again')} of its files "
        f"processed again, {o.get('store_changed')} store rows changed; "
        f"mass-change pauses: {paused}.",
        f"- SIGTERM at the end: exit {exit_code} after {stop_s:.1f} s.",
        "- Just after each snapshot rebuild: "
        + ("; ".join(after_rebuilds(samples, events)) or "none during the run")
        + ".",
        "",
        *table,
        "",
        *held,
    ]
    return "\n".join(lines), all(checks.values())


def _secs(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f} s"
