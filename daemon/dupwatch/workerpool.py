"""Several analysis workers behind one handle, with look-ahead fingerprinting.

Decisions are made one file at a time, in arrival order, because each file is compared with
every file before it. Fingerprinting a file (decode, hashes, embedding) needs nothing of the
files before it, so it can start while earlier files are still being searched, verified and
recorded: ``prefetch`` queues a file's fingerprint, and ``fingerprint`` later takes it if the
file still has the same bytes. Requests for the file being decided always go before look-ahead
work, so prefetching never delays a decision by more than the one fingerprint under way.
A file's decoded pixels stay in the worker that fingerprinted it, and the requests that need
them (verifications, embeddings of the image turned) go to that worker; one that no longer
holds them decodes the file's bytes again.

Each worker is an ``AnalysisWorker`` (its own process, memory limit, timeout and restart) driven
by a thread of this process; the threads only wait on pipes.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import structlog
from numpy.typing import NDArray

from dupwatch.images import FileBytes
from dupwatch.worker import AnalysisWorker, Fingerprint, Verified, WorkerSettings

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Look-ahead fingerprints waiting to be taken; beyond this, ``prefetch`` is a no-op.
MAX_PREFETCHED = 12
_AHEAD_PER_WORKER = 6
_URGENT, _AHEAD = 0, 1


def default_worker_count() -> int:
    """One worker per usable core, at most two: beyond that the in-order decisions are the
    bottleneck, and each worker holds its own copy of the model (~200 MB)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


@dataclass(order=True)
class _Task:
    priority: int
    sequence: int
    run: Callable[[AnalysisWorker], Any] = field(compare=False)
    future: Future[Any] = field(compare=False)
    worker: int | None = field(default=None, compare=False)  # only this one may run it


class _Schedule:
    """Tasks in priority order, with look-ahead work on at most ``ahead_limit`` workers at once.

    The file being decided waits for its verifications; with every worker busy with a
    fingerprint of a later file, they wait for one to finish first. A limit below the pool's
    size keeps a worker out of look-ahead work so that they start at once, at the cost of
    that worker's idle time.
    """

    def __init__(self, ahead_limit: int) -> None:
        self._tasks: list[_Task] = []
        self._changed = threading.Condition()
        self._ahead_running = 0
        self._ahead_limit = ahead_limit

    def put(self, task: _Task) -> None:
        with self._changed:
            self._tasks.append(task)
            self._changed.notify_all()

    def take(self, worker: int) -> _Task:
        """The first task in priority order that worker number ``worker`` may run now; waits
        for one."""
        with self._changed:
            while True:
                allowed = [
                    t
                    for t in self._tasks
                    if (t.priority != _AHEAD or self._ahead_running < self._ahead_limit)
                    and t.worker in (None, worker)
                ]
                if allowed:
                    task = min(allowed)
                    self._tasks.remove(task)
                    if task.priority == _AHEAD:
                        self._ahead_running += 1
                    return task
                self._changed.wait()

    def finished(self, task: _Task) -> None:
        if task.priority == _AHEAD:
            with self._changed:
                self._ahead_running -= 1
                self._changed.notify_all()


@dataclass(frozen=True, slots=True)
class _Prefetched:
    sha256: Future[str]
    fingerprint: Future[Fingerprint]


