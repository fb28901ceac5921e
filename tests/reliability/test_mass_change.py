"""The mass-change brake: a share that vanishes is not an owner deleting half the library.

When more than a small share of a root would be marked gone at once, the daemon pauses state
changes for that root and logs one error with the counts, whether the files vanish while it
watches or while it was stopped. A few deletions are still recorded one by one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from audit import Baseline, audit
from conftest import Home, stop, wait_for
from photos import encode, photo, write

from dupwatch.daemon import MASS_GONE_SHARE
from dupwatch.records import FileStatus
from dupwatch.statepaths import database_path
from dupwatch.store import Store

LIBRARY = 60


def _library(home: Home) -> list[Path]:
    files = [
        write(home.root / f"album-{i % 3}" / f"IMG_{i:04d}.png", encode(photo(100 + i), ".png"))
        for i in range(LIBRARY)
    ]
    done = home.cli("scan", str(home.root))
    assert done.returncode == 0, done.stderr[-3000:]
    return files


def _statuses(home: Home) -> dict[FileStatus, int]:
    with Store.open(database_path(home.state)) as store:
        return store.file_counts()


def _events(home: Home, name: str) -> list[dict[str, object]]:
    found = []
    for line in home.log_text().splitlines():
        if line.startswith("{") and f'"event": "{name}"' in line:
            found.append(json.loads(line))
    return found


def _started(home: Home, daemon: subprocess.Popen[bytes], count: int = 1) -> None:
    assert wait_for(
        lambda: len(_events(home, "daemon_started")) >= count or daemon.poll() is not None, 60
    )
    assert daemon.poll() is None, home.log_text()[-3000:]


def test_half_the_library_vanishing_while_watched_pauses_the_root_with_one_error(
    make_home: Callable[..., Home], daemons: list[subprocess.Popen[bytes]]
) -> None:
    """Files deleted one by one under a live watch (a sync tool gone wrong, a polled share
    emptied): each arrives as its own event, and together they must still trip the brake."""
    home = make_home()
    files = _library(home)
    daemon = home.start_daemon()
    daemons.append(daemon)
    _started(home, daemon)
    aside = home.root.parent / "aside"
    aside.mkdir()
    vanished = files[: LIBRARY // 2]
    for path in vanished:
        shutil.copy2(path, aside / path.name)
        path.unlink()
    # Deletions are confirmed after a delay of settle + 2 health intervals, then gathered.
    wait_for(lambda: bool(_events(home, "mass_change_paused")), 60)
    time.sleep(3)
    try:
        errors = _events(home, "mass_change_paused")
        counts = _statuses(home)
    finally:
        assert stop(daemon) == 0
    # Deletions trickling in on a slow machine may be judged in small batches: those below the
    # brake's allowance are marked gone before the brake trips, never more than that.
    allowance = MASS_GONE_SHARE * LIBRARY + 10
    assert counts[FileStatus.GONE] <= allowance < len(vanished), counts
    assert len(errors) == 1, home.log_text()[-3000:]
    # The files come back (the share is remounted): nothing was lost or forgotten.
    for path in vanished:
        shutil.copy2(aside / path.name, path)
    audit(Baseline.take(files), [home.root], home.state)


def test_files_vanishing_while_stopped_pause_the_root_at_start(
    make_home: Callable[..., Home], daemons: list[subprocess.Popen[bytes]]
) -> None:
    home = make_home()
    files = _library(home)
    aside = home.root.parent / "aside"
    shutil.move(home.root / "album-2", aside)
    daemon = home.start_daemon()
    daemons.append(daemon)
    _started(home, daemon)
    assert wait_for(lambda: bool(_events(home, "mass_change_paused")), 30), home.log_text()[-3000:]
    time.sleep(2)
    try:
        counts = _statuses(home)
    finally:
        assert stop(daemon) == 0
    assert counts[FileStatus.GONE] == 0, counts
    assert len(_events(home, "mass_change_paused")) == 1
    shutil.move(aside, home.root / "album-2")
    audit(Baseline.take(files), [home.root], home.state)


def test_a_few_deletions_are_recorded_as_gone(
    make_home: Callable[..., Home], daemons: list[subprocess.Popen[bytes]]
) -> None:
    home = make_home()
    files = _library(home)
    daemon = home.start_daemon()
    daemons.append(daemon)
    _started(home, daemon)
    for path in files[:2]:
        path.unlink()
    try:
        assert wait_for(lambda: _statuses(home)[FileStatus.GONE] == 2, 30), home.log_text()[-2000:]
    finally:
        assert stop(daemon) == 0
    assert _events(home, "mass_change_paused") == []
    audit(Baseline.take(files[2:]), [home.root], home.state)
