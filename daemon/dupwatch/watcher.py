"""The watcher: settled photo paths from watchdog events and reconciliation walks.

inotify gives latency, reconciliation gives correctness. Each local root has its own watchdog
observer whose handler only filters and enqueues; one settle thread hands over complete files;
one walk thread reconciles roots at start-up, every ``rescan_interval``, after an observer
restart or an inotify overflow, and for directories that arrive; network roots are walked
every ``poll_interval`` instead of watched. A supervisor thread restarts dead observers, keeps
the per-root sentinel (a vanished, remounted or emptied root pauses that root), and gives up
(``healthy`` turns False) when observers keep dying.

Threads that call back: ``on_settled`` and ``on_gone`` from the settle thread, ``on_missing``
from the walk thread, ``on_root_state`` and ``on_unhealthy`` from the supervisor thread. All
must be quick and thread-safe (put work into a queue).
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from dupwatch.config import DEFAULT_EXTENSIONS
from dupwatch.filters import DEFAULT_QUARANTINE_DIR, PathFilter, root_of
from dupwatch.filters import absolute_root as _absolute_root
from dupwatch.observers import FilteringHandler, RootObserver
from dupwatch.reconcile import KnownFiles, LastWalk, reconcile
from dupwatch.records import StatKey
from dupwatch.roots import (
    SYSCTL_FIX,
    RootSentinel,
    count_directories,
    filesystem_type,
    is_network_filesystem,
    max_user_watches,
)
from dupwatch.settle import HandOver, Settler

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class WatcherSettings:
    """Everything the watcher needs; field names follow the ``[watch]`` config section."""

    include_extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    ignore: tuple[str, ...] = ()  # extra globs: per name, or per relative path if they hold "/"
    quarantine_dir_name: str = DEFAULT_QUARANTINE_DIR
    settle_seconds: float = 5.0
    rescan_interval: float = 6 * 3600
    poll_interval: float = 600.0
    force_polling: bool = False  # walk every root, never inotify
    detect_network_mounts: bool = True
    health_interval: float = 5.0  # liveness and sentinel checks
    overflow_rescan_delay: float = 1.0  # wait for the burst to end before walking
    max_restarts: int = 5  # observer restarts per restart_window before giving up
    restart_window: float = 600.0
    remember_handed_over: int = 20_000


@dataclass(slots=True)
class _Root:
    path: Path
    polled: bool
    sentinel: RootSentinel
    observer: RootObserver | None = None
    available: bool = True
    reason: str | None = None
    watch_limit_short: bool = False
    next_walk: float = 0.0  # monotonic
    last_walk: float | None = None  # wall clock
    overflow_at: float | None = None
    restarts: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RootHealth:
    root: Path
    mode: str  # "inotify" or "poll"
    available: bool
    reason: str | None
    watch_limit_short: bool
    last_reconcile: float | None  # wall-clock seconds


@dataclass(frozen=True, slots=True)
class WatcherHealth:
    healthy: bool
    roots: tuple[RootHealth, ...]
    restarts: int
    overflows: int
    pending: int
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
        self._on_root_state = on_root_state
        self._on_unhealthy = on_unhealthy
        self._roots: dict[Path, _Root] = {}
        for raw in dict.fromkeys(_absolute_root(r) for r in roots):
            self._roots[raw] = _Root(raw, False, RootSentinel(raw, self._knows_files(raw)))
        self._settler = Settler(
            settings.settle_seconds,
            self._hand_over,
            on_gone=on_gone,
            may_report=self._may_report,
            gone_delay=settings.settle_seconds + 2 * settings.health_interval,
            remember=settings.remember_handed_over,
        )
        self._lock = threading.Lock()
        self._walk_requests: dict[Path, str] = {}  # root or subtree -> reason
        self._wake_walker = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._healthy = True
        self.overflows = 0
        self.restarts = 0

    # --- public API ---

    def start(self) -> None:
        """Check the roots, start the observers and threads, and queue the start-up walk."""
        self._settler.start()
        limit = max_user_watches()
        for root in self._roots.values():
            root.polled = self.settings.force_polling or (
                self.settings.detect_network_mounts
                and is_network_filesystem(filesystem_type(root.path))
            )
            reason = root.sentinel.check()
            if reason is not None:
                self._set_available(root, False, reason)
            elif not root.polled:
                if limit is not None:
                    self._check_watch_limit(root, limit)
                self._start_observer(root)
            root.next_walk = time.monotonic() + self._interval(root)
            log.info("watch_started", root=root.path, mode="poll" if root.polled else "inotify")
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
        # First the settle thread, so a walk blocked on handing over findings lets go.
        self._settler.stop(max(0.1, deadline - time.monotonic()))
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        for root in self._roots.values():
            if root.observer is not None:
                root.observer.stop(max(0.1, deadline - time.monotonic()))
                root.observer = None

    def request_reconcile(self, path: Path | None = None, reason: str = "requested") -> None:
        """Walk ``path`` (a root, or a directory below one) soon; every root if None."""
        targets = list(self._roots) if path is None else [_absolute_root(path)]
        with self._lock:
            for target in targets:
                self._walk_requests.setdefault(target, reason)
        self._wake_walker.set()

    def root_available(self, root: Path) -> bool:
        """False while the sentinel keeps ``root`` paused (missing, remounted, emptied)."""
        state = self._roots.get(_absolute_root(root))
        return state is not None and state.available

    @property
    def healthy(self) -> bool:
        """False once observers kept dying; the daemon should then exit non-zero."""
        return self._healthy and self._settler.is_alive()

    def health(self) -> WatcherHealth:
        roots = tuple(
            RootHealth(
                r.path,
                "poll" if r.polled else "inotify",
                r.available,
                r.reason,
                r.watch_limit_short,
                r.last_walk,
            )
            for r in self._roots.values()
        )
        return WatcherHealth(
            self.healthy,
            roots,
            self.restarts,
            self.overflows,
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

    # --- internals ---

    def _knows_files(self, root: Path) -> Callable[[], bool]:
        def knows() -> bool:
            return next(iter(self._known.paths_under(root)), None) is not None

        return knows

    def _hand_over(self, path: Path, found: StatKey) -> None:
        if self._last_walk is not None:
            self._last_walk.record(path, found)
        self._on_settled(path, found)

    def _may_report(self, path: Path) -> bool:
        root = root_of(path, self._roots)
        return root is not None and self._roots[root].available

    def _check_watch_limit(self, root: _Root, limit: int) -> None:
        needed = count_directories(root.path, self._stopping.is_set)
        # Other programs of the same user share the limit, so leave them some room.
        if needed > limit * 0.9:
            root.watch_limit_short = True
            log.warning(
                "inotify_watch_limit_low",
                root=root.path,
                directories=needed,
                max_user_watches=limit,
                fix=SYSCTL_FIX,
                fallback="reconciliation every poll_interval",
            )

    def _start_observer(self, root: _Root) -> None:
        handler = FilteringHandler(root.path, self.path_filter, self)
        observer = RootObserver(root.path, handler, lambda: self._overflowed(root))
        try:
            observer.start()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EMFILE):
                # Out of inotify watches or instances: walking is all that is left.
                log.warning("watch_failed", root=root.path, error=str(exc), fallback="poll")
                root.polled = True
            else:
                log.warning("watch_failed", root=root.path, error=str(exc))
            return
        root.observer = observer

    def _overflowed(self, root: _Root) -> None:
        # Called on watchdog's inotify reader thread: note it, the supervisor walks.
        self.overflows += 1
        root.overflow_at = time.monotonic()

    def _set_available(self, root: _Root, available: bool, reason: str | None) -> None:
        root.available, root.reason = available, reason
        if available:
            log.info("root_available", root=root.path)
        else:
            log.warning("root_unavailable", root=root.path, reason=reason)
        if self._on_root_state is not None:
            try:
                self._on_root_state(root.path, available, reason)
            except Exception:
                log.exception("root_state_consumer_failed", root=root.path)

    def _interval(self, root: _Root) -> float:
        polled = root.polled or root.watch_limit_short
        return self.settings.poll_interval if polled else self.settings.rescan_interval

    def _supervise(self) -> None:
        next_check = 0.0
        while not self._stopping.wait(min(self.settings.health_interval, 0.25)):
            try:
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + self.settings.health_interval
                    self._check_health()
                self._check_timers(now)
            except Exception:
                log.exception("supervisor_failed")

    def _check_health(self) -> None:
        for root in self._roots.values():
            reason = root.sentinel.check()
            if reason is None and not root.available:
                self._set_available(root, True, None)
                # The old watch may follow a renamed directory or an unmounted filesystem.
                self._restart(root, "root_returned", count=False)
            elif reason is not None and root.available:
                self._set_available(root, False, reason)
            if not root.available or root.polled or not self._healthy:
                continue
            if root.observer is None or not root.observer.alive():
                self._restart(root, "observer_died")

    def _check_timers(self, now: float) -> None:
        for root in self._roots.values():
            if not root.available:
                continue
            overflow_at = root.overflow_at
            if overflow_at is not None and now - overflow_at >= self.settings.overflow_rescan_delay:
                root.overflow_at = None
                log.warning("inotify_overflow", root=root.path)
                self.request_reconcile(root.path, "overflow")
            if now >= root.next_walk:
                root.next_walk = now + self._interval(root)
                self.request_reconcile(root.path, "timer")

    def _restart(self, root: _Root, reason: str, *, count: bool = True) -> None:
        if count:
            now = time.monotonic()
            root.restarts = [t for t in root.restarts if now - t < self.settings.restart_window]
            root.restarts.append(now)
            self.restarts += 1
            if len(root.restarts) > self.settings.max_restarts:
                self._give_up(root, reason)
                return
        if root.observer is not None:
            root.observer.stop()
            root.observer = None
        if not root.polled:
            self._start_observer(root)
        log.warning("watcher_restarted", root=root.path, reason=reason)
        self.request_reconcile(root.path, reason)

    def _give_up(self, root: _Root, reason: str) -> None:
        if not self._healthy:
            return
        self._healthy = False
        log.error("watcher_unhealthy", root=root.path, reason=reason, restarts=len(root.restarts))
        if self._on_unhealthy is not None:
            try:
                self._on_unhealthy(f"{root.path}: {reason}")
            except Exception:
                log.exception("unhealthy_consumer_failed")

    def _walker(self) -> None:
        while not self._stopping.is_set():
            self._wake_walker.wait(1.0)
            with self._lock:
                requests = dict(self._walk_requests)
                self._walk_requests.clear()
                self._wake_walker.clear()
            for target, reason in requests.items():
                if self._stopping.is_set():
                    return
                try:
                    self._walk(target, reason)
                except Exception:
                    log.exception("reconcile_failed", path=target, reason=reason)

    def _walk(self, target: Path, reason: str) -> None:
        root_path = root_of(target, self._roots)
        if root_path is None:
            return
        root = self._roots[root_path]
        if not root.available:
            log.info("reconcile_skipped", root=root.path, reason=reason, paused=root.reason)
            return
        subtree = target != root.path
        if not subtree:
            root.next_walk = time.monotonic() + self._interval(root)
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
            root.last_walk = time.time()
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
        # Missing files are reported only if the root still looks right after the walk.
        if result.missing and root.sentinel.check() is None and root.available:
            if self._last_walk is not None:
                self._last_walk.forget(result.missing)
            if self._on_missing is not None:
                try:
                    self._on_missing(root.path, result.missing)
                except Exception:
                    log.exception("missing_consumer_failed", root=root.path)


def absolute_roots(roots: Iterable[Path]) -> list[Path]:
    """Roots as the watcher keys them (absolute, symlinks kept)."""
    return [_absolute_root(r) for r in roots]