class AnalysisPool:
    """``size`` analysis workers serving fingerprint, verify and embed requests."""

    def __init__(self, settings: WorkerSettings, size: int = 1) -> None:
        if size < 1:
            raise ValueError("an analysis pool needs at least one worker")
        self._settings = settings
        self._workers = [AnalysisWorker(settings, number) for number in range(size)]
        # Every worker may fingerprint ahead: since glances settle most look-alikes in the
        # daemon, few files need a worker to verify (bench/RESULTS.md, "Daemon": a worker kept
        # free for them left it idle, 35 files/s against 47 with all of them). A verification
        # still goes before every look-ahead task not yet started.
        self._tasks = _Schedule(ahead_limit=size)
        self._sequence = itertools.count()
        self._threads: list[threading.Thread] = []
        self._prefetched: dict[Path, _Prefetched] = {}
        self._lock = threading.Lock()
        self.model_id = ""

    @property
    def size(self) -> int:
        return len(self._workers)

    @property
    def look_ahead(self) -> int:
        """How many files after the one being decided to fingerprint in the background.

        While a file is searched, verified and recorded, the workers need later files to
        fingerprint: several per worker keep them busy while the file being decided waits for
        a verification (each waiting fingerprint is ~40 KB here; its pixels stay in the
        worker, see ``worker.HeldPixels``).
        """
        return min(MAX_PREFETCHED, _AHEAD_PER_WORKER * self.size)

    def start(self) -> None:
        """Start every worker and wait until each has its model; ModelError if one cannot.

        The first worker starts alone: it may have to build the model cache the others read.
        """
        first, *rest = self._workers
        first.start()
        errors: list[BaseException] = []

        def start(worker: AnalysisWorker) -> None:
            try:
                worker.start()
            except BaseException as exc:  # re-raised below, in the caller's thread
                errors.append(exc)

        starters = [threading.Thread(target=start, args=(w,)) for w in rest]
        for thread in starters:
            thread.start()
        for thread in starters:
            thread.join()
        if errors:
            for worker in self._workers:
                worker.close()
            raise errors[0]
        self.model_id = first.model_id
        for number, worker in enumerate(self._workers):
            thread = threading.Thread(
                target=self._serve, args=(worker,), name=f"dupwatch-analysis-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        log.debug("analysis_pool_started", workers=self.size)

    def close(self) -> None:
        """Stop the workers first, so that no look-ahead on a slow file holds up a shutdown."""
        for worker in self._workers:
            worker.close()
        for _ in self._threads:
            self._tasks.put(_Task(2, next(self._sequence), _stop, Future()))
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        with self._lock:
            self._prefetched.clear()

    def _serve(self, worker: AnalysisWorker) -> None:
        while True:
            task = self._tasks.take(worker.number)
            if task.run is _stop:
                return
            try:
                if task.future.set_running_or_notify_cancel():
                    task.future.set_result(task.run(worker))
            except BaseException as exc:  # handed to whoever waits on the future
                task.future.set_exception(exc)
            finally:
                self._tasks.finished(task)

    def _submit(
        self, priority: int, run: Callable[[AnalysisWorker], T], worker: int | None = None
    ) -> Future[T]:
        future: Future[T] = Future()
        if not self._threads:
            raise RuntimeError("the analysis pool is not started")
        self._tasks.put(_Task(priority, next(self._sequence), run, future, worker))
        return future

    def _call(self, run: Callable[[AnalysisWorker], T], worker: int | None = None) -> T:
        return self._submit(_URGENT, run, worker).result()

    # --- the worker's requests ----------------------------------------------------------------

    def fingerprint(self, file: FileBytes) -> Fingerprint:
        """The fingerprint of ``file``: the prefetched one if it was made from these bytes."""
        with self._lock:
            ahead = self._prefetched.pop(file.path, None)
        # A look-ahead that has not started yet is dropped: this request goes first instead.
        if ahead is not None and not ahead.fingerprint.cancel():
            try:
                same_bytes = ahead.sha256.result() == file.sha256
            except Exception:
                same_bytes = False  # the look-ahead read failed; this read did not
            if same_bytes:
                return ahead.fingerprint.result()
        return self._call(lambda worker: worker.fingerprint(file))

    def verify_later(
        self,
        fingerprint: Fingerprint,
        file: FileBytes,
        known_path: Path,
        *,
        glance_known: bool = False,
    ) -> Future[Verified]:
        """``AnalysisWorker.verify`` of the fingerprinted ``file`` against ``known_path``,
        started as soon as the worker holding its pixels is free, ahead of look-ahead work;
        cancel the future if its answer is no longer needed."""
        framed = fingerprint.framed_vector is not None

        def run(worker: AnalysisWorker) -> Verified:
            return worker.verify(
                fingerprint.pixels, file, known_path, framed=framed, glance_known=glance_known
            )

        return self._submit(_URGENT, run, fingerprint.pixels.worker)

    def embed_variant(
        self, fingerprint: Fingerprint, file: FileBytes, variant: int
    ) -> NDArray[np.float32]:
        """The vector of the fingerprinted ``file`` turned by ``phash.DIHEDRAL[variant]``."""

        return self._call(
            lambda worker: worker.embed_variant(fingerprint.pixels, file, variant),
            fingerprint.pixels.worker,
        )

    # --- look-ahead ---------------------------------------------------------------------------

    def prefetch(self, path: Path) -> None:
        """Start reading and fingerprinting ``path`` in the background, if there is room.

        Nothing is decided from it: ``fingerprint`` uses it only for the same bytes.
        """
        with self._lock:
            if path in self._prefetched or len(self._prefetched) >= MAX_PREFETCHED:
                return
            sha256: Future[str] = Future()

            # Read by the worker itself: the bytes need not cross the pipe, and the daemon
            # reads each file once (for the decision), not twice.
            def run(worker: AnalysisWorker) -> Fingerprint:
                try:
                    digest = worker.read(path)
                except BaseException as exc:
                    sha256.set_exception(exc)
                    raise
                sha256.set_result(digest)
                return worker.fingerprint_read(path)

            self._prefetched[path] = _Prefetched(sha256, self._submit(_AHEAD, run))

    def forget(self, path: Path) -> None:
        """Drop a prefetched fingerprint nobody took (an exact copy, an unchanged file)."""
        with self._lock:
            ahead = self._prefetched.pop(path, None)
        if ahead is not None:
            ahead.fingerprint.cancel()


def _stop(_worker: AnalysisWorker) -> None:
    """Marker task: the serving thread returns."""


def looking_ahead(paths: Iterable[Path], pool: AnalysisPool) -> Iterator[Path]:
    """Yield ``paths`` in order while the next few are fingerprinted in the background."""
    window: list[Path] = []
    source = iter(paths)
    for path in source:
        window.append(path)
        pool.prefetch(path)
        if len(window) > pool.look_ahead:
            current = window.pop(0)
            yield current
            pool.forget(current)
    for current in window:
        yield current
        pool.forget(current)
