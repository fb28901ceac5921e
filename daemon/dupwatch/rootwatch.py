"""One watched root: its mode (inotify or walks only), observer, sentinel state and timers.

The watcher owns one ``WatchedRoot`` per root and drives it from its supervisor thread:
``check_health`` applies the sentinel (pausing and resuming the root, logging each change
once) and restarts a dead observer, ``due_walk`` says when the next reconciliation is due.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from watchdog.events import FileSystemEventHandler

from dupwatch.config import DEFAULT_EXTENSIONS
from dupwatch.filters import DEFAULT_QUARANTINE_DIR
from dupwatch.observers import RootObserver
from dupwatch.roots import (
    SYSCTL_FIX,
    RootSentinel,
    count_directories,
    filesystem_type,
    is_network_filesystem,
)

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
    # Versions handed over that a repeated event or walk offer need not hand over again. Only
    # a saving: the pipeline skips a file the store already has unchanged. About 650 bytes
    # each: at 20,000 this was most of the daemon's memory growth in a 20,000-file soak.
    remember_handed_over: int = 2_000


@dataclass(frozen=True, slots=True)
class RootHealth:
    root: Path
    mode: str  # "inotify" or "poll"
    available: bool
    reason: str | None  # why the root is paused
    watch_limit_short: bool
    last_reconcile: float | None  # wall-clock seconds
    restarts: int
    overflows: int


class WatchedRoot:
    """State and upkeep of one root. Methods run on the watcher's supervisor thread, except
    ``overflowed`` (watchdog's reader thread) and ``walked`` (the walk thread)."""

    def __init__(
        self,
        path: Path,
        settings: WatcherSettings,
        sentinel: RootSentinel,
        make_handler: Callable[[Path], FileSystemEventHandler],
        request_walk: Callable[[Path, str], None],
        on_state: Callable[[Path, bool, str | None], None] | None,
    ) -> None:
        self.path = path
        self.settings = settings
        self.sentinel = sentinel
        self._make_handler = make_handler
        self._request_walk = request_walk
        self._on_state = on_state
        self.polled = False
        self.observer: RootObserver | None = None
        self.available = True
        self.reason: str | None = None
        self.watch_limit_short = False
        self.next_walk = 0.0  # monotonic
        self.last_walk: float | None = None  # wall clock
        self.overflow_at: float | None = None
        self.overflows = 0
        self.restarts = 0
        self._recent_restarts: list[float] = []

    def start(self, watch_limit: int | None, should_stop: Callable[[], bool]) -> None:
        """Pick the mode, check the sentinel and the watch limit, start watching."""
        self.polled = self.settings.force_polling or (
            self.settings.detect_network_mounts
            and is_network_filesystem(filesystem_type(self.path))
        )
        reason = self.sentinel.check()
        if reason is not None:
            self._set_available(False, reason)
        elif not self.polled:
            if watch_limit is not None:
                self._check_watch_limit(watch_limit, should_stop)
            self._start_observer()
        self.next_walk = time.monotonic() + self.interval()
        log.info("watch_started", root=self.path, mode=self.mode)

    def stop(self, timeout: float) -> None:
        if self.observer is not None:
            self.observer.stop(timeout)
            self.observer = None

    @property
    def mode(self) -> str:
        return "poll" if self.polled else "inotify"

    def interval(self) -> float:
        """Seconds between full walks: short where inotify cannot (fully) cover the root."""
        if self.polled or self.watch_limit_short:
            return self.settings.poll_interval
        return self.settings.rescan_interval

    def overflowed(self) -> None:
        # On watchdog's inotify reader thread: only note it; the supervisor walks.
        self.overflows += 1
        self.overflow_at = time.monotonic()

    def walked(self) -> None:
        self.last_walk = time.time()
        self.next_walk = time.monotonic() + self.interval()

    def check_health(self) -> bool:
        """Apply the sentinel and restart a dead observer; False once restarts are exhausted."""
        reason = self.sentinel.check()
        if reason is None and not self.available:
            self._set_available(True, None)
            # The old watch may follow a renamed directory or an unmounted filesystem.
            return self.restart("root_returned", count=False)
        if reason is not None and self.available:
            self._set_available(False, reason)
        if not self.available or self.polled:
            return True
        if self.observer is None or not self.observer.alive():
            return self.restart("observer_died")
        return True

    def due_walk(self, now: float) -> str | None:
        """The reason a full walk is due now (an overflow or the timer), or None."""
        if not self.available:
            return None
        overflow_at = self.overflow_at
        if overflow_at is not None and now - overflow_at >= self.settings.overflow_rescan_delay:
            self.overflow_at = None
            log.warning("inotify_overflow", root=self.path)
            return "overflow"
        if now >= self.next_walk:
            self.next_walk = now + self.interval()
            return "timer"
        return None

    def restart(self, reason: str, *, count: bool = True) -> bool:
        """Replace the observer and walk the root; False if it died too often to go on."""
        if count:
            now = time.monotonic()
            window = self.settings.restart_window
            self._recent_restarts = [t for t in self._recent_restarts if now - t < window]
            self._recent_restarts.append(now)
            self.restarts += 1
            if len(self._recent_restarts) > self.settings.max_restarts:
                log.error(
                    "watcher_unhealthy",
                    root=self.path,
                    reason=reason,
                    restarts=len(self._recent_restarts),
                )
                return False
        if self.observer is not None:
            self.observer.stop()
            self.observer = None
        if not self.polled:
            self._start_observer()
        log.warning("watcher_restarted", root=self.path, reason=reason)
        self._request_walk(self.path, reason)
        return True

    def health(self) -> RootHealth:
        return RootHealth(
            self.path,
            self.mode,
            self.available,
            self.reason,
            self.watch_limit_short,
            self.last_walk,
            self.restarts,
            self.overflows,
        )

    def _check_watch_limit(self, limit: int, should_stop: Callable[[], bool]) -> None:
        needed = count_directories(self.path, should_stop)
        # Other programs of the same user share the limit, so leave them some room.
        if needed > limit * 0.9:
            self.watch_limit_short = True
            log.warning(
                "inotify_watch_limit_low",
                root=self.path,
                directories=needed,
                max_user_watches=limit,
                fix=SYSCTL_FIX,
                fallback="reconciliation every poll_interval",
            )

    def _start_observer(self) -> None:
        observer = RootObserver(self.path, self._make_handler(self.path), self.overflowed)
        try:
            observer.start()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EMFILE):
                # Out of inotify watches or instances: walking is all that is left.
                log.warning("watch_failed", root=self.path, error=str(exc), fallback="poll")
                self.polled = True
            else:
                log.warning("watch_failed", root=self.path, error=str(exc))
            return
        self.observer = observer

    def _set_available(self, available: bool, reason: str | None) -> None:
        self.available, self.reason = available, reason
        if available:
            log.info("root_available", root=self.path)
        else:
            log.warning("root_unavailable", root=self.path, reason=reason)
        if self._on_state is not None:
            try:
                self._on_state(self.path, available, reason)
            except Exception:
                log.exception("root_state_consumer_failed", root=self.path)
