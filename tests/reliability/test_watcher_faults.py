"""Watcher faults against the real daemon: an inotify overflow, directories moved in and out,
a root that vanishes for a while (an unmounted share) and comes back.

Each scenario runs ``dupwatch run`` in a subprocess and ends with the shared audit. The
daemon's own reconciliation timer is an hour, so whatever it finds, its watcher found: the
overflow walk, the walk of an arriving directory, the walk after a root returns. The audit's
reconciliation (a fresh ``dupwatch scan``) must then find nothing the daemon had missed.

The watch limit running out and an exception raised inside event handling are covered by
tests/test_watcher.py against the watcher itself.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from audit import Baseline, Facts, audit, run_scan
from conftest import Home
from daemon_harness import DaemonProcess, open_store
from photos import encode, photo, write

from dupwatch.records import FileStatus

# The audit's scan prints one line per tier and "unchanged"; every file must be unchanged.
_SCANNED = re.compile(r"^scanned (\d+) files", re.MULTILINE)
QUEUE_LIMIT = Path("/proc/sys/fs/inotify/max_queued_events")
WATCH_EXTRA = '[watch]\nrescan_interval = "1h"\n'

# The overflow's copies are only logged: the subject is finding them, and a thousand journaled
# moves would cost more time than the rest of the file (quarantining is audited below).
LOG_EXACT = '[policy]\nexact_action = "log"\n'

Event = dict[str, Any]


def started(home: Home) -> DaemonProcess:
    """``dupwatch run`` on the home's root, once it has said it started."""
    daemon = DaemonProcess(home.state, home.config, [home.root])
    try:
        daemon.wait_started()
    except BaseException:
        daemon.close()
        raise
    return daemon


def named(
    daemon: DaemonProcess, *events: str, since: int = 0, until: int | None = None
) -> list[Event]:
    """The log lines of those events between two positions (``len(daemon.snapshot())``)."""
    return [e for e in daemon.snapshot()[since:until] if e.get("event") in events]


def outcomes(daemon: DaemonProcess, since: int = 0, until: int | None = None) -> list[Event]:
    return named(daemon, "file_processed", "file_failed", since=since, until=until)


def wait_processed(
    daemon: DaemonProcess, paths: Iterable[Path], timeout: float, since: int = 0
) -> None:
    wanted = {str(p) for p in paths}
    daemon.wait_for(
        lambda: wanted <= {e["path"] for e in outcomes(daemon, since)},
        timeout,
        f"{len(wanted)} files processed",
    )


def stopped(daemon: DaemonProcess) -> None:
    code, _ = daemon.stop(timeout=30)
    assert code == 0, daemon.stderr[-3000:]


def library(root: Path, count: int, first: int = 0) -> list[Path]:
    """``count`` distinct photos in three albums, older than anything a scenario adds."""
    return [
        write(
            root / f"album-{i % 3}" / f"IMG_{first + i:04d}.jpg",
            encode(photo(first + i)),
            mtime_ns=1_500_000_000 * 10**9 + i,
        )
        for i in range(count)
    ]


def audit_finds_nothing_new(baseline: Baseline, home: Home) -> None:
    """The audit, with its reconciliation required to find no file the daemon had not seen."""

    def reconcile() -> None:
        done = run_scan(home.state, [home.root], home.config)
        found = _SCANNED.search(done.stdout)
        assert found is not None, done.stdout
        assert int(found.group(1)) == 0, f"the daemon missed files:\n{done.stdout}"

    audit(baseline, [home.root], home.state, reconcile=reconcile)


def watcher_home(make_home: Callable[..., Home], extra: str = "") -> Home:
    """A home whose daemon walks only when its watcher asks (the timer is an hour away)."""
    home = make_home(config_extra=extra)
    home.config.write_text(home.config.read_text().replace("[watch]\n", WATCH_EXTRA, 1))
    return home


def records(home: Home) -> dict[Path, tuple[int, FileStatus]]:
    """Every file the store knows under the root: its id and status."""
    with open_store(home.state) as store:
        return {r.path: (r.id, r.status) for r in store.files_under(home.root, tuple(FileStatus))}


# --- inotify overflow ---------------------------------------------------------------------


