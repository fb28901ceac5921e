"""kill -9 of the running daemon in the middle of a quarantine move, then a restart.

The daemon is the real one (daemon_crash_child.py only installs the kill). After the restart
the journal has no pending rows, every file exists exactly once (in place or in the
quarantine, never both, never neither) and the store says where each one is.
"""

from __future__ import annotations

import hashlib
import signal
import time
from pathlib import Path

import pytest
from daemon_harness import DaemonProcess, files_on_disk, jpeg, open_store, rgb_photo, write_config

from dupwatch.records import FileStatus, JournalState

SETTLE = 0.5
QUARANTINE = ".dupwatch-quarantine"


@pytest.mark.parametrize(
    ("crash_at", "moved_before_crash"),
    [("before_rename", False), ("before_done", True)],
    ids=["between-intent-and-rename", "between-rename-and-done"],
)
def test_sigkill_mid_move_then_restart_leaves_each_file_exactly_once(
    tmp_path: Path, crash_at: str, moved_before_crash: bool
) -> None:
    root, state = tmp_path / "photos", tmp_path / "state"
    root.mkdir()
    config = write_config(tmp_path / "config.toml", settle=SETTLE)
    photo, other = jpeg(rgb_photo("astronaut")), jpeg(rgb_photo("coffee"))
    copy_path, q_path = root / "album" / "copy.jpg", root / QUARANTINE / "album" / "copy.jpg"

    crashing = DaemonProcess(state, config, [root], crash_at=crash_at)
    try:
        crashing.wait_started()
        (root / "photo.jpg").write_bytes(photo)
        (root / "other.jpg").write_bytes(other)
        crashing.wait_outcome(root / "photo.jpg")
        crashing.wait_outcome(root / "other.jpg")
        copy_path.parent.mkdir()
        copy_path.write_bytes(photo)
        code = crashing.wait_exit(timeout=60)
        assert code == -signal.SIGKILL, crashing.stderr[-2000:]
    finally:
        crashing.close()

    # The crash landed where intended: an intent in the journal, the file where the step left it.
    with open_store(state) as store:
        pending = store.journal_pending()
        assert [(e.original_path, e.state) for e in pending] == [(copy_path, JournalState.INTENT)]
    assert copy_path.exists() is not moved_before_crash
    assert q_path.exists() is moved_before_crash

    daemon = DaemonProcess(state, config, [root])
    try:
        daemon.wait_started()
        time.sleep(6 * SETTLE)  # room for anything the start-up walk or recovery hands over
        assert daemon.proc.poll() is None
        on_disk = files_on_disk(root)
        digests = [hashlib.sha256(data).hexdigest() for data in on_disk.values()]
        # photo.jpg, other.jpg and the copy: each exactly once, nothing left half-done.
        assert len(on_disk) == 3, sorted(on_disk)
        wanted = [hashlib.sha256(d).hexdigest() for d in (photo, photo, other)]
        assert sorted(digests) == sorted(wanted)
        assert on_disk[root / "photo.jpg"] == photo and on_disk[root / "other.jpg"] == other
        assert (copy_path in on_disk) != (q_path in on_disk)
        with open_store(state) as store:
            assert store.journal_pending() == []
            assert store.integrity_problems(quick=False) == []
            record = store.file_by_path(copy_path)
            assert record is not None
            done = store.journal_entries({JournalState.DONE})
            if q_path in on_disk:
                assert record.status is FileStatus.QUARANTINED
                assert [(e.original_path, e.quarantine_path) for e in done] == [(copy_path, q_path)]
            else:
                assert record.status is FileStatus.INDEXED
                assert done == []
            for keeper in ("photo.jpg", "other.jpg"):
                kept = store.file_by_path(root / keeper)
                assert kept is not None and kept.status is FileStatus.INDEXED
        code, took = daemon.stop()
        assert code == 0 and took < 10
    finally:
        daemon.close()
