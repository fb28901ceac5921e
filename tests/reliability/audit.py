"""The invariants every reliability scenario ends with, checked by one helper.

``Baseline.take`` records each input file (bytes, mode, mtime, xattrs) before a scenario;
``audit`` then recovers the quarantine in this (fresh) process, reconciles the store with the
disk once, and checks:

- no loss and no limbo: every input's bytes exist exactly as often as they were put in, either
  at the original path or in the quarantine under a DONE journal entry for that path;
- no temporary litter (``.dupwatch-partial-*``, ``.dupwatch-restoring-*``);
- quarantined files kept their mode, mtime and xattrs;
- no pending journal rows; ``PRAGMA integrity_check`` is ok;
- the store agrees with the disk after one reconciliation.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dupwatch.config import Config
from dupwatch.filters import PathFilter
from dupwatch.reconcile import walk_files
from dupwatch.records import FileStatus, JournalState
from dupwatch.runtime import open_quarantine, recover_quarantine
from dupwatch.statepaths import database_path
from dupwatch.store import Store

QDIR = ".dupwatch-quarantine"
LITTER_PREFIXES = (".dupwatch-partial-", ".dupwatch-restoring-")


@dataclass(frozen=True, slots=True)
class Facts:
    sha256: str
    size: int
    mode: int
    mtime_ns: int
    xattrs: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, path: Path) -> Facts:
        st = path.lstat()
        return cls(
            sha256_of(path), st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime_ns, xattrs_of(path)
        )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def xattrs_of(path: Path) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))


@dataclass
class Baseline:
    """The input files of a scenario, as they were before anything ran."""

    files: dict[Path, Facts] = field(default_factory=dict)

    @classmethod
    def take(cls, paths: Iterable[Path]) -> Baseline:
        return cls({p: Facts.of(p) for p in paths})

    def add(self, path: Path) -> None:
        self.files[path] = Facts.of(path)

    def forget(self, path: Path) -> None:
        """The scenario itself removed this file (the owner deleted it)."""
        self.files.pop(path, None)


def regular_files(root: Path) -> list[Path]:
    """Every regular file below ``root``, never following symlinks."""
    found = []
    for top, dirs, names in os.walk(root):
        for name in names + dirs:
            path = Path(top) / name
            if stat.S_ISREG(path.lstat().st_mode):
                found.append(path)
    return sorted(found)


def run_scan(
    state_dir: Path, roots: Sequence[Path], config_path: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """One reconciliation: ``dupwatch scan`` over the roots in a fresh process."""
    args = [sys.executable, "-m", "dupwatch.cli", "--state-dir", str(state_dir)]
    if config_path is not None:
        args += ["--config", str(config_path)]
    done = subprocess.run(
        [*args, "scan", *map(str, roots)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"scan failed ({done.returncode}): {done.stderr[-3000:]}"
    return done


@dataclass
class AuditReport:
    in_place: int = 0
    quarantined: int = 0
    recovered_entries: int = 0


def audit(
    baseline: Baseline,
    roots: Sequence[Path],
    state_dir: Path,
    *,
    config: Config | None = None,
    reconcile: Callable[[], object] | None = None,
    check_store: bool = True,
) -> AuditReport:
    """Check every invariant; ``reconcile`` (default: one ``dupwatch scan``) runs once between
    recovery and the store checks. Returns counts for the scenario to assert on or report."""
    config = config if config is not None else Config()
    roots = [Path(r).absolute() for r in roots]
    report = AuditReport()
    db = database_path(state_dir)
    if db.exists():
        with Store.open(db) as store:
            quarantine = open_quarantine(store, config, roots)
            report.recovered_entries = len(quarantine.recover())
            recover_quarantine(store, quarantine)
            assert store.journal_pending() == [], "journal rows still pending after recovery"
    if check_store:
        (reconcile or (lambda: run_scan(state_dir, roots)))()
    on_disk = [p for r in roots for p in regular_files(r)]
    litter = [p for p in on_disk if p.name.startswith(LITTER_PREFIXES)]
    assert litter == [], f"temporary files left behind: {litter}"
    _check_bytes(baseline, on_disk, roots, state_dir, report)
    if check_store and db.exists():
        with Store.open(db) as store:
            assert store.integrity_problems(quick=False) == []
            assert store.journal_pending() == []
            _check_store_agrees(store, roots, config)
    return report


def _check_bytes(
    baseline: Baseline,
    on_disk: list[Path],
    roots: Sequence[Path],
    state_dir: Path,
    report: AuditReport,
) -> None:
    wanted = Counter(f.sha256 for f in baseline.files.values())
    # Only files of an input's size can hold its bytes (and a sparse terabyte is never read).
    sizes = {f.size for f in baseline.files.values()}
    digests = {p: sha256_of(p) for p in on_disk if p.lstat().st_size in sizes}
    # A hard link or a bind-mounted view is the same file, not a second copy of its bytes.
    inodes = {(p.lstat().st_dev, p.lstat().st_ino): d for p, d in digests.items()}
    have = Counter(d for d in inodes.values() if d in wanted)
    lost = {d: n - have[d] for d, n in wanted.items() if have[d] < n}
    extra = {d: have[d] - n for d, n in wanted.items() if have[d] > n}
    assert not lost, f"bytes lost: {lost}"
    assert not extra, f"bytes present more often than put in (limbo): {extra}"
    done: dict[Path, Path] = {}
    db = database_path(state_dir)
    if db.exists():
        with Store.open(db) as store:
            for e in store.journal_entries([JournalState.DONE]):
                done[e.original_path] = e.quarantine_path
    for path, facts in baseline.files.items():
        if path in digests and digests[path] == facts.sha256:
            report.in_place += 1
            continue
        held = done.get(path)
        assert held is not None, f"{path!r}: neither in place nor quarantined by the journal"
        assert digests.get(held) == facts.sha256, f"{path!r}: the quarantine holds other bytes"
        now = Facts.of(held)
        assert (now.mode, now.mtime_ns, now.xattrs) == (facts.mode, facts.mtime_ns, facts.xattrs)
        report.quarantined += 1


def _check_store_agrees(store: Store, roots: Sequence[Path], config: Config) -> None:
    path_filter = PathFilter(
        config.watch.include_extensions, config.watch.ignore, config.quarantine.dir_name
    )
    live = {p: s for r in roots for p, s in walk_files(r, path_filter)}
    statuses = (FileStatus.INDEXED, FileStatus.FAILED)
    rows = {rec.path: rec for r in roots for rec in store.files_under(r, statuses)}
    unknown = sorted(set(live) - set(rows))
    assert unknown == [], f"files on disk the store does not know: {unknown[:5]}"
    ghosts = sorted(set(rows) - set(live))
    assert ghosts == [], f"files the store thinks are in place but are not: {ghosts[:5]}"
    stale = [p for p, rec in rows.items() if not rec.stat.same_content_version(live[p])]
    assert stale == [], f"store rows that disagree with the disk: {stale[:5]}"
    done = {e.file_id: e for e in store.journal_entries([JournalState.DONE])}
    for rec in (q for r in roots for q in store.files_under(r, (FileStatus.QUARANTINED,))):
        entry = done.get(rec.id)
        assert entry is not None, f"{rec.path!r}: quarantined in the store, not in the journal"
        assert entry.quarantine_path.is_file(), f"{entry.quarantine_path!r}: missing"