def arrive_while_stopped(root: Path, sources: list[bytes], count: int, pid: int) -> list[Path]:
    """With the daemon stopped, ``count`` byte copies of ``sources`` arrive the way an import
    tool writes them: round-robin chunks under a temporary name, then a rename into place.
    Enough events to overflow the kernel's queue (round-robin writes are never merged)."""
    limit = int(QUEUE_LIMIT.read_text())
    chunks = max(1, limit // count + 4)  # create, modify x chunks, close, moved from/to
    assert count * (chunks + 4) > limit
    dirs = [root / f"import-{i:02d}" for i in range(10)]
    finals = [dirs[i % len(dirs)] / f"copy-{i:05d}.jpg" for i in range(count)]
    datas = [sources[i % len(sources)] for i in range(count)]
    os.kill(pid, signal.SIGSTOP)
    try:
        # In batches, so the open files stay well under the descriptor limit.
        for batch in range(0, count, 500):
            part = range(batch, min(count, batch + 500))
            temps = {i: finals[i].with_name(f".{finals[i].name}.part") for i in part}
            outs = {i: temps[i].open("wb") for i in part}
            try:
                for round_ in range(chunks):
                    for i, out in outs.items():
                        step = -(-len(datas[i]) // chunks)
                        out.write(datas[i][round_ * step : (round_ + 1) * step])
                        out.flush()
            finally:
                for out in outs.values():
                    out.close()
            for i in part:
                temps[i].rename(finals[i])
    finally:
        os.kill(pid, signal.SIGCONT)
    return finals


def run_overflow(make_home: Callable[..., Home], count: int, timeout: float) -> None:
    home = watcher_home(make_home, LOG_EXACT)
    originals = library(home.root, 6)
    # Watched already: a directory created while the daemon is stopped would be walked when
    # its creation is read, finding its files without any overflow.
    for i in range(10):
        (home.root / f"import-{i:02d}").mkdir()
    daemon = started(home)
    try:
        wait_processed(daemon, originals, 120)
        mark = len(daemon.snapshot())
        sources = [p.read_bytes() for p in originals]
        copies = arrive_while_stopped(home.root, sources, count, daemon.proc.pid)
        baseline = Baseline.take([*originals, *copies])
        wait_processed(daemon, copies, timeout, since=mark)
        stopped(daemon)
    finally:
        daemon.close()
    assert named(daemon, "inotify_overflow", since=mark), "the overflow went unnoticed"
    walks = named(daemon, "reconcile_finished", since=mark)
    assert {w["reason"] for w in walks} == {"overflow"}, walks
    # One walk saw every file; it handed over those not yet taken from the queue.
    assert walks[0]["files"] == len(originals) + count, walks[0]
    found = outcomes(daemon, since=mark)
    assert len(found) == count, "some files were processed more than once"
    assert {e["tier"] for e in found} == {"exact"}
    audit_finds_nothing_new(baseline, home)


def test_an_inotify_overflow_while_stopped_loses_no_arriving_file(
    make_home: Callable[..., Home],
) -> None:
    run_overflow(make_home, 1000, timeout=120)


@pytest.mark.slow
def test_twenty_thousand_files_past_an_inotify_overflow_are_all_found(
    make_home: Callable[..., Home],
) -> None:
    run_overflow(make_home, 20_000, timeout=3600)


# --- directories moved in and out ---------------------------------------------------------


def test_a_directory_moved_out_is_gone_until_it_returns_and_one_moved_in_is_processed(
    make_home: Callable[..., Home],
) -> None:
    home = watcher_home(make_home)
    outside = home.root.parent / "elsewhere"
    originals = library(home.root, 6)
    leaving = library(home.root / "leaving", 2, first=20)
    card = outside / "card"
    arriving = [
        write(card / "IMG_0100.jpg", encode(photo(30))),
        write(card / "day-2" / "IMG_0101.jpg", encode(photo(31))),
        write(card / "day-2" / "IMG_0102.jpg", originals[0].read_bytes()),
    ]
    moved_in = home.root / "card"
    arrived = [moved_in / p.relative_to(card) for p in arriving]
    baseline = Baseline.take([*originals, *leaving])
    for old, new in zip(arriving, arrived, strict=True):
        baseline.files[new] = Facts.of(old)
    daemon = started(home)
    try:
        wait_processed(daemon, [*originals, *leaving], 120)
        indexed = records(home)
        mark = len(daemon.snapshot())
        (home.root / "leaving").rename(outside / "leaving")
        card.rename(moved_in)
        wait_processed(daemon, arrived, 120, since=mark)
        daemon.wait_for(
            lambda: len(named(daemon, "file_gone", since=mark)) >= len(leaving),
            60,
            "the moved-out files marked gone",
        )
        # The moved-out directory's old watch must not bring a file written there back in.
        stray = write(outside / "leaving" / "IMG_0200.jpg", encode(photo(40)))
        control = write(home.root / "album-0" / "IMG_0201.jpg", encode(photo(41)))
        baseline.add(control)
        wait_processed(daemon, [control], 60, since=mark)
        time.sleep(1.0)
        away = records(home)
        back = len(daemon.snapshot())
        # The directory returns, unchanged but for the file added out there.
        (outside / "leaving").rename(home.root / "leaving")
        returned = [*leaving, home.root / "leaving" / stray.name]
        baseline.add(returned[-1])
        wait_processed(daemon, returned, 60, since=back)
        stopped(daemon)
    finally:
        daemon.close()
    assert {Path(e["path"]) for e in named(daemon, "file_gone", since=mark)} == set(leaving)
    assert {away[p] for p in leaving} == {(indexed[p][0], FileStatus.GONE) for p in leaving}
    while_out = outcomes(daemon, since=mark, until=back)
    assert {e["path"]: e["tier"] for e in while_out} == {
        str(arrived[0]): "unique",
        str(arrived[1]): "unique",
        str(arrived[2]): "exact",
        str(control): "unique",
    }, f"{stray.name} or a moved-out file was processed while out"
    quarantined = [e["path"] for e in named(daemon, "file_quarantined", since=mark)]
    assert quarantined == [str(arrived[2])]
    # Back in place: the same rows, indexed again.
    now = records(home)
    assert {p: now[p] for p in leaving} == {p: indexed[p] for p in leaving}
    audit_finds_nothing_new(baseline, home)


# --- a root that vanishes and comes back --------------------------------------------------


def run_outage(make_home: Callable[..., Home], outage: float) -> None:
    home = watcher_home(make_home)
    originals = library(home.root, 9)
    away = home.root.with_name("photos-unmounted")
    baseline = Baseline.take(originals)
    copied = originals[4].read_bytes()
    daemon = started(home)
    try:
        wait_processed(daemon, originals, 120)
        before = records(home)
        mark = len(daemon.snapshot())
        home.root.rename(away)
        daemon.wait_for(lambda: named(daemon, "root_unavailable", since=mark), 30, "the pause")
        # The share gains a photo and a copy while it is away from this machine.
        new = [
            write(away / "album-1" / "IMG_0300.jpg", encode(photo(52))),
            write(away / "album-2" / "IMG_0301.jpg", copied),
        ]
        arrived = [home.root / p.relative_to(away) for p in new]
        for old, path in zip(new, arrived, strict=True):
            baseline.files[path] = Facts.of(old)
        time.sleep(outage)
        changes = named(
            daemon, "file_processed", "file_failed", "file_gone", "file_quarantined", since=mark
        )
        assert changes == [], changes
        assert records(home) == before
        returned = len(daemon.snapshot())
        away.rename(home.root)
        back_at = time.monotonic()
        daemon.wait_for(lambda: named(daemon, "root_available", since=returned), 90, "return")
        reattached_s = time.monotonic() - back_at
        wait_processed(daemon, arrived, 120, since=returned)
        stopped(daemon)
    finally:
        daemon.close()
    print(f"root away {outage:.0f} s: re-attached {reattached_s:.1f} s after its return")
    assert reattached_s < 90
    # Only the files that arrived while it was away are new; the others kept their rows.
    assert {e["path"] for e in outcomes(daemon, since=mark)} == {str(p) for p in arrived}
    assert [e["path"] for e in named(daemon, "file_quarantined", since=mark)] == [str(arrived[1])]
    now = records(home)
    assert {p: now[p] for p in originals} == {p: before[p] for p in originals}
    audit_finds_nothing_new(baseline, home)


def test_a_root_renamed_away_changes_nothing_and_is_reattached_when_it_returns(
    make_home: Callable[..., Home],
) -> None:
    run_outage(make_home, outage=1.0)


@pytest.mark.slow
def test_a_root_away_for_ten_minutes_is_reattached_within_90_s(
    make_home: Callable[..., Home],
) -> None:
    run_outage(make_home, outage=600.0)
