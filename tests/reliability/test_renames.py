"""Renames inside the roots, under the running daemon: a renamed photo is not a new photo.

A file renamed, or moved with its whole folder, keeps its record (same id, fingerprints and
decisions) under the new path: no second ``file_processed`` line, no record left behind as
gone, nothing counted toward the mass-change brake. The same holds for a rename made while
the daemon was stopped, which its start-up walk finds (there the old record may be marked
gone for a moment before the new path is seen, then it is brought back).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from audit import Baseline, audit
from conftest import Home
from daemon_harness import DaemonProcess, open_store
from photos import encode, photo, write

from dupwatch.records import FileStatus

# Deletions are judged after the settle delay, two health checks and a quiet moment; waiting
# past that shows whether the old paths were (wrongly) marked gone.
GONE_JUDGED_AFTER = 16.0


def _ids_by_path(home: Home) -> dict[Path, tuple[int, FileStatus]]:
    with open_store(home.state) as store:
        return {r.path: (r.id, r.status) for r in store.files_under(home.root)}


def _renamed_and_followed(
    home: Home,
    daemon: DaemonProcess,
    moves: dict[Path, Path],
    before: dict[Path, int],
    *,
    live: bool = True,
) -> None:
    for new in moves.values():
        daemon.wait_for(lambda new=new: daemon.named("file_renamed", new), 60, f"rename {new}")
    time.sleep(GONE_JUDGED_AFTER)
    assert [daemon.outcomes(new) for new in moves.values()] == [[] for _ in moves]
    # At start-up the walk may judge the old path before the new one has settled: the record
    # is marked gone for a moment, then brought back. Under a live watch it never goes.
    assert daemon.named("file_gone") == [] or not live
    assert daemon.named("mass_change_paused") == []
    now = _ids_by_path(home)
    for old, new in moves.items():
        assert now[new] == (before[old], FileStatus.INDEXED)
        assert old not in now
    assert FileStatus.GONE not in {status for _, status in now.values()}


def test_renamed_files_and_folders_keep_their_record_and_are_not_processed_again(
    make_home: Callable[..., Home],
) -> None:
    home = make_home()
    files = [write(home.root / "album" / f"IMG_{n}.jpg", encode(photo(120 + n))) for n in range(3)]
    # More files than the mass-change brake lets go at once in a library this size.
    trip = [write(home.root / "trip" / f"IMG_{n}.jpg", encode(photo(130 + n))) for n in range(12)]
    files += trip
    daemon = DaemonProcess(home.state, home.config, [home.root])
    try:
        daemon.wait_started()
        for path in files:
            daemon.wait_outcome(path, timeout=120)
        before = {p: i for p, (i, _) in _ids_by_path(home).items()}
        assert set(before) == set(files)

        (home.root / "sorted").mkdir()
        files[0].rename(home.root / "sorted" / "first.jpg")
        (home.root / "trip").rename(home.root / "2024 trip")
        moves = {files[0]: home.root / "sorted" / "first.jpg"}
        moves |= {p: home.root / "2024 trip" / p.name for p in trip}
        _renamed_and_followed(home, daemon, moves, before)
        code, _ = daemon.stop()
        assert code == 0
    finally:
        daemon.close()

    # Renamed while the daemon was stopped: the start-up walk sees one path missing and one new.
    before = {p: i for p, (i, _) in _ids_by_path(home).items()}
    offline = {files[1]: home.root / "sorted" / "second.jpg"}
    files[1].rename(offline[files[1]])
    daemon = DaemonProcess(home.state, home.config, [home.root])
    try:
        daemon.wait_started()
        _renamed_and_followed(home, daemon, offline, before, live=False)
    finally:
        daemon.close()
    current = [p for p in home.root.rglob("*.jpg") if ".dupwatch-quarantine" not in p.parts]
    audit(Baseline.take(current), [home.root], home.state)
