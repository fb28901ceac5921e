"""Crash-safe quarantine: move duplicates aside, restore them, purge them when asked.

Modelled on the FreeDesktop Trash spec: one quarantine directory per root (so a move is a
rename), names that never overwrite, and a journal row written (synchronously) before the move
and completed after it. ``recover`` at start-up finishes or rolls back whatever a crash
interrupted by looking at the disk. Moves across filesystems copy, fsync, verify the sha256 and
only then unlink the source.
"""

from __future__ import annotations

import errno
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
from dupwatch.recovery import Journal, Recovery, entry_fields, partial_name
from dupwatch.restoring import lstat_regular, put_back

log = structlog.get_logger(__name__)

__all__ = ["Journal", "Quarantine", "QuarantinedFile"]

_MAX_SUFFIX = 10_000


@dataclass(frozen=True, slots=True)
class _Move:
    """One move in flight: its journal entry, both directories and the expected identity."""

    entry: JournalEntry
    src_dir: int
    source: Place
    q_dir: int
    target: Place
    expected: StatKey


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
            try:
                q_dir = stack.enter_context(
                    fsops.open_dir(target.root, target.dirs, create_modes=modes)
                )
            except (FileNotFoundError, NotADirectoryError) as exc:
                # A quarantine directory swapped or removed while it was being opened.
                raise QuarantineError(f"{exc.filename}: {exc.strerror}") from exc
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
            step = _Move(entry, src_dir.fd, source, q_dir.fd, target, expected)
            try:
                _check_identity(src_dir.fd, source, expected)
                self._transfer(step)
            except BaseException:
                self._recovery.settle_failed_move(entry)
                raise
            self._journal.journal_set_state(entry.id, JournalState.DONE)
            done = self._refetch(entry)
        log.info("file_quarantined", **entry_fields(done))
        return done

    def _transfer(self, step: _Move) -> None:
        try:
            self._rename_into(step, step.src_dir, step.source.name)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            self._copy_across(step)
            return
        fsops.fsync_dir(step.q_dir)
        fsops.fsync_dir(step.src_dir)

    def _rename_into(self, step: _Move, from_dir: int, name: str) -> str:
        """Rename without replacing; on a name taken meanwhile, journal the next free one."""
        target = step.target
        for _ in range(_MAX_SUFFIX):
            try:
                fsops.rename_noreplace(from_dir, name, step.q_dir, target.name)
                return target.name
            except FileExistsError:
                target = target.renamed(_free_name(step.q_dir, step.source.name))
                self._journal.journal_update_quarantine_path(step.entry.id, target.path)
        raise QuarantineError(f"{target.path}: no free name in the quarantine")

    def _copy_across(self, step: _Move) -> None:
        """The EXDEV path: copy, verify, rename into place, and only then unlink the source."""
        partial = partial_name(step.entry.id)
        src_dir, source, q_dir = step.src_dir, step.source, step.q_dir
        fsops.copy_verified(
            src_dir,
            source.name,
            q_dir,
            partial,
            sha256=step.entry.sha256,
            expected=step.expected,
        )
        landed = self._rename_into(step, q_dir, partial)
        fsops.fsync_dir(q_dir)
        now = fsops.lstat(src_dir, source.name)
        if now is None:
            return  # deleted meanwhile: the verified copy is now the only one, so it stays
        if not step.expected.same_content_version(StatKey.from_stat(now)):
            # Rewritten since the copy: the owner replaced those bytes, so the copy goes.
            fsops.unlink(q_dir, landed)
            fsops.fsync_dir(q_dir)
            raise FileChanged(f"{source.path}: changed while it was being copied")
        fsops.unlink(src_dir, source.name)
        fsops.fsync_dir(src_dir)

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
            put_back(entry, original, held)
            self._recovery.mark_restored(entry)
        return original.path

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

    def entries(self, *, include_missing: bool = False) -> list[QuarantinedFile]:
        """What is in the quarantine, oldest first.

        Entries whose file was deleted from the quarantine by hand are left out unless
        ``include_missing``; purged ones are PURGED in the journal and never listed.
        """
        now = self._clock()
        listed = []
        for entry in self._journal.journal_entries([JournalState.DONE]):
            try:
                size: int | None = entry.quarantine_path.lstat().st_size
            except OSError:
                size = None
            if size is not None or include_missing:
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
    st = lstat_regular(dir_fd, place)
    if not expected.same_content_version(StatKey.from_stat(st)):
        raise FileChanged(f"{place.path}: changed since it was examined")


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
