"""The watcher: settled photo paths from watchdog events and reconciliation walks.

inotify gives latency, reconciliation gives correctness. Each local root has its own watchdog
observer whose handler only filters and enqueues; one settle thread hands over complete files;
one walk thread reconciles roots at start-up, every ``rescan_interval``, after an observer
restart or an inotify overflow, and for directories that arrive; the known files of a directory
that leaves (moved out of the tree) are reported missing from there too; network roots are walked
every ``poll_interval`` instead of watched. A supervisor thread restarts dead observers, keeps
the per-root sentinel (a vanished, remounted or emptied root pauses that root), and gives up
(``healthy`` turns False) when observers keep dying.

Threads that call back: ``on_settled`` and ``on_gone`` from the settle thread, ``on_missing``
from the walk thread, ``on_root_state`` and ``on_unhealthy`` from the supervisor thread. All
must be quick and thread-safe (put work into a queue).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from watchdog.events import FileSystemEventHandler

from dupwatch.filters import PathFilter, absolute_root, root_of
from dupwatch.observers import FilteringHandler
from dupwatch.reconcile import KnownFiles, LastWalk, reconcile
from dupwatch.records import StatKey
from dupwatch.roots import RootSentinel, max_user_watches
from dupwatch.rootwatch import RootHealth, WatchedRoot, WatcherSettings
from dupwatch.settle import HandOver, Settler

__all__ = ["RootHealth", "Watcher", "WatcherHealth", "WatcherSettings"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class WatcherHealth:
    healthy: bool
    roots: tuple[RootHealth, ...]
    pending: int  # paths still settling
    handed_over: int


class Watcher:
    """Watches ``roots`` and hands complete, stable photo files to ``on_settled(path, stat)``.

    ``known`` (the store's view) lets walks hand over only new or changed files and report
    missing ones through ``on_missing(root, paths)``; without it the watcher compares each walk
    with the previous one, so the first walk hands over everything.
    """

    def __init__(
        self,
        roots: Sequence[Path],
        settings: WatcherSettings,
        on_settled: HandOver,
        *,
        known: KnownFiles | None = None,
        on_missing: Callable[[Path, Sequence[Path]], None] | None = None,
        on_gone: Callable[[Path], None] | None = None,
        on_root_state: Callable[[Path, bool, str | None], None] | None = None,
        on_unhealthy: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.path_filter = PathFilter(
            settings.include_extensions, settings.ignore, settings.quarantine_dir_name
        )
        self._last_walk: LastWalk | None = None
        if known is None:
            self._last_walk = known = LastWalk()
        self._known: KnownFiles = known
        self._on_settled = on_settled
        self._on_missing = on_missing
        self._on_unhealthy = on_unhealthy
        self._roots: dict[Path, WatchedRoot] = {}
        for path in dict.fromkeys(absolute_root(r) for r in roots):
            sentinel = RootSentinel(path, self._knows_files(path))
            self._roots[path] = WatchedRoot(
                path, settings, sentinel, self._make_handler, self.request_reconcile, on_root_state
            )
        self._settler = Settler(
            settings.settle_seconds,
            self._hand_over,
            on_gone=on_gone,
            may_report=self._may_report,
            # Long enough for the sentinel to notice an emptied root before deletions count.
            gone_delay=settings.settle_seconds + 2 * settings.health_interval,
            remember=settings.remember_handed_over,
        )
        self._lock = threading.Lock()
        self._walk_requests: dict[Path, str] = {}  # root or subtree -> reason
        self._gone_directories: set[Path] = set()
        self._wake_walker = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._healthy = True

    # --- public API ---

    def start(self) -> None:
        """Check the roots, start the observers and threads, and queue the start-up walks."""
        self._settler.start()
        limit = max_user_watches()
        for root in self._roots.values():
            root.start(limit, self._stopping.is_set)
            self.request_reconcile(root.path, "startup")
        for name, target in (
            ("dupwatch-walker", self._walker),
            ("dupwatch-supervisor", self._supervise),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every thread and observer this watcher started."""
        self._stopping.set()
        self._wake_walker.set()
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.1, deadline - time.monotonic())

        # First the settle thread, so a walk blocked on handing over findings lets go.
        self._settler.stop(left())
        for thread in self._threads:
            thread.join(left())
        for root in self._roots.values():
            root.stop(left())

    def request_reconcile(self, path: Path | None = None, reason: str = "requested") -> None:
        """Walk ``path`` (a root, or a directory below one) soon; every root if None."""
        targets = list(self._roots) if path is None else [absolute_root(path)]
        with self._lock:
            for target in targets:
                self._walk_requests.setdefault(target, reason)
        self._wake_walker.set()

    def root_available(self, root: Path) -> bool:
        """False while the sentinel keeps ``root`` paused (missing, remounted, emptied)."""
        state = self._roots.get(absolute_root(root))
        return state is not None and state.available

    @property
    def healthy(self) -> bool:
        """False once observers kept dying; the daemon should then exit non-zero."""
        return self._healthy and self._settler.is_alive()

    def health(self) -> WatcherHealth:
        return WatcherHealth(
            self.healthy,
            tuple(r.health() for r in self._roots.values()),
            self._settler.pending_count,
            self._settler.handed_over,
        )

    # --- event sink (called from watchdog's dispatch thread: enqueue only) ---

    def file_changed(self, path: Path) -> None:
        self._settler.notify(path)

    def file_gone(self, path: Path) -> None:
        self._settler.notify_gone(path)

    def directory_arrived(self, path: Path) -> None:
        # watchdog may not watch a moved-in directory, and files can land before its watch.
        self.request_reconcile(path, "directory_arrived")

    def directory_gone(self, path: Path) -> None:
        # Its files get no events of their own; the store, read on the walk thread, knows them.
        with self._lock:
            self._gone_directories.add(path)
        self._wake_walker.set()

    # --- internals ---

    def _make_handler(self, root: Path) -> FileSystemEventHandler:
        return FilteringHandler(root, self.path_filter, self)

    def _knows_files(self, root: Path) -> Callable[[], bool]:
        def knows() -> bool:
            return next(iter(self._known.paths_under(root)), None) is not None

        return knows

    def _hand_over(self, path: Path, found: StatKey) -> None:
        root = root_of(path, self._roots)
        if root is None or not _no_symlink_between(root, path):
            # A stale watch on a directory moved out of the tree, or a directory swapped for a
            # symlink: the path leads outside the roots.
            log.warning("settled_outside_root", path=path)
            return
        if self._last_walk is not None:
            self._last_walk.record(path, found)
        self._on_settled(path, found)

    def _may_report(self, path: Path) -> bool:
        root = root_of(path, self._roots)
        return root is not None and self._roots[root].available

    def _supervise(self) -> None:
        next_check = 0.0
        while not self._stopping.wait(min(self.settings.health_interval, 0.25)):
            now = time.monotonic()
            for root in self._roots.values():
                try:
                    if now >= next_check and self._healthy and not root.check_health():
                        self._give_up(root.path)
                    reason = root.due_walk(now)
                    if reason is not None:
                        self.request_reconcile(root.path, reason)
                except Exception:
                    log.exception("supervisor_failed", root=root.path)
            if now >= next_check:
                next_check = now + self.settings.health_interval

    def _give_up(self, root: Path) -> None:
        self._healthy = False
        if self._on_unhealthy is not None:
            try:
                self._on_unhealthy(f"{root}: observer_died")
            except Exception:
                log.exception("unhealthy_consumer_failed")

    def _walker(self) -> None:
        while not self._stopping.is_set():
            self._wake_walker.wait(1.0)
            with self._lock:
                requests = dict(self._walk_requests)
                self._walk_requests.clear()
                gone = sorted(self._gone_directories)
                self._gone_directories.clear()
                self._wake_walker.clear()
            for directory in gone:
                try:
                    self._directory_gone(directory)
                except Exception:
                    log.exception("directory_gone_failed", path=directory)
            for target, reason in requests.items():
                if self._stopping.is_set():
                    return
                try:
                    self._walk(target, reason)
                except Exception:
                    log.exception("reconcile_failed", path=target, reason=reason)

    def _directory_gone(self, directory: Path) -> None:
        root_path = root_of(directory, self._roots)
        if root_path is None or os.path.lexists(directory):
            return  # back already (or replaced): events and walks see what is there now
        root = self._roots[root_path]
        missing = [
            p
            for p in self._known.paths_under(directory)
            if self.path_filter.wanted_file(p, root_path)
        ]
        log.info("directory_gone", root=root_path, path=directory, missing=len(missing))
        self._report_missing(root, missing)

    def _walk(self, target: Path, reason: str) -> None:
        root_path = root_of(target, self._roots)
        if root_path is None:
            return
        root = self._roots[root_path]
        if not root.available:
            log.info("reconcile_skipped", root=root.path, reason=reason, paused=root.reason)
            return
        subtree = target != root.path
        local = not root.polled
        result = reconcile(
            root.path,
            self.path_filter,
            self._known,
            lambda p, k: self._settler.offer(p, k, trust_ctime=local),
            strict=local,
            start=target if subtree else None,
            should_stop=self._stopping.is_set,
        )
        if not subtree:
            root.walked()
        log.info(
            "reconcile_finished",
            root=root.path,
            path=target,
            reason=reason,
            files=result.files,
            changed=result.changed,
            missing=len(result.missing),
            unreadable=len(result.unreadable),
            duration_ms=round(result.seconds * 1000),
        )
        self._report_missing(root, result.missing)

    def _report_missing(self, root: WatchedRoot, missing: Sequence[Path]) -> None:
        # Missing files are reported only if the root still looks right after the walk.
        if missing and root.available and root.sentinel.check() is None:
            self._settler.forget(missing)
            if self._last_walk is not None:
                self._last_walk.forget(missing)
            if self._on_missing is not None:
                try:
                    self._on_missing(root.path, missing)
                except Exception:
                    log.exception("missing_consumer_failed", root=root.path)


def _no_symlink_between(root: Path, path: Path) -> bool:
    """True if no directory between ``root`` and ``path`` is a symlink (the root may be one)."""
    expected = Path(os.path.realpath(root)) / path.parent.relative_to(root)
    return Path(os.path.realpath(path.parent)) == expected
