"""Settling: hand a file over only once it is complete and stable, exactly once per version.

Events and walk findings are hints that a path may have changed. One worker thread keeps a
pending entry per path and hands the path over when it is a non-empty regular file (not a
symlink), has had no event for ``settle_seconds``, and two ``lstat`` samples taken
``settle_seconds`` apart agree on (size, mtime_ns, ctime_ns, dev, inode). Writers that take
longer (slow ``cp``, Samba's pre-sized files, ``rsync --inplace``) keep producing events or
changing samples, so their file waits until it is final. A path handed over with the same
stat before is not handed over again; a changed file is.

Deletions are delayed the same way and reported only if the path is still absent, so a
burst of deletions from an unmounting share reaches the root sentinel first.
"""

from __future__ import annotations

import heapq
import itertools
import os
import queue
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import structlog

from dupwatch.records import StatKey

log = structlog.get_logger(__name__)

HandOver = Callable[[Path, StatKey], None]

# In-flight walk findings: a walk of a large library blocks here instead of filling memory.
_MAX_OFFERS_IN_FLIGHT = 1024


@dataclass(slots=True)
class _Pending:
    gone: bool  # waiting to confirm a deletion rather than a new version
    last_event: float
    sample: StatKey | None
    sample_at: float
    due: float


def sample(path: Path) -> StatKey | None:
    """lstat ``path``; None unless it is a non-empty regular file (symlinks are not)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        return None
    return StatKey.from_stat(st)


def _exists(path: Path) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError:
        # Unreadable is not gone: a permission or I/O error must never look like a deletion.
        return True
    return True


class Settler:
    """One worker thread turning change hints into settled, complete files.

    ``hand_over(path, stat)`` and ``on_gone(path)`` are called from the worker thread only;
    they should be quick (put into a queue). Exceptions they raise are logged and do not stop
    the worker. ``may_report(path)`` is asked just before either call; when it says no (the
    root is paused) the finding is dropped, and the reconciliation after the root returns
    finds it again.
    """

    def __init__(
        self,
        settle_seconds: float,
        hand_over: HandOver,
        *,
        on_gone: Callable[[Path], None] | None = None,
        may_report: Callable[[Path], bool] | None = None,
        gone_delay: float | None = None,
        remember: int = 20_000,
    ) -> None:
        if settle_seconds <= 0:
            raise ValueError("settle_seconds must be greater than 0")
        self.settle_seconds = settle_seconds
        self._hand_over = hand_over
        self._on_gone = on_gone
        self._may_report = may_report or (lambda _path: True)
        self._gone_delay = gone_delay if gone_delay is not None else settle_seconds
        self._remember = remember
        self._inbox: queue.SimpleQueue[tuple[str, Path, StatKey | None, bool]] = queue.SimpleQueue()
        self._offer_slots = threading.BoundedSemaphore(_MAX_OFFERS_IN_FLIGHT)
        self._pending: dict[Path, _Pending] = {}
        self._heap: list[tuple[float, int, Path]] = []
        self._seq = itertools.count()
        # Recently handed-over versions; bounded, so the consumer must also tolerate a repeat.
        self._handed: OrderedDict[Path, StatKey] = OrderedDict()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dupwatch-settler", daemon=True)
        self.handed_over = 0

    # --- called from any thread ---

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._inbox.put(("wake", Path(), None, False))
        if self._thread.is_alive():
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def notify(self, path: Path) -> None:
        """An event touched ``path``: (re)start its quiet period. Never blocks."""
        self._inbox.put(("event", path, None, False))

    def notify_gone(self, path: Path) -> None:
        """An event says ``path`` was deleted or moved away. Never blocks."""
        self._inbox.put(("gone", path, None, False))

    def forget(self, paths: Iterable[Path]) -> None:
        """These paths were found missing: if they return unchanged, hand them over again."""
        for path in paths:
            self._inbox.put(("forget", path, None, False))

    def offer(self, path: Path, found: StatKey, *, trust_ctime: bool) -> None:
        """A walk found ``path`` new or changed; blocks while too many findings are in flight.

        With ``trust_ctime`` (local filesystems, where ctime comes from this machine's clock)
        a file whose ctime is older than the settle time has provably not changed for that
        long, so one confirming sample is enough. Network clocks may differ, so there the
        file waits for two samples like any other.
        """
        while not self._offer_slots.acquire(timeout=0.5):
            if self._stopping.is_set():
                return
        self._inbox.put(("offer", path, found, trust_ctime))

    # --- the worker ---

    def _run(self) -> None:
        while not self._stopping.is_set():
            timeout = 1.0
            if self._heap:
                timeout = min(timeout, max(0.0, self._heap[0][0] - time.monotonic()))
            try:
                item = self._inbox.get(timeout=timeout)
            except queue.Empty:
                item = None
            # Drain a bounded batch so an event storm cannot starve the due checks.
            batch = 0
            while item is not None:
                self._guarded(self._receive, *item)
                batch += 1
                if batch >= 5000:
                    break
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    item = None
            now = time.monotonic()
            while self._heap and self._heap[0][0] <= now and not self._stopping.is_set():
                due, _, path = heapq.heappop(self._heap)
                entry = self._pending.get(path)
                if entry is not None and entry.due == due:
                    self._guarded(self._check, path, entry)
                now = time.monotonic()

    def _guarded(self, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            # The worker must survive anything one path can do to it.
            log.exception("settle_failed", path=args[1] if len(args) > 1 else None)

    def _schedule(self, path: Path, entry: _Pending, due: float) -> None:
        entry.due = due
        heapq.heappush(self._heap, (due, next(self._seq), path))

    def _receive(self, kind: str, path: Path, found: StatKey | None, trust_ctime: bool) -> None:
        now = time.monotonic()
        if kind == "wake":
            return
        if kind == "forget":
            self._handed.pop(path, None)
            return
        if kind == "offer":
            self._offer_slots.release()
            self._receive_offer(path, found, trust_ctime, now)
            return
        entry = self._pending.get(path)
        if kind == "gone":
            if entry is None or entry.gone:
                entry = _Pending(True, now, None, now, now)
                self._pending[path] = entry
            else:
                # A version was settling: the deletion wins only if the path stays absent.
                entry.gone = True
            self._schedule(path, entry, now + self._gone_delay)
            return
        # An event: the first sample is taken now, the confirming one after a quiet period.
        current = sample(path)
        if entry is None:
            entry = _Pending(False, now, current, now, now)
            self._pending[path] = entry
        entry.gone = False
        entry.last_event = now
        entry.sample = current
        entry.sample_at = now
        self._schedule(path, entry, now + self.settle_seconds)

    def _receive_offer(
        self, path: Path, found: StatKey | None, trust_ctime: bool, now: float
    ) -> None:
        if path in self._pending or found is None:
            return  # events are already settling it
        if self._handed.get(path) == found:
            return
        if trust_ctime and time.time_ns() - found.ctime_ns >= self.settle_seconds * 1e9:
            current = sample(path)
            if current == found:
                self._deliver(path, current)
                return
            found = current
        entry = _Pending(False, float("-inf"), found, now, now)
        self._pending[path] = entry
        self._schedule(path, entry, now + self.settle_seconds)

    def _check(self, path: Path, entry: _Pending) -> None:
        now = time.monotonic()
        if entry.gone:
            del self._pending[path]
            if _exists(path):
                self._receive("event", path, None, False)
            else:
                self._handed.pop(path, None)
                self._report_gone(path)
            return
        quiet_until = entry.last_event + self.settle_seconds
        if now < quiet_until:
            self._schedule(path, entry, quiet_until)
            return
        current = sample(path)
        if current is None:
            # Vanished, emptied, or not a regular file: a later event or walk brings it back.
            del self._pending[path]
            return
        if current == entry.sample and now - entry.sample_at >= self.settle_seconds * 0.999:
            del self._pending[path]
            self._deliver(path, current)
            return
        entry.sample = current
        entry.sample_at = now
        self._schedule(path, entry, now + self.settle_seconds)

    def _deliver(self, path: Path, current: StatKey) -> None:
        if self._handed.get(path) == current:
            return
        if not self._may_report(path):
            log.debug("settled_dropped_root_paused", path=path)
            return
        try:
            self._hand_over(path, current)
        except Exception:
            log.exception("settled_consumer_failed", path=path)
            return
        self.handed_over += 1
        self._handed[path] = current
        self._handed.move_to_end(path)
        while len(self._handed) > self._remember:
            self._handed.popitem(last=False)

    def _report_gone(self, path: Path) -> None:
        if self._on_gone is None or not self._may_report(path):
            return
        try:
            self._on_gone(path)
        except Exception:
            log.exception("gone_consumer_failed", path=path)
