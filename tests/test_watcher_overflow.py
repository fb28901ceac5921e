"""inotify queue overflow: a stopped watcher process misses events, then finds every file.

watchdog drops overflowed events silently; the watcher learns of the overflow from the
inotify reader and reconciles the root. When the test runs as root it shrinks
fs.inotify.max_queued_events for the watcher's own inotify instance only (the limit is copied
when the instance is created; the old value is restored at once), so the overflow is certain
and the rescan timer is too long to help: only overflow detection can find the files.
Without root the queue may or may not overflow, and a short rescan interval covers it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

QUEUE_LIMIT = Path("/proc/sys/fs/inotify/max_queued_events")
CHILD = Path(__file__).with_name("watcher_child.py")
FILES = 5000


def _can_shrink_queue() -> bool:
    return os.geteuid() == 0 and os.access(QUEUE_LIMIT, os.W_OK)


def test_files_created_while_the_watcher_is_stopped_are_all_discovered(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    shrink = _can_shrink_queue()
    rescan = "3600" if shrink else "3"
    settled: set[bytes] = set()
    handovers: list[bytes] = []
    ready = threading.Event()
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(root), "0.3", rescan],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.PIPE,
    )
    stderr_lines: list[bytes] = []

    def read_stdout() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith(b"ready"):
                ready.set()
            elif line.startswith(b"settled "):
                path = bytes.fromhex(line.split()[1].decode())
                handovers.append(path)
                settled.add(path)

    def read_stderr() -> None:
        assert child.stderr is not None
        stderr_lines.extend(child.stderr)

    readers = [threading.Thread(target=read_stdout), threading.Thread(target=read_stderr)]
    for reader in readers:
        reader.start()
    old_limit = QUEUE_LIMIT.read_text() if shrink else None
    try:
        if shrink:
            QUEUE_LIMIT.write_text("256\n")
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
        assert ready.wait(30), b"".join(stderr_lines).decode(errors="replace")
        if old_limit is not None:
            QUEUE_LIMIT.write_text(old_limit)
            old_limit = None
        # Directories first, so their arrival walks are over before the burst and only the
        # overflow can lead the watcher to the files.
        for d in range(20):
            (root / f"d{d:02d}").mkdir()
        time.sleep(1.0)

        child.send_signal(signal.SIGSTOP)
        expected = set()
        data = b"\xff\xd8\xff\xe0" + os.urandom(200) + b"\xff\xd9"
        for i in range(FILES):
            path = root / f"d{i % 20:02d}" / f"IMG_{i:05d}.jpg"
            path.write_bytes(data)
            expected.add(os.fsencode(path))
        child.send_signal(signal.SIGCONT)

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not expected <= settled:
            time.sleep(0.2)
        assert len(expected & settled) == FILES
        time.sleep(1.0)
        assert settled == expected
        assert len(handovers) == FILES  # each file handed over exactly once
        if shrink:
            events = [_event(line) for line in stderr_lines]
            assert "inotify_overflow" in events, events
            assert "reconcile_finished" in events
    finally:
        if old_limit is not None:
            QUEUE_LIMIT.write_text(old_limit)
        if child.poll() is None:
            child.send_signal(signal.SIGCONT)
            child.terminate()
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
        for reader in readers:
            reader.join(10)


def _event(line: bytes) -> str:
    text = line.decode(errors="replace").strip()
    if text.startswith("<") and ">" in text:
        text = text.split(">", 1)[1]
    try:
        return str(json.loads(text).get("event"))
    except (ValueError, AttributeError):
        return ""
