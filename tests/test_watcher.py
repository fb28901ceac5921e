"""The watcher with real watchdog observers on real directories: settling, filters, moves,
consumer faults, observer restarts, network roots and the root sentinel."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from structlog.testing import capture_logs

from dupwatch import watcher as watcher_module
from dupwatch.records import StatKey
from dupwatch.watcher import Watcher, WatcherSettings

WATCHER_CHILD = Path(__file__).with_name("watcher_child.py")
SETTLE = 0.3
FAST = WatcherSettings(
    settle_seconds=SETTLE,
    health_interval=0.1,
    rescan_interval=3600,
    poll_interval=3600,
    overflow_rescan_delay=0.2,
)


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    """A real JPEG, so anything downstream of a test sees a plausible photo."""
    rng = np.random.default_rng(7)
    pixels = cv2.GaussianBlur(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), (9, 9), 3)
    ok, data = cv2.imencode(".jpg", pixels)
    assert ok
    return data.tobytes()


class Collector:
    """A thread-safe consumer that records every call and lets a test wait for a condition."""

    def __init__(self, fail_first: int = 0) -> None:
        self.calls: list[tuple[Path, StatKey]] = []
        self._cond = threading.Condition()
        self._fail_left = fail_first

    def __call__(self, path: Path, found: StatKey) -> None:
        with self._cond:
            if self._fail_left > 0:
                self._fail_left -= 1
                raise RuntimeError("consumer failure injected by the test")
            self.calls.append((path, found))
            self._cond.notify_all()

    def paths(self) -> list[Path]:
        with self._cond:
            return [p for p, _ in self.calls]

    def wait_for(self, predicate: Callable[[list[Path]], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate([p for p, _ in self.calls]):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@contextmanager
def watching(
    roots: list[Path], settings: WatcherSettings = FAST, **kwargs: Any
) -> Iterator[tuple[Watcher, Collector]]:
    collector = kwargs.pop("collector", None) or Collector()
    w = Watcher(roots, settings, collector, **kwargs)
    w.start()
    try:
        # The start-up walk has run once last_reconcile is set for every root.
        assert wait_until(lambda: all(r.last_reconcile for r in w.health().roots), 10)
        yield w, collector
    finally:
        w.stop()


def quiet(seconds: float = 3 * SETTLE) -> None:
    """Give anything that should not happen time to happen."""
    time.sleep(seconds)


def test_new_file_is_handed_over_once_with_its_stat(tmp_path: Path, jpeg: bytes) -> None:
    with watching([tmp_path]) as (_, got):
        photo = tmp_path / "IMG_0001.JPG"
        photo.write_bytes(jpeg)
        assert got.wait_for(lambda ps: photo in ps)
        quiet()
        assert got.paths() == [photo]
        assert got.calls[0][1] == StatKey.of(photo)


def test_file_written_slowly_in_chunks_is_handed_over_once_with_final_size(
    tmp_path: Path, jpeg: bytes
) -> None:
    with watching([tmp_path]) as (_, got):
        photo = tmp_path / "slow.jpg"
        chunks = [jpeg[i : i + 256] for i in range(0, len(jpeg), 256)]
        started = time.monotonic()
        with photo.open("wb") as f:
            for chunk in chunks:
                f.write(chunk)
                f.flush()
                time.sleep(0.1)
        assert time.monotonic() - started > 2 * SETTLE
        assert got.wait_for(lambda ps: photo in ps)
        quiet()
        assert got.paths() == [photo]
        assert got.calls[0][1].size == len(jpeg)


def test_presized_file_filled_slowly_is_handed_over_once_when_filled(
    tmp_path: Path, jpeg: bytes
) -> None:
    """Samba and Explorer set the final size first, then fill: size alone proves nothing."""
    with watching([tmp_path]) as (_, got):
        photo = tmp_path / "samba.jpg"
        fd = os.open(photo, os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            os.ftruncate(fd, len(jpeg))
            for offset in range(0, len(jpeg), 512):
                os.pwrite(fd, jpeg[offset : offset + 512], offset)
                time.sleep(0.08)
        finally:
            os.close(fd)
        assert got.wait_for(lambda ps: photo in ps)
        quiet()
        assert got.paths() == [photo]
        assert got.calls[0][1] == StatKey.of(photo)
        assert photo.read_bytes() == jpeg


def test_temp_name_write_then_rename_hands_over_only_the_final_name_once(
    tmp_path: Path, jpeg: bytes
) -> None:
    with watching([tmp_path]) as (_, got):
        writers = {
            ".holiday.jpg.Ab12Cd": tmp_path / "holiday.jpg",  # rsync
            "download.jpg.part": tmp_path / "download.jpg",  # Firefox
            "chrome.jpg.crdownload": tmp_path / "chrome.jpg",  # Chrome
            ".syncthing.synced.jpg.tmp": tmp_path / "synced.jpg",  # Syncthing
        }
        for temp_name, final in writers.items():
            temp = tmp_path / temp_name
            with temp.open("wb") as f:
                for i in range(0, len(jpeg), 1024):
                    f.write(jpeg[i : i + 1024])
                    f.flush()
                    time.sleep(0.02)
            quiet(SETTLE * 1.5)  # longer than the settle time: a temp name must still wait
            temp.rename(final)
        finals = set(writers.values())
        assert got.wait_for(lambda ps: finals <= set(ps))
        quiet()
        assert sorted(got.paths()) == sorted(finals)


def test_ignored_names_and_directories_are_never_handed_over(tmp_path: Path, jpeg: bytes) -> None:
    settings = dataclasses.replace(FAST, ignore=("*_thumb.jpg", "Scans/raw/*"))
    ignored = [
        ".hidden.jpg",
        "._IMG_1.jpg",
        ".dotdir/a.jpg",
        "@eaDir/IMG_1.jpg/SYNOPHOTO_THUMB_XL.jpg",
        "#recycle/old.jpg",
        "#snapshot/daily/a.jpg",
        ".@__thumb/a.jpg",
        ".Trash-1000/files/a.jpg",
        ".stversions/a.jpg",
        ".dupwatch-quarantine/2024/a.jpg",
        "~syncthing~b.jpg.tmp",
        "notes.txt",
        "noextension",
        "a_thumb.jpg",
        "Scans/raw/scan.tif",
    ]
    for rel in ignored[:3]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(jpeg)  # present before start: the walk must skip them
    with watching([tmp_path], settings) as (w, got):
        for rel in ignored[3:]:
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_bytes(jpeg)
        control = tmp_path / "Scans" / "kept.TIFF"
        control.write_bytes(jpeg)
        assert got.wait_for(lambda ps: control in ps)
        w.request_reconcile()
        quiet()
        assert got.paths() == [control]


def test_quarantine_directory_name_is_configurable(tmp_path: Path, jpeg: bytes) -> None:
    settings = dataclasses.replace(FAST, quarantine_dir_name="Duplicates")
    with watching([tmp_path], settings) as (_, got):
        (tmp_path / "Duplicates").mkdir()
        (tmp_path / "Duplicates" / "a.jpg").write_bytes(jpeg)
        control = tmp_path / "b.jpg"
        control.write_bytes(jpeg)
        assert got.wait_for(lambda ps: control in ps)
        quiet()
        assert got.paths() == [control]


def test_directory_moved_into_the_tree_gets_its_files_found(tmp_path: Path, jpeg: bytes) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    tree = outside / "trip"
    expected = []
    for level in ("", "day1", "day1/morning"):
        (tree / level).mkdir(parents=True, exist_ok=True)
        for i in range(5):
            (tree / level / f"p{i}.jpg").write_bytes(jpeg)
            expected.append(root / "trip" / level / f"p{i}.jpg")
    with watching([root]) as (_, got):
        tree.rename(root / "trip")
        assert got.wait_for(lambda ps: set(expected) <= set(ps))
        # Files added later inside the moved-in tree are seen too (the tree is watched).
        late = [root / "trip" / "day1" / "morning" / f"late{i}.jpg" for i in range(3)]
        for path in late:
            path.write_bytes(jpeg)
        assert got.wait_for(lambda ps: set(late) <= set(ps), timeout=5)
        quiet()
        assert sorted(got.paths()) == sorted(expected + late)


def test_directory_moved_out_of_the_tree_reports_its_files_missing_until_it_returns(
    tmp_path: Path, jpeg: bytes
) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "trip" / "day1").mkdir(parents=True)
    outside.mkdir()
    leaving = [root / "trip" / "a.jpg", root / "trip" / "day1" / "b.jpg"]
    staying = root / "c.jpg"
    for path in [*leaving, staying]:
        path.write_bytes(jpeg)
    missing: list[tuple[Path, list[Path]]] = []
    with watching([root], on_missing=lambda r, ps: missing.append((r, list(ps)))) as (_, got):
        assert got.wait_for(lambda ps: {*leaving, staying} <= set(ps))
        (root / "trip").rename(outside / "trip")
        # No event names the files inside, and the timed walk is an hour away.
        assert wait_until(lambda: bool(missing), timeout=10)
        quiet()
        assert [(r, sorted(ps)) for r, ps in missing] == [(root, sorted(leaving))]
        # Back again, unchanged: reported missing, so handed over once more.
        (outside / "trip").rename(root / "trip")
        assert got.wait_for(lambda ps: all(ps.count(p) == 2 for p in leaving))
        quiet()
    assert sorted(got.paths()) == sorted([*leaving, *leaving, staying])


def test_directory_moved_out_and_back_is_watched_again_without_a_warning(
    tmp_path: Path, jpeg: bytes
) -> None:
    """watchdog registers the watches of the returning directory again; that is logged at debug
    level, not as a warning, and files written there afterwards are still seen."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "trip" / "day1").mkdir(parents=True)
    outside.mkdir()
    # In its own process: the logging under test is the daemon's, configured for the process.
    child = subprocess.Popen(
        [sys.executable, str(WATCHER_CHILD), str(root), str(SETTLE), "3600"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines: queue.Queue[bytes] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in child.stdout or ()])
    reader.start()
    try:
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
        assert lines.get(timeout=30).startswith(b"ready")
        (root / "trip").rename(outside / "trip")
        quiet()
        (outside / "trip").rename(root / "trip")
        quiet()
        late = root / "trip" / "day1" / "late.jpg"
        late.write_bytes(jpeg)
        assert lines.get(timeout=10) == f"settled {os.fsencode(late).hex()}\n".encode()
    finally:
        child.terminate()
        try:
            _, err = child.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            _, err = child.communicate(timeout=5)
        reader.join(10)
    events = [json.loads(x) for x in err.decode().splitlines() if x.startswith("{")]
    loud = [e for e in events if e.get("level") != "debug" and "Overwritten" in str(e)]
    assert loud == []


