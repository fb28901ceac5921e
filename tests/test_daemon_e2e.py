"""``dupwatch run`` as a subprocess on real roots: arrivals of every kind, stop, restart.

The real daemon (watchdog on inotify, settling, the worker process with the real model, SQLite,
the quarantine) is driven only through the disk; outcomes are read from its JSON log lines,
from its database and from the disk.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from daemon_harness import DaemonProcess, jpeg, open_store, rgb_photo, write_config

from dupwatch.records import FileStatus, JournalState, Tier

QUARANTINE = ".dupwatch-quarantine"
# Settling needs a quiet second; the slow writers below pause a tenth of that between chunks,
# leaving room for a loaded two-core machine to stall the writing thread now and then.
SETTLE = 1.0
CHUNK_PAUSE = 0.1


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_slowly(path: Path, data: bytes, chunks: int = 20, pause: float = CHUNK_PAUSE) -> None:
    """Write ``data`` like a slow copy over the network: chunk, flush, pause."""
    step = -(-len(data) // chunks)
    with path.open("wb") as out:
        for start in range(0, len(data), step):
            out.write(data[start : start + step])
            out.flush()
            time.sleep(pause)


def resized_copy(rgb: np.ndarray, scale: float, quality: int) -> bytes:
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    return jpeg(small, quality)


def corrupt_jpeg(seed: int) -> bytes:
    """A JPEG start-of-image and header bytes followed by garbage."""
    header = jpeg(rgb_photo("coins"))[:120]
    return header + np.random.default_rng(seed).integers(0, 256, 20_000, np.uint8).tobytes()


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "photos", tmp_path / "phone-backup"
    a.mkdir()
    b.mkdir()
    return a, b


def test_daemon_handles_every_kind_of_arrival_then_stops_and_catches_up(
    tmp_path: Path, roots: tuple[Path, Path]
) -> None:
    a, b = roots
    state = tmp_path / "state"
    config = write_config(tmp_path / "config.toml", settle=SETTLE)
    original = jpeg(rgb_photo("astronaut"))
    slow = jpeg(rgb_photo("coffee"))
    renamed = jpeg(rgb_photo("chelsea"))
    completed = jpeg(rgb_photo("rocket"))
    corrupt = corrupt_jpeg(5)
    left, right = (jpeg(img) for img in rgb_photo_pair())

    daemon = DaemonProcess(state, config, [a, b])
    writers: list[threading.Thread] = []
    try:
        daemon.wait_started()

        # A new photo, then a byte copy of it in the other root, then a smaller re-encoding.
        (a / "new.jpg").write_bytes(original)
        first = daemon.wait_outcome(a / "new.jpg")
        assert (first["tier"], first["action"]) == ("unique", "none")
        (b / "copy.jpg").write_bytes(original)
        copy = daemon.wait_outcome(b / "copy.jpg")
        assert (copy["tier"], copy["action"], copy["moved"]) == (
            "exact",
            "quarantine",
            str(b / "copy.jpg"),
        )
        assert copy["duplicate_of"] == str(a / "new.jpg")
        (a / "sub").mkdir()
        (a / "sub" / "resized.jpg").write_bytes(resized_copy(rgb_photo("astronaut"), 0.6, 70))
        resized = daemon.wait_outcome(a / "sub" / "resized.jpg")
        assert (resized["tier"], resized["action"]) == ("duplicate", "quarantine")
        assert resized["duplicate_of"] == str(a / "new.jpg")

        # Files arriving slowly, under a temporary name, truncated, corrupt, at the same time.
        tmp_name = a / ".renamed.jpg.Xa81bQ"  # rsync's temporary name

        def rsync_like() -> None:
            write_slowly(tmp_name, renamed)
            tmp_name.rename(a / "renamed.jpg")

        writers = [
            threading.Thread(target=write_slowly, args=(a / "slow.jpg", slow)),
            threading.Thread(target=rsync_like),
        ]
        for writer in writers:
            writer.start()
        (a / "completed.jpg").write_bytes(completed[: len(completed) * 6 // 10])
        (a / "corrupt.jpg").write_bytes(corrupt)
        truncated = daemon.wait_outcome(a / "completed.jpg")
        assert truncated["event"] == "file_failed"
        assert truncated["tier"] == "failed"
        with (a / "completed.jpg").open("ab") as out:
            out.write(completed[len(completed) * 6 // 10 :])
        for writer in writers:
            writer.join(timeout=30)
        done = daemon.wait_outcome(a / "completed.jpg", count=2)
        assert (done["event"], done["tier"]) == ("file_processed", "unique")
        failed = daemon.wait_outcome(a / "corrupt.jpg")
        assert (failed["event"], failed["tier"], failed["action"]) == (
            "file_failed",
            "failed",
            "none",
        )
        for name in ("slow.jpg", "renamed.jpg"):
            outcome = daemon.wait_outcome(a / name)
            assert (outcome["tier"], outcome["action"]) == ("unique", "none"), outcome

        # A different photograph of the same scene (the other eye of a stereo pair).
        (a / "moto-left.jpg").write_bytes(left)
        daemon.wait_outcome(a / "moto-left.jpg")
        (a / "moto-right.jpg").write_bytes(right)
        other_view = daemon.wait_outcome(a / "moto-right.jpg")
        assert other_view["tier"] in ("unique", "similar"), other_view
        assert other_view["action"] in ("none", "log"), other_view  # never moved

        time.sleep(3 * SETTLE)  # anything processed twice would show up by now
        assert daemon.proc.poll() is None, "the daemon died"
        for name in ("slow.jpg", "renamed.jpg", "corrupt.jpg", "new.jpg", "moto-right.jpg"):
            assert len(daemon.outcomes(a / name)) == 1, name
        assert len(daemon.outcomes(a / "completed.jpg")) == 2
        assert daemon.outcomes(tmp_name) == []

        # The disk: uniques in place with their final bytes, duplicates in the quarantine.
        expected_in_place = {
            a / "new.jpg": original,
            a / "slow.jpg": slow,
            a / "renamed.jpg": renamed,
            a / "completed.jpg": completed,
            a / "corrupt.jpg": corrupt,
            a / "moto-left.jpg": left,
            a / "moto-right.jpg": right,
        }
        for path, data in expected_in_place.items():
            assert path.read_bytes() == data, path
        assert not (b / "copy.jpg").exists()
        assert not (a / "sub" / "resized.jpg").exists()
        assert (b / QUARANTINE / "copy.jpg").read_bytes() == original
        assert (a / QUARANTINE / "sub" / "resized.jpg").is_file()

        # The store agrees, with journal rows for both moves.
        with open_store(state) as store:
            keeper = store.file_by_path(a / "new.jpg")
            assert keeper is not None and keeper.status is FileStatus.INDEXED
            for path, data in expected_in_place.items():
                record = store.file_by_path(path)
                assert record is not None, path
                if path.name == "corrupt.jpg":
                    assert record.status is FileStatus.FAILED
                    assert record.failure_reason
                else:
                    assert record.status is FileStatus.INDEXED, path
                    assert record.sha256 == sha(data), path
            for path in (b / "copy.jpg", a / "sub" / "resized.jpg"):
                record = store.file_by_path(path)
                assert record is not None and record.status is FileStatus.QUARANTINED
            entries = {e.original_path: e for e in store.journal_entries()}
            assert set(entries) == {b / "copy.jpg", a / "sub" / "resized.jpg"}
            assert all(e.state is JournalState.DONE for e in entries.values())
            assert all(e.duplicate_of == keeper.id for e in entries.values())
            assert entries[b / "copy.jpg"].tier is Tier.EXACT
            assert entries[a / "sub" / "resized.jpg"].tier is Tier.DUPLICATE
            assert entries[b / "copy.jpg"].quarantine_path == b / QUARANTINE / "copy.jpg"
            assert store.journal_pending() == []

        code, took = daemon.stop()
        assert code == 0 and took < 10
        assert daemon.named("daemon_stopped")
    finally:
        for writer in writers:
            writer.join(timeout=30)
        daemon.close()

    # While it is stopped: a copy of a known photo and a new photo arrive.
    (a / "later-copy.jpg").write_bytes(slow)
    later = jpeg(rgb_photo("immunohistochemistry"))
    (b / "later-new.jpg").write_bytes(later)
    again = DaemonProcess(state, config, [a, b])
    try:
        again.wait_started()
        copy = again.wait_outcome(a / "later-copy.jpg")
        assert (copy["tier"], copy["action"], copy["duplicate_of"]) == (
            "exact",
            "quarantine",
            str(a / "slow.jpg"),
        )
        new = again.wait_outcome(b / "later-new.jpg")
        assert (new["tier"], new["action"]) == ("unique", "none")
        time.sleep(2 * SETTLE)
        # Files known unchanged are not processed again after a restart.
        processed = {e["path"] for e in again.named("file_processed") + again.named("file_failed")}
        assert processed == {str(a / "later-copy.jpg"), str(b / "later-new.jpg")}
        assert (a / QUARANTINE / "later-copy.jpg").read_bytes() == slow
        assert (b / "later-new.jpg").read_bytes() == later
        code, took = again.stop()
        assert code == 0 and took < 10
    finally:
        again.close()


def rgb_photo_pair() -> tuple[np.ndarray, np.ndarray]:
    """Two photographs of one scene from viewpoints a few centimetres apart."""
    import skimage.data

    left, right, _disparity = skimage.data.stereo_motorcycle()
    return left, right
