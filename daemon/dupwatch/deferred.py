"""Quarantine moves that failed for want of room or a writable disk, kept to be tried again.

A duplicate whose move failed looks unchanged afterwards, so nothing would ever examine it
again. Its file id is kept in the store's state table (a restart or the next scan retries it)
and retried on a backoff, 1 minute doubling to 1 hour; failures are reported by one error
line per interval, not one per file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import structlog

from dupwatch.store import Store

log = structlog.get_logger(__name__)

STATE_KEY = "quarantine_deferred"
FIRST_DELAY = 60.0
MAX_DELAY = 3600.0


class DeferredMoves:
    """The files whose quarantine is waiting for the disk, and when to try them again."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock
        self.delay = FIRST_DELAY
        self._next_try = 0.0  # at start-up, at once
        self._reported_at: float | None = None

    def ids(self) -> list[int]:
        saved = self._store.get_state(STATE_KEY)
        return [int(i) for i in json.loads(saved)] if saved else []

    def _save(self, ids: list[int]) -> None:
        self._store.set_state(STATE_KEY, json.dumps(ids))

    def add(self, file_id: int, path: object, error: str) -> None:
        """Keep ``file_id`` for a later try; the first failure of an interval is logged."""
        ids = self.ids()
        if file_id not in ids:
            ids.append(file_id)
            self._save(ids)
        now = self._clock()
        self._next_try = max(self._next_try, now + self.delay)
        if self._reported_at is None:
            self._reported_at = now
            log.error(
                "quarantine_unavailable",
                path=path,
                error=error,
                deferred=len(ids),
                retry_in_s=round(self.delay),
                hint="the duplicates stay in place and are moved once the disk has room",
            )
        else:
            log.debug("quarantine_deferred", path=path, error=error, deferred=len(ids))

    def due(self) -> bool:
        now = self._clock()
        if now < self._next_try:
            return False
        if not self.ids():
            self._next_try = now + FIRST_DELAY  # nothing waits: look again later, not each tick
            return False
        return True

    def take(self) -> list[int]:
        """The ids to try now (forgotten here; a failure adds them again)."""
        ids = self.ids()
        self._save([])
        self._reported_at = None
        return ids

    def settled(self, failed_again: bool) -> None:
        """After a retry: back off further if the disk still refuses, else start afresh."""
        self.delay = min(self.delay * 2, MAX_DELAY) if failed_again else FIRST_DELAY
        self._next_try = self._clock() + self.delay
