"""Crash-safe quarantine: move duplicates aside, restore them, purge them when asked.

Modelled on the FreeDesktop Trash spec: one quarantine directory per root (so a move is a
rename), names that never overwrite, and a journal row written (synchronously) before the move
and completed after it. ``recover`` at start-up finishes or rolls back whatever a crash
interrupted by looking at the disk. Moves across filesystems copy, fsync, verify the sha256 and
only then unlink the source.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import structlog

from dupwatch import fsops
from dupwatch.errors import FileChanged, QuarantineError, RestoreRefused
from dupwatch.qlayout import Layout, Place, numbered
from dupwatch.records import JournalEntry, JournalState, StatKey, Tier
from dupwatch.recovery import Journal, Recovery, entry_fields, partial_name, restoring_name

log = structlog.get_logger(__name__)

__all__ = ["Journal", "Quarantine", "QuarantinedFile"]

_MAX_SUFFIX = 10_000


@dataclass(frozen=True, slots=True)
class QuarantinedFile:
    """A file in the quarantine, for listings: its journal entry, size and age."""

    entry: JournalEntry
    size: int | None  # None: missing from the quarantine directory
    age_seconds: float


class Quarantine:
    """Moves files into ``<root>/<dir_name>/`` and back, journalled and crash-safe."""

    def __init__(
        self,
        journal: Journal,
        roots: Sequence[Path],
        dir_name: str = ".dupwatch-quarantine",
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._journal = journal
        self._layout = Layout(roots, dir_name)
        self._clock = clock
        self._recovery = Recovery(journal, self._layout)
        # One move or restore at a time in this process: collisions between processes are
        # still caught by rename-without-replace.
        self._lock = threading.RLock()

    # --- moving in ---

    def move(
        self,
        path: Path,
        *,
        expected: StatKey,
        sha256: str,
        file_id: int | None,
        duplicate_of: int | None,
        tier: Tier,
        similarity: float | None,
        rule: str,
    ) -> JournalEntry:
        """Quarantine ``path`` if it is still the file described by ``expected``.

        Raises FileChanged (nothing moved) if it changed, vanished or its directory became a
        symlink; QuarantineError if the move could not be made safely (the file stays put).
        """
        source = self._layout.original(path)
        with self._lock, ExitStack() as stack:
            try:
                src_dir = stack.enter_context(fsops.open_dir(source.root, source.dirs))
            except (FileNotFoundError, NotADirectoryError) as exc:
                raise FileChanged(f"{path}: its directory is gone or is a symlink") from exc
            _check_identity(src_dir.fd, source, expected)
            target = self._layout.target(source)
            # The quarantine mirrors the modes of the directories it mirrors, minus
            # world-write, so it is no more (and no less) visible than the originals.
            modes = [mode & ~stat.S_IWOTH for mode in src_dir.modes]
            q_dir = stack.enter_context(
                fsops.open_dir(target.root, target.dirs, create_modes=modes)
            )
            target = target.renamed(_free_name(q_dir.fd, target.name))
            entry = self._journal.journal_intent(
                file_id=file_id,
                original_path=source.path,
                quarantine_path=target.path,
                sha256=sha256,
                duplicate_of=duplicate_of,
                tier=tier,
                similarity=similarity,
                rule=rule,
            )
            try:
                _check_identity(src_dir.fd, source, expected)
                self._transfer(entry, src_dir.fd, source, q_dir.fd, target, sha256)
            except BaseException:
                self._recovery.settle_failed_move(entry)
                raise
            self._journal.journal_set_state(entry.id, JournalState.DONE)
            done = self._refetch(entry)
        log.info("file_quarantined", **entry_fields(done))
        return done

    def _transfer(
        self, entry: JournalEntry, src_dir: int, source: Place, q_dir: int, target: Place, sha: str
    ) -> Place:
        try:
            target = self._rename_into(entry, src_dir, source.name, q_dir, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            return self._copy_across(entry, src_dir, source, q_dir, target, sha)
        fsops.fsync_dir(q_dir)
        fsops.fsync_dir(src_dir)
        return target

    def _rename_into(
        self, entry: JournalEntry, src_dir: int, name: str, q_dir: int, target: Place
    ) -> Place:
        """Rename without replacing; on a name taken meanwhile, journal the next free one."""
        base = entry.original_path.name
        for _ in range(_MAX_SUFFIX):
            try:
                fsops.rename_noreplace(src_dir, name, q_dir, target.name)
                return target
            except FileExistsError:
                target = target.renamed(_free_name(q_dir, base))
                self._journal.journal_update_quarantine_path(entry.id, target.path)
        raise QuarantineError(f"{target.path}: no free name in the quarantine")

    def _copy_across(
        self, entry: JournalEntry, src_dir: int, source: Place, q_dir: int, target: Place, sha: str
    ) -> Place:
        """The EXDEV path: copy, verify, rename into place, and only then unlink the source."""
        partial = partial_name(entry.id)
        expected = StatKey.from_stat(_lstat_regular(src_dir, source))
        fsops.copy_verified(src_dir, source.name, q_dir, partial, sha256=sha, expected=expected)
        target = self._rename_into(entry, q_dir, partial, q_dir, target)
        fsops.fsync_dir(q_dir)
        now = fsops.lstat(src_dir, source.name)
        if now is None:
            return target  # deleted meanwhile: the verified copy is now the only one, keep it
        if not expected.same_content_version(StatKey.from_stat(now)):
            # Rewritten since the copy: the owner replaced those bytes, so the copy goes.
            fsops.unlink(q_dir, target.name)
            fsops.fsync_dir(q_dir)
            raise FileChanged(f"{source.path}: changed while it was being copied")
        fsops.unlink(src_dir, source.name)
        fsops.fsync_dir(src_dir)
        return target

    # --- restoring ---

    def restore(self, entry_id: int) -> Path:
        """Put a quarantined file back where it came from; returns that path.

        Refuses (RestoreRefused) to overwrite anything, to follow a symlink, or to act on a
        journal row whose paths leave the roots; recreates missing parent directories.
        """
        with self._lock:
            entry = self._journal.journal_entry(entry_id)
            if entry is None:
                raise RestoreRefused(f"no quarantine entry {entry_id}")
            if entry.state is not JournalState.DONE:
                raise RestoreRefused(f"entry {entry_id} is {entry.state.value}, not quarantined")
            try:
                original = self._layout.original(entry.original_path)
                held = self._layout.quarantined(entry.quarantine_path)
            except QuarantineError as exc:
                raise RestoreRefused(f"entry {entry_id}: {exc}") from exc
            self._put_back(entry, original, held)
            self._recovery.mark_restored(entry)
        return original.path

    def _put_back(self, entry: JournalEntry, original: Place, held: Place) -> None:
        with ExitStack() as stack:
            try:
                q_dir = stack.enter_context(fsops.open_dir(held.root, held.dirs))
            except FileNotFoundError as exc:
                raise QuarantineError(f"{held.path}: missing from the quarantine") from exc
            except NotADirectoryError as exc:
                raise RestoreRefused(f"{held.path}: {exc.strerror} on the way") from exc
            _lstat_regular(q_dir.fd, held, missing=QuarantineError)
            # Recreate vanished directories with the modes their mirrors in the quarantine kept.
            mirrored = list(q_dir.modes[2:])
            modes = [mirrored[i] if i < len(mirrored) else 0o755 for i in range(len(original.dirs))]
            try:
                o_dir = stack.enter_context(
                    fsops.open_dir(original.root, original.dirs, create_modes=modes)
                )
            except NotADirectoryError as exc:
                raise RestoreRefused(f"{exc.filename}: {exc.strerror}") from exc
            except FileNotFoundError as exc:
                raise QuarantineError(f"{original.root}: the root is not available") from exc
            if fsops.lstat(o_dir.fd, original.name) is not None:
                raise RestoreRefused(f"{original.path}: a file already exists there")
            try:
                fsops.rename_noreplace(q_dir.fd, held.name, o_dir.fd, original.name)
            except FileExistsError as exc:
                raise RestoreRefused(f"{original.path}: a file already exists there") from exc
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                self._copy_back(entry, q_dir.fd, held, o_dir.fd, original)
                return
            fsops.fsync_dir(o_dir.fd)
            fsops.fsync_dir(q_dir.fd)

    def _copy_back(
        self, entry: JournalEntry, q_dir: int, held: Place, o_dir: int, original: Place
    ) -> None:
        """The EXDEV path of a restore; the renamed quarantined file marks it as in progress."""
        marker = restoring_name(entry.id)
        partial = partial_name(entry.id)
        fsops.rename_noreplace(q_dir, held.name, q_dir, marker)
        fsops.fsync_dir(q_dir)
        try:
            try:
                fsops.copy_verified(q_dir, marker, o_dir, partial, sha256=entry.sha256)
            except FileChanged as exc:
                raise QuarantineError(f"{held.path}: the quarantined copy is damaged") from exc
            try:
                fsops.rename_noreplace(o_dir, partial, o_dir, original.name)
            except FileExistsError as exc:
                fsops.unlink(o_dir, partial)
                raise RestoreRefused(f"{original.path}: a file already exists there") from exc
        except BaseException:
            fsops.rename_noreplace(q_dir, marker, q_dir, held.name)
            fsops.fsync_dir(q_dir)
            raise
        fsops.fsync_dir(o_dir)
        fsops.unlink(q_dir, marker)
        fsops.fsync_dir(q_dir)

    # --- recovery, purge, listings ---

    def recover(self) -> list[JournalEntry]:
        """Finish or roll back every interrupted move and restore; returns the changed entries."""
        with self._lock:
            return self._recovery.run()

    def purge(self, older_than_seconds: float) -> list[JournalEntry]:
        """Delete for good the quarantined files older than this; returns their entries."""
        cutoff = self._clock() - older_than_seconds
        with self._lock:
            old = [
                e
                for e in self._journal.journal_entries([JournalState.DONE])
                if e.created_at <= cutoff
            ]
            return [purged for e in old if (purged := self._recovery.purge_one(e)) is not None]

    def entries(self) -> list[QuarantinedFile]:
        """Everything currently in the quarantine, oldest first."""
        now = self._clock()
        listed = []
        for entry in self._journal.journal_entries([JournalState.DONE]):
            try:
                size: int | None = entry.quarantine_path.lstat().st_size
            except OSError:
                size = None
            listed.append(QuarantinedFile(entry, size, max(0.0, now - entry.created_at)))
        return sorted(listed, key=lambda item: item.entry.created_at)

    def find(self, path: Path) -> list[JournalEntry]:
        """Quarantined entries whose original or quarantine path is ``path``."""
        wanted = Path(path).absolute()
        return [
            e
            for e in self._journal.journal_entries([JournalState.DONE])
            if wanted in (e.original_path, e.quarantine_path)
        ]

    def contains(self, path: Path) -> bool:
        """True if ``path`` is inside a quarantine directory (never fingerprint or move it)."""
        return self._layout.contains(Path(path).absolute())

    def quarantine_dirs(self) -> list[Path]:
        return self._layout.quarantine_dirs()

    def _refetch(self, entry: JournalEntry) -> JournalEntry:
        fresh = self._journal.journal_entry(entry.id)
        if fresh is None:
            raise QuarantineError(f"journal entry {entry.id} disappeared")
        return fresh


def _check_identity(dir_fd: int, place: Place, expected: StatKey) -> None:
    st = _lstat_regular(dir_fd, place)
    if not expected.same_content_version(StatKey.from_stat(st)):
        raise FileChanged(f"{place.path}: changed since it was examined")


def _lstat_regular(
    dir_fd: int, place: Place, missing: type[QuarantineError] = FileChanged
) -> os.stat_result:
    st = fsops.lstat(dir_fd, place.name)
    if st is None:
        raise missing(f"{place.path}: no longer there")
    if not stat.S_ISREG(st.st_mode):
        raise missing(f"{place.path}: not a regular file (a symlink, directory or device)")
    return st


def _free_name(dir_fd: int, name: str) -> str:
    """``name`` if free in the directory, else the first free numbered variant."""
    base = name
    if fsops.lstat(dir_fd, base) is None:
        return base
    for number in range(2, _MAX_SUFFIX):
        candidate = numbered(base, number)
        if fsops.lstat(dir_fd, candidate) is None:
            return candidate
    raise QuarantineError(f"{name}: no free name in the quarantine")
