"""Quarantine, ``dupwatch restore`` and the file's return, with the daemon running throughout."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import cv2
from daemon_harness import DaemonProcess, jpeg, open_store, rgb_photo, write_config

from dupwatch.records import FileStatus, JournalState

SETTLE = 0.5
# Old capture-era timestamps: the library's photo is the older one, so it stays under "best".
KEEPER_MTIME_NS = 1_500_000_000_111_111_111
COPY_MTIME_NS = 1_600_000_000_123_456_789


def arrive(path: Path, data: bytes, *, mode: int, mtime_ns: int, staging: Path) -> None:
    """Make the file complete outside the root, then move it in, as a sync tool does."""
    staged = staging / path.name
    staged.write_bytes(data)
    staged.chmod(mode)
    os.utime(staged, ns=(mtime_ns, mtime_ns))
    staged.rename(path)


def dupwatch(config: Path, state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "dupwatch.cli",
            "--config",
            str(config),
            "--state-dir",
            str(state),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_restored_files_come_back_intact_and_are_not_quarantined_again(tmp_path: Path) -> None:
    root, staging, state = tmp_path / "photos", tmp_path / "staging", tmp_path / "state"
    root.mkdir()
    staging.mkdir()
    config = write_config(tmp_path / "config.toml", settle=SETTLE)
    photo = jpeg(rgb_photo("astronaut"))
    h, w = rgb_photo("astronaut").shape[:2]
    smaller = jpeg(cv2.resize(rgb_photo("astronaut"), (w * 2 // 3, h * 2 // 3)), 75)
    daemon = DaemonProcess(state, config, [root])
    try:
        daemon.wait_started()
        arrive(root / "photo.jpg", photo, mode=0o644, mtime_ns=KEEPER_MTIME_NS, staging=staging)
        daemon.wait_outcome(root / "photo.jpg")
        arrive(root / "copy.jpg", photo, mode=0o640, mtime_ns=COPY_MTIME_NS, staging=staging)
        arrive(root / "small.jpg", smaller, mode=0o600, mtime_ns=COPY_MTIME_NS, staging=staging)
        for name, tier in (("copy.jpg", "exact"), ("small.jpg", "duplicate")):
            outcome = daemon.wait_outcome(root / name)
            assert (outcome["tier"], outcome["action"]) == (tier, "quarantine"), outcome
            assert not (root / name).exists()

        listed = dupwatch(config, state, "quarantine", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        entries = {
            Path(e["original_path"]).name: e for e in map(json.loads, listed.stdout.splitlines())
        }
        assert set(entries) == {"copy.jpg", "small.jpg"}
        assert {e["duplicate_of"] for e in entries.values()} == {str(root / "photo.jpg")}
        assert (entries["copy.jpg"]["tier"], entries["small.jpg"]["tier"]) == ("exact", "duplicate")
        text = dupwatch(config, state, "quarantine", "list")
        assert text.returncode == 0 and text.stdout.count(f"copy of {root / 'photo.jpg'}") == 2

        for name, data, mode in (("copy.jpg", photo, 0o640), ("small.jpg", smaller, 0o600)):
            restored = dupwatch(config, state, "restore", str(entries[name]["id"]))
            assert restored.returncode == 0, restored.stderr
            back = (root / name).lstat()
            assert (root / name).read_bytes() == data
            assert (stat.S_IMODE(back.st_mode), back.st_mtime_ns) == (mode, COPY_MTIME_NS)
            # The daemon sees it arrive again and leaves it: the owner said it is not a copy.
            again = daemon.wait_outcome(root / name, count=2)
            assert again["event"] == "file_processed"
            assert again["action"] in ("none", "log"), again
            assert "moved" not in again

        time.sleep(4 * SETTLE)
        assert (root / "copy.jpg").read_bytes() == photo
        assert (root / "small.jpg").read_bytes() == smaller
        assert len(daemon.outcomes(root / "copy.jpg")) == 2
        assert daemon.proc.poll() is None
        with open_store(state) as store:
            for name in ("photo.jpg", "copy.jpg", "small.jpg"):
                record = store.file_by_path(root / name)
                assert record is not None and record.status is FileStatus.INDEXED, name
            states = sorted(e.state.value for e in store.journal_entries())
            assert states == [JournalState.RESTORED.value] * 2
        empty = dupwatch(config, state, "quarantine", "list", "--json")
        assert empty.returncode == 0 and empty.stdout == ""
        code, _ = daemon.stop()
        assert code == 0
    finally:
        daemon.close()
