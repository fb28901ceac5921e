"""watchdog observers for one root each: handlers only filter and enqueue, overflow is signalled.

An exception escaping a handler would end watchdog's dispatch thread and with it all delivery,
so the handler catches everything. watchdog notices an inotify queue overflow (IN_Q_OVERFLOW)
but tells handlers nothing; the observer here wraps watchdog's inotify reader so an overflow
reaches the watcher, which then reconciles the root. Where that reader is not available (other
platforms, other watchdog versions) the observer still works and the timed reconciliation
covers overflows.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from dupwatch.filters import PathFilter

log = structlog.get_logger(__name__)

# Reads (IN_OPEN, IN_ACCESS, IN_CLOSE_NOWRITE) are left out: the pipeline reading every file
# would otherwise flood the queue with events about its own work.
EVENT_TYPES: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileDeletedEvent,
    # A directory moved out of the tree arrives only as this (inotify cannot say where it went),
    # with no event for the files inside it.
    DirDeletedEvent,
]

try:
    from watchdog.observers.inotify import InotifyEmitter
    from watchdog.observers.inotify_c import InotifyEvent, InotifyFD

    _OVERFLOW_SIGNAL = hasattr(InotifyFD, "handle_event") and hasattr(
        InotifyEvent, "is_queue_overflow"
    )
except (ImportError, OSError):  # not Linux
    _OVERFLOW_SIGNAL = False


class EventSink(Protocol):
    """Where the handler puts what it saw; every method must return at once."""

    def file_changed(self, path: Path) -> None: ...

    def file_gone(self, path: Path) -> None: ...

    def directory_arrived(self, path: Path) -> None: ...

    def directory_gone(self, path: Path) -> None: ...


def _path(raw: bytes | str) -> Path | None:
    return Path(os.fsdecode(raw)) if raw else None


class FilteringHandler(FileSystemEventHandler):
    """Turns watchdog events for one root into sink calls; never raises."""

    def __init__(self, root: Path, path_filter: PathFilter, sink: EventSink) -> None:
        super().__init__()
        self._root = root
        self._filter = path_filter
        self._sink = sink

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._route(event)
        except Exception:
            log.exception("watch_event_failed", root=self._root)

    def _route(self, event: FileSystemEvent) -> None:
        src = _path(event.src_path)
        dest = _path(event.dest_path)
        if isinstance(event, DirCreatedEvent | DirMovedEvent):
            arrived = dest if isinstance(event, DirMovedEvent) else src
            if arrived is not None and self._filter.wanted_dir(arrived, self._root):
                self._sink.directory_arrived(arrived)
        elif isinstance(event, DirDeletedEvent):
            # The root's own deletion is the sentinel's to judge (an unmounted share).
            if src is not None and src != self._root and self._filter.wanted_dir(src, self._root):
                self._sink.directory_gone(src)
        elif isinstance(event, FileMovedEvent):
            if src is not None and self._filter.wanted_file(src, self._root):
                self._sink.file_gone(src)
            if dest is not None and self._filter.wanted_file(dest, self._root):
                self._sink.file_changed(dest)
        elif isinstance(event, FileDeletedEvent):
            if src is not None and self._filter.wanted_file(src, self._root):
                self._sink.file_gone(src)
        elif (
            not event.is_directory and src is not None and self._filter.wanted_file(src, self._root)
        ):
            self._sink.file_changed(src)


if _OVERFLOW_SIGNAL:

    class _SignallingInotifyFD(InotifyFD):
        def __init__(self, on_overflow: Callable[[], None]) -> None:
            super().__init__()
            self._on_overflow = on_overflow

        def handle_event(self, event: InotifyEvent) -> None:
            if event.is_queue_overflow:
                try:
                    self._on_overflow()
                except Exception:
                    log.exception("overflow_signal_failed")
            super().handle_event(event)

    class _InotifyObserver(BaseObserver):
        """watchdog's InotifyObserver with a reader that reports queue overflows."""

        def __init__(self, on_overflow: Callable[[], None]) -> None:
            self.inotify_fd = _SignallingInotifyFD(on_overflow)
            self.inotify_fd.start()
            super().__init__(InotifyEmitter, inotify_fd=self.inotify_fd)

        def on_thread_stop(self) -> None:
            super().on_thread_stop()
            self.inotify_fd.stop()
            self.inotify_fd.join(5.0)


class RootObserver:
    """One recursive watchdog observer over one root."""

    def __init__(
        self,
        root: Path,
        handler: FileSystemEventHandler,
        on_overflow: Callable[[], None],
    ) -> None:
        self.root = root
        self.signals_overflow = _OVERFLOW_SIGNAL
        self._observer: Any
        if _OVERFLOW_SIGNAL:
            self._observer = _InotifyObserver(on_overflow)
        else:
            self._observer = Observer()
        self._observer.schedule(handler, os.fspath(root), recursive=True, event_filter=EVENT_TYPES)

    def start(self) -> None:
        """Start watching; raises OSError (ENOSPC: watch limit, EMFILE: instance limit)."""
        try:
            self._observer.start()
        except BaseException:
            self.stop()
            raise

    def alive(self) -> bool:
        """True while the dispatcher, every emitter and the inotify reader all run."""
        observer = self._observer
        if not observer.is_alive():
            return False
        if not observer.emitters or not all(e.is_alive() for e in observer.emitters):
            return False
        reader = getattr(observer, "inotify_fd", None)
        return reader is None or bool(reader.is_alive())

    def stop(self, timeout: float = 5.0) -> None:
        observer = self._observer
        try:
            observer.stop()
            if observer.is_alive():
                observer.join(timeout)
        except Exception:
            # A half-dead observer must not keep the daemon from restarting it or exiting.
            log.exception("observer_stop_failed", root=self.root)
        reader = getattr(observer, "inotify_fd", None)
        if reader is not None and reader.is_alive():
            try:
                reader.stop()
                reader.join(timeout)
            except Exception:
                log.exception("observer_stop_failed", root=self.root)
