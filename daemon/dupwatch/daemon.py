"""The long-running service: the watcher feeds a queue, one loop drains it through the pipeline.

Threads only enqueue (settled files, files gone, paths missing from a walk, root health); the
main loop does every state change, in order, so the store, the index and the quarantine are
only ever changed from one place. SIGTERM finishes the file in flight and exits 0.
"""

from __future__ import annotations

import itertools
import queue
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO, TypeAlias

import structlog

from dupwatch.config import Config
from dupwatch.errors import StoreError
from dupwatch.filters import root_of
from dupwatch.notify import Notifier
from dupwatch.records import FileStatus, StatKey, Tier
from dupwatch.runtime import Services
from dupwatch.status import mark_stopped, publish
from dupwatch.store import Store
from dupwatch.store.records import FileRecord
from dupwatch.watcher import Watcher, WatcherSettings

log = structlog.get_logger(__name__)

# How often the loop wakes with nothing to do: watchdog pings, snapshot rebuilds, health.
_TICK = 1.0
_PROGRESS_EVERY = 10.0
_STATUS_EVERY = 10.0
# A walk that would mark more than this many files, or this share of a root, as gone at once
# looks like an unmounted or emptied share, not like an owner tidying up.
MASS_GONE_FILES = 500
MASS_GONE_SHARE = 0.05
# ...counting every file marked gone in this window, however the disappearances were seen.
MASS_GONE_WINDOW = 600.0
# Deletions seen one event at a time are gathered until a root has been quiet this long, so an
# emptied share is judged as one change rather than file by file.
GONE_QUIET = 2.0


@dataclass(frozen=True, slots=True)
class _Settled:
    path: Path
    stat: StatKey


@dataclass(frozen=True, slots=True)
class _Missing:
    root: Path
    paths: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class _Gone:
    path: Path


_Item: TypeAlias = _Settled | _Missing | _Gone