def test_consumer_exception_does_not_stop_delivery(tmp_path: Path, jpeg: bytes) -> None:
    with watching([tmp_path], collector=Collector(fail_first=1)) as (_, got):
        first = tmp_path / "first.jpg"
        first.write_bytes(jpeg)
        quiet()
        later = [tmp_path / f"later{i}.jpg" for i in range(5)]
        for path in later:
            path.write_bytes(jpeg)
        assert got.wait_for(lambda ps: set(later) <= set(ps))
        # The failed hand-over is retried at the next change of that file.
        with first.open("ab") as f:
            f.write(b"\0")
        assert got.wait_for(lambda ps: first in ps)


def test_exception_in_event_handling_does_not_stop_delivery(
    tmp_path: Path, jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    with watching([tmp_path]) as (w, got):
        original = w.file_changed
        failed = threading.Event()

        def failing_once(path: Path) -> None:
            if not failed.is_set():
                failed.set()
                raise RuntimeError("handler failure injected by the test")
            original(path)

        monkeypatch.setattr(w, "file_changed", failing_once)
        (tmp_path / "boom.jpg").write_bytes(jpeg)
        assert wait_until(failed.is_set)
        later = [tmp_path / f"after{i}.jpg" for i in range(20)]
        for path in later:
            path.write_bytes(jpeg)
        assert got.wait_for(lambda ps: set(later) <= set(ps))
        assert w.healthy


def test_same_stat_is_not_handed_over_again_but_a_changed_file_is(
    tmp_path: Path, jpeg: bytes
) -> None:
    with watching([tmp_path]) as (w, got):
        photo = tmp_path / "a.jpg"
        photo.write_bytes(jpeg)
        assert got.wait_for(lambda ps: ps == [photo])
        # Opening for writing and closing without writing produces events but no new version.
        with photo.open("ab"):
            pass
        w.request_reconcile()
        quiet()
        assert got.paths() == [photo]
        with photo.open("ab") as f:
            f.write(b"more")
        assert got.wait_for(lambda ps: ps == [photo, photo])
        assert got.calls[1][1].size == len(jpeg) + 4


def test_non_utf8_names_are_handed_over_with_surrogate_escapes(tmp_path: Path, jpeg: bytes) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9 \x1b[31m\n.jpg"
    with watching([tmp_path]) as (_, got):
        fd = os.open(raw, os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, jpeg)
        os.close(fd)
        expected = Path(os.fsdecode(raw))
        assert got.wait_for(lambda ps: expected in ps)
        assert os.fsencode(got.paths()[0]) == raw


def test_deleted_and_renamed_files_are_reported_gone(tmp_path: Path, jpeg: bytes) -> None:
    gone: list[Path] = []
    keep = tmp_path / "keep.jpg"
    keep.write_bytes(jpeg)
    with watching([tmp_path], on_gone=gone.append) as (_, got):
        a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
        a.write_bytes(jpeg)
        assert got.wait_for(lambda ps: a in ps)
        a.rename(b)
        assert got.wait_for(lambda ps: b in ps)
        b.unlink()
        assert wait_until(lambda: set(gone) == {a, b})


def test_observer_that_dies_is_restarted_and_reconciled(tmp_path: Path, jpeg: bytes) -> None:
    with capture_logs() as logs, watching([tmp_path]) as (w, got):
        observer = w._roots[tmp_path].observer
        assert observer is not None
        # Kill the emitter thread the way an unexpected error inside watchdog would.
        for emitter in list(observer._observer.emitters):
            emitter.stop()
        missed = tmp_path / "during_outage.jpg"
        missed.write_bytes(jpeg)
        assert wait_until(lambda: any(e["event"] == "watcher_restarted" for e in logs))
        assert got.wait_for(lambda ps: missed in ps)
        after = tmp_path / "after_restart.jpg"
        after.write_bytes(jpeg)
        assert got.wait_for(lambda ps: after in ps)
        assert w.healthy and w.health().roots[0].restarts == 1


def test_observer_that_keeps_dying_makes_the_watcher_unhealthy(tmp_path: Path) -> None:
    settings = dataclasses.replace(FAST, max_restarts=0)
    reasons: list[str] = []
    with watching([tmp_path], settings, on_unhealthy=reasons.append) as (w, _):
        observer = w._roots[tmp_path].observer
        assert observer is not None
        observer.stop()
        assert wait_until(lambda: not w.healthy)
        assert len(reasons) == 1 and "observer_died" in reasons[0]


def test_network_root_is_walked_on_the_poll_interval_without_inotify(
    tmp_path: Path, jpeg: bytes
) -> None:
    settings = dataclasses.replace(FAST, force_polling=True, poll_interval=0.5)
    (tmp_path / "old.jpg").write_bytes(jpeg)
    with watching([tmp_path], settings) as (w, got):
        assert w.health().roots[0].mode == "poll"
        assert w._roots[tmp_path].observer is None
        assert got.wait_for(lambda ps: tmp_path / "old.jpg" in ps)
        new = tmp_path / "new.jpg"
        new.write_bytes(jpeg)
        assert got.wait_for(lambda ps: new in ps, timeout=5)
        quiet(1.2)  # two more polls: nothing is handed over twice
        assert sorted(got.paths()) == sorted([tmp_path / "old.jpg", new])


def test_watch_limit_short_logs_the_limit_and_walks_often(
    tmp_path: Path, jpeg: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(20):
        (tmp_path / f"d{i}").mkdir()
    monkeypatch.setattr(watcher_module, "max_user_watches", lambda: 10)
    settings = dataclasses.replace(FAST, poll_interval=0.5)
    with capture_logs() as logs, watching([tmp_path], settings) as (w, got):
        warning = next(e for e in logs if e["event"] == "inotify_watch_limit_low")
        assert warning["max_user_watches"] == 10
        assert warning["directories"] == 21
        assert "fs.inotify.max_user_watches" in warning["fix"]
        assert w.health().roots[0].watch_limit_short
        photo = tmp_path / "d3" / "x.jpg"
        photo.write_bytes(jpeg)
        assert got.wait_for(lambda ps: photo in ps)


def test_root_renamed_away_pauses_and_resumes_when_it_returns(tmp_path: Path, jpeg: bytes) -> None:
    root, away = tmp_path / "share", tmp_path / "share-away"
    root.mkdir()
    (root / "a.jpg").write_bytes(jpeg)
    states: list[tuple[bool, str | None]] = []
    gone: list[Path] = []
    missing: list[Path] = []
    with (
        capture_logs() as logs,
        watching(
            [root],
            on_root_state=lambda _r, ok, why: states.append((ok, why)),
            on_gone=gone.append,
            on_missing=lambda _r, ps: missing.extend(ps),
        ) as (w, got),
    ):
        assert got.wait_for(lambda ps: root / "a.jpg" in ps)
        root.rename(away)
        assert wait_until(lambda: not w.root_available(root))
        (away / "b.jpg").write_bytes(jpeg)  # written while paused: found after the return
        quiet()
        assert got.paths() == [root / "a.jpg"]
        away.rename(root)
        assert wait_until(lambda: w.root_available(root))
        assert got.wait_for(lambda ps: root / "b.jpg" in ps)
        c = root / "c.jpg"
        c.write_bytes(jpeg)  # the watch is attached to the returned directory
        assert got.wait_for(lambda ps: c in ps, timeout=5)
        assert states == [(False, "missing"), (True, None)]
        assert [e["event"] for e in logs].count("root_unavailable") == 1
        assert gone == [] and missing == []


def test_root_emptied_pauses_without_reporting_files_gone(tmp_path: Path, jpeg: bytes) -> None:
    photos = [tmp_path / f"p{i}.jpg" for i in range(10)]
    for p in photos:
        p.write_bytes(jpeg)
    (tmp_path / "sub").mkdir()
    gone: list[Path] = []
    missing: list[Path] = []
    with watching(
        [tmp_path], on_gone=gone.append, on_missing=lambda _r, ps: missing.extend(ps)
    ) as (w, got):
        assert got.wait_for(lambda ps: set(photos) <= set(ps))
        for p in photos:
            p.unlink()
        (tmp_path / "sub").rmdir()
        assert wait_until(lambda: not w.root_available(tmp_path))
        assert w.health().roots[0].reason == "emptied"
        w.request_reconcile()
        quiet(FAST.settle_seconds + 4 * FAST.health_interval + 0.5)
        assert gone == [] and missing == []
        # The share comes back: the same files are there again.
        for p in photos:
            p.write_bytes(jpeg)
        assert wait_until(lambda: w.root_available(tmp_path))
        assert gone == [] and missing == []


def test_phantom_paths_through_a_swapped_in_symlink_are_never_handed_over(
    tmp_path: Path, jpeg: bytes
) -> None:
    """A directory moved out keeps its stale watch; replaced by a symlink, its old in-tree
    path would lead outside the root."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "album").mkdir(parents=True)
    outside.mkdir()
    with capture_logs() as logs, watching([root]) as (_, got):
        (root / "album").rename(outside / "album")
        (root / "album").symlink_to(outside / "album", target_is_directory=True)
        (outside / "album" / "secret.jpg").write_bytes(jpeg)
        control = root / "control.jpg"
        control.write_bytes(jpeg)
        assert got.wait_for(lambda ps: control in ps)
        quiet()
        assert got.paths() == [control]
        assert any(e["event"] == "settled_outside_root" for e in logs)
