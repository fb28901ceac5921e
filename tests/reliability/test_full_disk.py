"""A full disk: the quarantine on a small filesystem that fills up part way through.

A 300 KiB tmpfs is mounted as the root's quarantine directory, so every move is a verified copy
across filesystems, and the copies stop fitting after a few files. Expected: no partial file
anywhere, every source untouched, the daemon keeps going, and the audit holds; once there is
room again, the next start moves the remaining duplicates. One error line per interval.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from audit import Baseline, audit
from conftest import CONFIG, Home, stop, wait_for
from faults import tmpfs_at
from photos import encode, photo, write

from dupwatch.deferred import DeferredMoves
from dupwatch.records import JournalState
from dupwatch.statepaths import database_path
from dupwatch.store import Store

PAIRS = 12


@pytest.fixture
def small_quarantine(make_home: Callable[..., Home]) -> Iterator[tuple[Home, Path]]:
    home = make_home()
    qdir = home.root / ".dupwatch-quarantine"
    qdir.mkdir()
    with tmpfs_at(qdir, "size=300k,mode=755"):
        yield home, qdir


def test_a_full_quarantine_leaves_no_partial_file_and_every_source_untouched(
    small_quarantine: tuple[Home, Path],
) -> None:
    home, qdir = small_quarantine
    files = []
    for i in range(PAIRS):
        data = encode(photo(400 + i), quality=97)  # tens of KB each: a few fit
        files.append(write(home.root / "keep" / f"k{i:02d}.jpg", data, mtime_ns=10**18))
        files.append(write(home.root / "copies" / f"c{i:02d}.jpg", data, mtime_ns=2 * 10**18))
    baseline = Baseline.take(files)

    done = home.cli("scan", "--json", str(home.root))
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    moved = [r for r in reports if r["moved"]]
    refused = [r for r in reports if r["reason"] == "quarantine_failed"]
    assert moved and refused, "the quarantine should fill part way through"
    errors = [line for line in done.stderr.splitlines() if '"level": "error"' in line]
    print(f"full quarantine: {len(moved)} moved, {len(refused)} refused, {len(errors)} errors")
    # One error line for the interval, not one per file; it names the cause.
    assert len(errors) == 1 and '"quarantine_unavailable"' in errors[0], errors
    assert "No space left" in errors[0]
    # No partial copy on the full filesystem, every source where it was.
    assert [p.name for p in qdir.rglob(".dupwatch-*")] == []
    audit(baseline, [home.root], home.state, check_store=False)

    # Room again: the next start retries the duplicates it could not move.
    subprocess.run(["mount", "-o", "remount,size=16m", str(qdir)], check=True)
    again = home.cli("scan", str(home.root))
    assert again.returncode == 0, again.stderr[-3000:]
    with Store.open(database_path(home.state)) as store:
        done_entries = store.journal_entries([JournalState.DONE])
    assert len(done_entries) == PAIRS
    audit(baseline, [home.root], home.state)


def test_deferred_moves_back_off_from_a_minute_to_an_hour(tmp_path: Path) -> None:
    now = [1000.0]
    with Store.open(tmp_path / "dupwatch.db") as store:
        deferred = DeferredMoves(store, clock=lambda: now[0])
        assert not deferred.due()  # nothing waits
        deferred.add(7, tmp_path / "a.jpg", "No space left on device")
        deferred.add(8, tmp_path / "b.jpg", "No space left on device")
        assert deferred.ids() == [7, 8]
        assert DeferredMoves(store).ids() == [7, 8]  # kept in the store, so across a restart
        delays = []
        for _ in range(8):
            assert not deferred.due()
            now[0] += deferred.delay
            assert deferred.due()
            assert deferred.take() == [7, 8]
            deferred.add(7, tmp_path / "a.jpg", "still full")
            deferred.add(8, tmp_path / "b.jpg", "still full")
            deferred.settled(failed_again=True)
            delays.append(deferred.delay)
        assert delays == [120, 240, 480, 960, 1920, 3600, 3600, 3600]
        now[0] += deferred.delay
        deferred.take()
        deferred.settled(failed_again=False)
        assert deferred.delay == 60 and deferred.ids() == []


def test_a_full_state_directory_stops_the_daemon_with_one_clear_line_and_loses_nothing(
    tmp_path: Path, model_cache: Path, daemons: list[subprocess.Popen[bytes]]
) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    base = tmp_path / "home"
    home = Home(base / "photos", base / "state", base / "config.toml")
    home.root.mkdir(parents=True)
    home.state.mkdir()
    home.config.write_text(CONFIG.format(settle=0.3))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(home.state)], check=False
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    filler = home.state / "filler"
    try:
        shutil.copytree(model_cache, home.state / "models")
        files = [write(home.root / f"a{i}.jpg", encode(photo(500 + i))) for i in range(5)]
        daemon = home.start_daemon()
        daemons.append(daemon)
        assert wait_for(lambda: home.log_text().count('"file_processed"') >= 5, 120)
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # leave the database no room to grow
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, bytes(4096))
        os.close(fd)
        for i in range(20):
            files.append(write(base / "in" / f"b{i}.jpg", encode(photo(600 + i))))
            files[-1].rename(home.root / files[-1].name)  # arrives whole
            files[-1] = home.root / files[-1].name
        code = daemon.wait(timeout=120)
        assert code == 1, home.log_text()[-3000:]
        errors = [line for line in home.log_text().splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "full" in errors[0], home.log_text()[-3000:]
        assert "Traceback" not in home.log_text()
        audit(Baseline.take(files), [home.root], home.state, check_store=False)

        filler.unlink()  # the owner frees space; systemd starts the daemon again
        again = home.start_daemon()
        daemons.append(again)
        assert wait_for(lambda: home.log_text().count('"file_processed"') >= 25, 180)
        assert stop(again) == 0
        audit(Baseline.take(files), [home.root], home.state)
    finally:
        subprocess.run(["umount", "-l", str(home.state)], check=False)