class StoreKnownFiles:
    """The store's view of the disk, as the watcher's reconciliation walk needs it."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def stat_of(self, path: Path) -> StatKey | None:
        record = self._store.file_by_path(path)
        if record is None or record.status not in (FileStatus.INDEXED, FileStatus.FAILED):
            return None
        return record.stat

    def paths_under(self, root: Path) -> Iterable[Path]:
        statuses = (FileStatus.INDEXED, FileStatus.FAILED)
        return [r.path for r in self._store.files_under(root, statuses)]


def watcher_settings(config: Config) -> WatcherSettings:
    watch = config.watch
    return WatcherSettings(
        include_extensions=watch.include_extensions,
        ignore=watch.ignore,
        quarantine_dir_name=config.quarantine.dir_name,
        settle_seconds=watch.settle_seconds,
        rescan_interval=watch.rescan_interval,
        poll_interval=watch.poll_interval,
        force_polling=watch.force_polling,
    )


class Progress:
    """``scan_progress`` events while a backlog drains, and a status line on a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty()
        self._started = time.monotonic()
        self._last = 0.0
        self.done = 0

    def tick(self, backlog: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if backlog == 0 and not force:
            self._started, self.done = now, 0
            return
        if not force and now - self._last < (1.0 if self._tty else _PROGRESS_EVERY):
            return
        self._last = now
        elapsed = max(now - self._started, 1e-6)
        rate = self.done / elapsed
        eta = backlog / rate if rate > 0 else None
        if self._tty:
            eta_text = "" if eta is None else f", about {eta / 60:.0f} min left"
            self._stream.write(
                f"\rindexing: {self.done} done, {backlog} queued, {rate:.1f} files/s{eta_text}  "
            )
            self._stream.flush()
        else:
            log.info(
                "scan_progress",
                done=self.done,
                queued=backlog,
                rate=round(rate, 2),
                eta_s=None if eta is None else round(eta),
            )


class Daemon:
    """Runs until SIGTERM/SIGINT; returns the process exit code."""

    def __init__(
        self, services: Services, notifier: Notifier | None = None, progress: Progress | None = None
    ) -> None:
        self._s = services
        self._notifier = notifier or Notifier()
        self._progress = progress or Progress()
        self._queue: queue.Queue[_Item] = queue.Queue()
        # Items taken from the queue whose settled files are being fingerprinted ahead.
        self._pending: deque[_Item] = deque()
        self._stop = threading.Event()
        self._unhealthy: str | None = None
        self._paused: dict[Path, str] = {}
        self._counters: Counter[str] = Counter()
        self._gone_batch: dict[Path, list[Path]] = {}
        self._gone_last: dict[Path, float] = {}
        self._gone_recent: dict[Path, deque[float]] = {}
        self._started_at = time.time()
        self._watcher = Watcher(
            services.roots,
            watcher_settings(services.config),
            lambda path, stat: self._queue.put(_Settled(path, stat)),
            known=StoreKnownFiles(services.store),
            on_missing=lambda root, paths: self._queue.put(_Missing(root, tuple(paths))),
            on_gone=lambda path: self._queue.put(_Gone(path)),
            on_root_state=self._root_state,
            on_unhealthy=self._watcher_failed,
        )

    # --- callbacks from watcher threads: record and return ---

    def _root_state(self, root: Path, available: bool, reason: str | None) -> None:
        if available:
            self._paused.pop(root, None)
        else:
            self._paused[root] = reason or "unavailable"

    def _watcher_failed(self, reason: str) -> None:
        self._unhealthy = reason
        self._stop.set()

    def request_stop(self, signum: int = signal.SIGTERM, _frame: FrameType | None = None) -> None:
        if not self._stop.is_set():
            log.info("daemon_stopping", signal=signal.Signals(signum).name)
        self._stop.set()

    # --- the loop ---

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        self._watcher.start()
        counts = self._s.store.file_counts()
        log.info(
            "daemon_started",
            roots=[str(r) for r in self._s.roots],
            indexed=counts[FileStatus.INDEXED],
            quarantined=counts[FileStatus.QUARANTINED],
            model_id=self._s.worker.model_id,
        )
        self._notifier.ready(status=f"watching {len(self._s.roots)} root(s)")
        ping_every = self._notifier.watchdog_interval()
        last_ping = last_status = 0.0
        try:
            while not self._stop.is_set():
                item = self._next_item()
                if item is not None:
                    self._handle(item)
                self._flush_gone(time.monotonic())
                self._s.pipeline.retry_deferred()
                self._progress.tick(self._backlog())
                self._s.index.maybe_rebuild()
                now = time.monotonic()
                if ping_every is not None and now - last_ping >= ping_every:
                    self._notifier.watchdog()
                    last_ping = now
                if now - last_status >= _STATUS_EVERY:
                    self._publish_status()
                    last_status = now
        finally:
            self._notifier.stopping()
            self._watcher.stop()
            try:
                self._publish_status()
                mark_stopped(self._s.store)
            except StoreError as exc:
                # Stopping because the store failed: say so once, not with a second error.
                log.warning("daemon_status_not_saved", error=str(exc))
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self._unhealthy is not None:
            log.error("daemon_stopped", reason=self._unhealthy, exit_code=1)
            return 1
        log.info("daemon_stopped", reason="signal", exit_code=0)
        return 0

    def _next_item(self) -> _Item | None:
        """The next item in arrival order, once the settled files behind it are being
        fingerprinted ahead (decisions stay in order; only the analysis runs early)."""
        if not self._pending:
            try:
                self._pending.append(self._queue.get(timeout=_TICK))
            except queue.Empty:
                return None
        ahead = self._s.worker.look_ahead
        while len(self._pending) <= ahead:
            try:
                self._pending.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for item in itertools.islice(self._pending, ahead + 1):
            if isinstance(item, _Settled) and not self._is_paused(item.path):
                self._s.worker.prefetch(item.path)
        return self._pending.popleft()

    def _backlog(self) -> int:
        return self._queue.qsize() + len(self._pending)

    def _handle(self, item: _Item) -> None:
        if isinstance(item, _Settled):
            if self._is_paused(item.path):
                return
            try:
                result = self._s.pipeline.process(item.path)
            finally:
                self._s.worker.forget(item.path)
            if result is not None:
                self._progress.done += 1
                self._counters["processed"] += 1
                self._counters["failed"] += result.tier is Tier.FAILED
                self._counters["quarantined"] += result.moved is not None
        elif isinstance(item, _Missing):
            self._mark_missing(item.root, item.paths)
        elif not self._is_paused(item.path):
            root = root_of(item.path, self._s.roots)
            if root is None:
                return
            self._gone_batch.setdefault(root, []).append(item.path)
            self._gone_last[root] = time.monotonic()

    def _flush_gone(self, now: float, *, force: bool = False) -> None:
        """Judge each root's gathered deletions once it has been quiet for a moment."""
        for root in list(self._gone_batch):
            if force or now - self._gone_last[root] >= GONE_QUIET:
                self._mark_missing(root, self._gone_batch.pop(root))

    def _publish_status(self) -> None:
        publish(
            self._s.store,
            started_at=self._started_at,
            queued=self._backlog(),
            counters=dict(self._counters),
            watcher=self._watcher.health(),
            index=self._s.index.stats(),
        )

    def _is_paused(self, path: Path) -> bool:
        root = root_of(path, self._paused)
        return root is not None

    def _mark_missing(self, root: Path, paths: Sequence[Path]) -> None:
        if root in self._paused:
            return
        # Only what would really change counts: a renamed file's record has moved with it.
        vanished = [(p, r) for p in paths if (r := self._vanished(p)) is not None]
        if not vanished:
            return
        known = sum(1 for _ in self._s.store.files_under(root, (FileStatus.INDEXED,)))
        recent = self._gone_recent.setdefault(root, deque())
        now = time.monotonic()
        while recent and now - recent[0] > MASS_GONE_WINDOW:
            recent.popleft()
        changing = len(vanished) + len(recent)
        if changing > MASS_GONE_FILES or changing > MASS_GONE_SHARE * max(known, 1) + 10:
            self._paused[root] = "mass_change"
            log.error(
                "mass_change_paused",
                root=root,
                missing=len(vanished),
                gone_recently=len(recent),
                known=known,
                hint="check the share is mounted; if the files were deleted on purpose, "
                "run `dupwatch forget-missing ROOT`, then restart dupwatch",
            )
            return
        for path, record in vanished:
            self._mark_gone(path, record)
            recent.append(now)

    def _vanished(self, path: Path) -> FileRecord | None:
        """The record of a file in place at ``path`` that is really not there any more."""
        record = self._s.store.file_by_path(path)
        # A quarantined file left its path on purpose; only files in place can go missing.
        if record is None or record.status not in (FileStatus.INDEXED, FileStatus.FAILED):
            return None
        if path.exists() or path.is_symlink():
            return None  # back again (or replaced): the walk or the watcher will hand it over
        return record

    def _mark_gone(self, path: Path, record: FileRecord) -> None:
        self._s.store.set_file_status(record.id, FileStatus.GONE)
        self._s.index.remove(record.id)
        self._s.hashes.remove(record.id)
        log.info("file_gone", path=path, file_id=record.id)
