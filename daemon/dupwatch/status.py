"""The running daemon's health, published in the store so ``dupwatch status`` can read it.

The daemon writes a small JSON document every few seconds; a reader in another process sees
it through SQLite's write-ahead log without ever blocking the daemon.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

from dupwatch.index import IndexStats
from dupwatch.store import Store
from dupwatch.watcher import WatcherHealth

STATUS_KEY = "daemon_status"
# Older than this and the daemon is considered stopped (it writes every few seconds).
STALE_AFTER = 120.0


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    pid: int
    started_at: float
    updated_at: float
    queued: int
    processed: int
    failed: int
    quarantined: int
    watcher_healthy: bool
    roots: list[dict[str, Any]]
    snapshot_items: int
    buffer_items: int
    rebuilding: bool


def publish(
    store: Store,
    *,
    started_at: float,
    queued: int,
    counters: dict[str, int],
    watcher: WatcherHealth,
    index: IndexStats,
) -> None:
    roots = [
        {
            "root": os.fsdecode(r.root),
            "mode": r.mode,
            "available": r.available,
            "reason": r.reason,
            "last_reconcile": r.last_reconcile,
        }
        for r in watcher.roots
    ]
    status = DaemonStatus(
        pid=os.getpid(),
        started_at=started_at,
        updated_at=time.time(),
        queued=queued + watcher.pending,
        processed=counters.get("processed", 0),
        failed=counters.get("failed", 0),
        quarantined=counters.get("quarantined", 0),
        watcher_healthy=watcher.healthy,
        roots=roots,
        snapshot_items=index.snapshot_items,
        buffer_items=index.buffer_items,
        rebuilding=index.rebuilding,
    )
    store.set_state(STATUS_KEY, json.dumps(asdict(status)))


def mark_stopped(store: Store) -> None:
    """Record a clean stop, so ``status`` does not report a stopped daemon as running."""
    raw = store.get_state(STATUS_KEY)
    if raw is None:
        return
    status = json.loads(raw)
    status["stopped_at"] = time.time()
    store.set_state(STATUS_KEY, json.dumps(status))


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def read_daemon_status(store: Store) -> str:
    """A few readable lines about the daemon, or why it seems not to be running."""
    raw = store.get_state(STATUS_KEY)
    if raw is None:
        return "daemon: has not run yet"
    fields = json.loads(raw)
    stopped_at = fields.pop("stopped_at", None)
    status = DaemonStatus(**fields)
    if stopped_at is not None:
        return f"daemon: stopped at {_when(stopped_at)}"
    if time.time() - status.updated_at > STALE_AFTER:
        return f"daemon: not running (last seen {_when(status.updated_at)})"
    lines = [
        f"daemon: running, pid {status.pid}, since {_when(status.started_at)}",
        f"  queue: {status.queued} waiting; this run: {status.processed} processed, "
        f"{status.quarantined} quarantined, {status.failed} failed",
        f"  watcher: {'healthy' if status.watcher_healthy else 'FAILING'}",
    ]
    for root in status.roots:
        state = "available" if root["available"] else f"PAUSED ({root['reason']})"
        lines.append(
            f"    {root['root']}: {root['mode']}, {state}, "
            f"last full walk {_when(root['last_reconcile'])}"
        )
    rebuilding = ", rebuilding" if status.rebuilding else ""
    lines.append(
        f"  search snapshot: {status.snapshot_items} files + {status.buffer_items} recent"
        f"{rebuilding}"
    )
    return "\n".join(lines)
