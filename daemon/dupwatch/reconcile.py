"""Reconciliation: walk a root and compare what is on disk with what is known.

inotify gives latency, this walk gives correctness: it runs at start-up, on a timer, after an
observer restart and after a queue overflow, and it is the only source of changes on network
mounts. It uses ``os.scandir`` and ``lstat`` only, never follows a symlink (to a file or a
directory), skips ignored names without descending, survives unreadable directories and
entries that vanish mid-walk (each logged), and guards against directory loops from bind
mounts by remembering (st_dev, st_ino) of every directory entered.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from dupwatch.filters import PathFilter
from dupwatch.records import StatKey

log = structlog.get_logger(__name__)


class KnownFiles(Protocol):
    """What the store knows, as the walk needs it. Called from the watcher's walk thread, so
    an implementation over SQLite uses its own read connection."""

    def stat_of(self, path: Path) -> StatKey | None:
        """The stat recorded for ``path``, or None if it is not known."""
        ...

    def paths_under(self, root: Path) -> Iterable[Path]:
        """Every path known (and not already gone) below ``root``."""
        ...


def is_changed(known: StatKey | None, found: StatKey, *, strict: bool) -> bool:
    """True if ``found`` is new or differs from ``known`` in a way that may mean new bytes.

    Device numbers are left out: they can change across reboots and remounts. ``strict``
    (local filesystems) also compares ctime and inode; on network filesystems those are not
    stable across remounts (CIFS ``noserverino``), so only size and mtime count there.
    """
    if known is None:
        return True
    if (known.size, known.mtime_ns) != (found.size, found.mtime_ns):
        return True
    return strict and (known.ctime_ns, known.inode) != (found.ctime_ns, found.inode)


@dataclass(slots=True)
class WalkStats:
    """What one walk saw; filled in as the walk proceeds."""

    files: int = 0
    directories: int = 0
    vanished: int = 0
    unreadable: list[Path] = field(default_factory=list)
    stopped: bool = False

    @property
    def complete(self) -> bool:
        """True if every directory was read and the walk was not stopped part way."""
        return not self.unreadable and not self.stopped


def walk_files(
    root: Path,
    path_filter: PathFilter,
    *,
    stats: WalkStats | None = None,
    start: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[Path, StatKey]]:
    """Yield (path, stat) for every wanted regular file below ``start`` (default ``root``).

    Names are judged relative to ``root``. Paths are ``str``-based with surrogate escapes
    for names that are not valid UTF-8, exactly as ``os.scandir`` returns them.
    """
    stats = stats if stats is not None else WalkStats()
    top = start if start is not None else root
    if not path_filter.wanted_dir(top, root):
        return
    try:
        # The root itself may be a symlink (a share mounted elsewhere); nothing below it is.
        top_st = top.stat() if top == root else top.lstat()
    except OSError as exc:
        log.warning("walk_unreadable", path=top, error=exc.strerror)
        stats.unreadable.append(top)
        return
    if not stat.S_ISDIR(top_st.st_mode):
        return
    seen_dirs = {(top_st.st_dev, top_st.st_ino)}
    stack = [os.fspath(top)]
    while stack:
        if should_stop is not None and should_stop():
            stats.stopped = True
            return
        directory = stack.pop()
        stats.directories += 1
        try:
            with os.scandir(directory) as entries:
                children = list(entries)
        except FileNotFoundError:
            stats.vanished += 1
            log.info("walk_vanished", path=Path(directory))
            continue
        except OSError as exc:
            log.warning("walk_unreadable", path=Path(directory), error=exc.strerror)
            stats.unreadable.append(Path(directory))
            continue
        for entry in children:
            if path_filter.ignored_name(entry.name):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                stats.vanished += 1
                log.info("walk_vanished", path=Path(entry.path))
                continue
            except OSError as exc:
                log.warning("walk_stat_failed", path=Path(entry.path), error=exc.strerror)
                continue
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                path = Path(entry.path)
                if (st.st_dev, st.st_ino) in seen_dirs:
                    log.warning("walk_loop_skipped", path=path)
                    continue
                if path_filter.wanted_dir(path, root):
                    seen_dirs.add((st.st_dev, st.st_ino))
                    stack.append(entry.path)
            elif stat.S_ISREG(mode) and path_filter.wanted_extension(entry.name):
                path = Path(entry.path)
                if path_filter.wanted_file(path, root):
                    stats.files += 1
                    yield path, StatKey.from_stat(st)
            # Symlinks, FIFOs, sockets and devices are never photos, whatever their name.


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """The outcome of reconciling one root (or one subtree of it)."""

    root: Path
    files: int
    changed: int
    missing: tuple[Path, ...]  # known but not found (never below an unreadable directory)
    unreadable: tuple[Path, ...]
    complete: bool
    seconds: float


def reconcile(
    root: Path,
    path_filter: PathFilter,
    known: KnownFiles,
    on_changed: Callable[[Path, StatKey], None],
    *,
    strict: bool = True,
    start: Path | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Reconciliation:
    """Walk ``root`` (or ``start`` below it), call ``on_changed`` for new or changed files,
    and list the known files that were not found.

    Missing files are listed only when the walk ran to its end, and never below a directory
    that could not be read: such a file is not missing, only unseen. A subtree walk
    (``start``) reports no missing files.
    """
    began = time.monotonic()
    stats = WalkStats()
    seen: set[Path] = set()
    changed = 0
    for path, found in walk_files(
        root, path_filter, stats=stats, start=start, should_stop=should_stop
    ):
        seen.add(path)
        if is_changed(known.stat_of(path), found, strict=strict):
            changed += 1
            on_changed(path, found)
    missing: tuple[Path, ...] = ()
    if not stats.stopped and start is None:
        unseen = set(stats.unreadable)
        missing = tuple(
            p
            for p in known.paths_under(root)
            if p not in seen
            and path_filter.wanted_file(p, root)
            and not any(parent in unseen for parent in p.parents)
        )
    return Reconciliation(
        root=root,
        files=stats.files,
        changed=changed,
        missing=missing,
        unreadable=tuple(stats.unreadable),
        complete=stats.complete,
        seconds=time.monotonic() - began,
    )


class LastWalk:
    """A ``KnownFiles`` built from the previous walk, for when no store is attached."""

    def __init__(self) -> None:
        self._files: dict[Path, StatKey] = {}

    def stat_of(self, path: Path) -> StatKey | None:
        return self._files.get(path)

    def paths_under(self, root: Path) -> Iterable[Path]:
        return [p for p in self._files if root in p.parents]

    def record(self, path: Path, found: StatKey) -> None:
        self._files[path] = found

    def forget(self, paths: Iterable[Path]) -> None:
        for path in paths:
            self._files.pop(path, None)
