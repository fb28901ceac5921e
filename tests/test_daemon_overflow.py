"""A frozen daemon (SIGSTOP) while thousands of files arrive: none is lost when it continues.

While the process is stopped the kernel's inotify queue fills past
``fs.inotify.max_queued_events`` and drops the rest; the daemon must notice the overflow and
walk the roots. The reconciliation timer is an hour here, so only overflow detection can find
the files in time.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from daemon_harness import DaemonProcess, open_store, png, write_config

from dupwatch.records import FileStatus

SETTLE = 0.5
DIRECTORIES = 10


def max_queued_events() -> int:
    return int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())


def distinct_pngs(count: int, seed: int) -> list[bytes]:
    """Small valid PNGs of random pixels, every one different."""
    rng = np.random.default_rng(seed)
    images = [png(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(count)]
    assert len({hashlib.sha256(i).digest() for i in images}) == count
    return images


def arrive_in_bulk(root: Path, images: list[bytes], chunks: int) -> tuple[list[Path], int]:
    """Write every file in ``chunks`` round-robin rounds under an rsync-style temporary name,
    then rename each into place; returns the paths and a lower bound on the inotify events
    (round-robin writes are never merged by the kernel)."""
    dirs = [root / f"import-{i:02d}" for i in range(DIRECTORIES)]
    finals = [dirs[i % DIRECTORIES] / f"img-{i:05d}.png" for i in range(len(images))]
    temps = [p.with_name(f".{p.name}.Tq3x9a") for p in finals]
    outs = [t.open("wb") for t in temps]
    try:
        for round_ in range(chunks):
            for out, data in zip(outs, images, strict=True):
                step = -(-len(data) // chunks)
                out.write(data[round_ * step : (round_ + 1) * step])
                out.flush()
    finally:
        for out in outs:
            out.close()
    for temp, final in zip(temps, finals, strict=True):
        temp.rename(final)
    # create + one modify per round + close_write + moved_from + moved_to
    return finals, len(images) * (chunks + 4)


def run_overflow(tmp_path: Path, count: int, chunks: int, timeout: float) -> None:
    root, state = tmp_path / "photos", tmp_path / "state"
    root.mkdir()
    config = write_config(tmp_path / "config.toml", settle=SETTLE, rescan="1h")
    images = distinct_pngs(count, seed=count)
    daemon = DaemonProcess(state, config, [root])
    stopped = False
    try:
        # Watched directories: a directory created while the daemon is stopped would be walked
        # when its creation is read, finding its files without any overflow.
        for i in range(DIRECTORIES):
            (root / f"import-{i:02d}").mkdir()
        daemon.wait_started()
        time.sleep(2 * SETTLE)
        os.kill(daemon.proc.pid, signal.SIGSTOP)
        stopped = True
        paths, events = arrive_in_bulk(root, images, chunks)
        os.kill(daemon.proc.pid, signal.SIGCONT)
        stopped = False
        assert events > max_queued_events(), "not enough events to overflow the queue"
        wanted = {str(p) for p in paths}

        def all_seen() -> bool:
            seen = {e["path"] for e in daemon.named("file_processed") + daemon.named("file_failed")}
            return wanted <= seen

        daemon.wait_for(all_seen, timeout, f"all {count} files processed")
        assert daemon.named("inotify_overflow"), "the overflow went unnoticed"
        time.sleep(4 * SETTLE)
        outcomes = daemon.named("file_processed") + daemon.named("file_failed")
        assert len(outcomes) == count, "some files were processed more than once"
        assert {e["tier"] for e in outcomes} <= {"unique", "similar"}
        with open_store(state) as store:
            assert store.file_counts()[FileStatus.INDEXED] == count
        code, took = daemon.stop()
        assert code == 0 and took < 10
    finally:
        if stopped:
            os.kill(daemon.proc.pid, signal.SIGCONT)
        daemon.close()


def test_files_arriving_while_the_daemon_is_stopped_past_an_inotify_overflow_are_all_found(
    tmp_path: Path,
) -> None:
    # 300 files written in many interleaved chunks: well past the queue limit, quick to embed.
    count = 300
    chunks = max_queued_events() // count + 8
    run_overflow(tmp_path, count, chunks, timeout=180)


@pytest.mark.slow
def test_five_thousand_files_created_while_the_daemon_is_stopped_are_all_found(
    tmp_path: Path,
) -> None:
    run_overflow(tmp_path, 5000, chunks=1, timeout=1200)
