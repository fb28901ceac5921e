"""A watcher in its own process, for tests that must SIGSTOP it (the inotify overflow case).

Usage: python watcher_child.py ROOT SETTLE_SECONDS RESCAN_INTERVAL
Starts watching when a line arrives on stdin (so the parent can time sysctl changes to the
creation of the inotify instance), prints "ready" once watching, then one line per settled
file: "settled <hex of the path bytes>".
Logs go to stderr as JSON lines. Stops on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from dupwatch.logs import configure_logging
from dupwatch.records import StatKey
from dupwatch.watcher import Watcher, WatcherSettings


def main() -> None:
    root, settle, rescan = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    configure_logging("info", "json", stream=sys.stderr)
    out_lock = threading.Lock()

    def settled(path: Path, _stat: StatKey) -> None:
        with out_lock:
            sys.stdout.write(f"settled {os.fsencode(path).hex()}\n")
            sys.stdout.flush()

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    settings = WatcherSettings(
        settle_seconds=settle,
        rescan_interval=rescan,
        poll_interval=rescan,
        health_interval=0.2,
        overflow_rescan_delay=0.5,
    )
    watcher = Watcher([root], settings, settled)
    sys.stdin.readline()
    watcher.start()
    try:
        with out_lock:
            sys.stdout.write("ready\n")
            sys.stdout.flush()
        done.wait(120)
    finally:
        watcher.stop()


if __name__ == "__main__":
    main()
