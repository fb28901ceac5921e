"""Recovery of interrupted quarantine moves and restores, decided by looking at the disk.

The journal says what was intended; the disk says how far it got. A pending move is rolled
forward when its file is only in the quarantine, rolled back when it is only at its original
place, and finished when both names exist and provably hold the same file. Anything else keeps
every byte and is logged as an error, never resolved silently. A root that is not mounted is
left for later rather than mistaken for a deleted file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Collection
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog

from dupwatch import fsops
from dupwatch.errors import QuarantineError
from dupwatch.qlayout import Layout, Place
from dupwatch.records import JournalEntry, JournalState, Tier

if TYPE_CHECKING:
    _Resolver = Callable[[JournalEntry], bool | None]

log = structlog.get_logger(__name__)


class Journal(Protocol):
    """The quarantine journal as the store provides it (each step synced to disk)."""

    def journal_intent(
        self,
        *,
        file_id: int | None,
        original_path: Path,
        quarantine_path: Path,
        sha256: str,
        duplicate_of: int | None,
        tier: Tier,
        similarity: float | None,
        rule: str,
    ) -> JournalEntry: ...
    def journal_set_state(self, entry_id: int, state: JournalState) -> None: ...
    def journal_update_quarantine_path(self, entry_id: int, quarantine_path: Path) -> None: ...
    def journal_pending(self) -> list[JournalEntry]: ...
    def journal_entry(self, entry_id: int) -> JournalEntry | None: ...
    def journal_entries(
        self, states: Collection[JournalState] | None = None
    ) -> list[JournalEntry]: ...
    def add_not_duplicate(self, file_a: int, file_b: int) -> None: ...


def partial_name(entry_id: int) -> str:
    """The temporary name of a copy in progress (cross-filesystem move or restore)."""
    return f".dupwatch-partial-{entry_id}"


def restoring_name(entry_id: int) -> str:
    """The name a quarantined file takes while it is copied back across filesystems."""
    return f".dupwatch-restoring-{entry_id}"


def entry_fields(entry: JournalEntry) -> dict[str, object]:
    """The fields every quarantine log event carries."""
    return {
        "entry_id": entry.id,
        "path": entry.original_path,
        "quarantine_path": entry.quarantine_path,
        "duplicate_of": entry.duplicate_of,
        "tier": entry.tier.value,
        "similarity": entry.similarity,
        "rule": entry.rule,
    }


class _Dirs:
    """Directories of one entry's two places, opened without following symlinks."""

    def __init__(self, stack: ExitStack, layout: Layout, original: Place, held: Place) -> None:
        self.available = _open(stack, held.root, (layout.dir_name,)) is not None
        self.orig = _open(stack, original.root, original.dirs)
        self.held = _open(stack, held.root, held.dirs)


def _open(stack: ExitStack, root: Path, parts: tuple[str, ...]) -> int | None:
    try:
        return stack.enter_context(fsops.open_dir(root, parts)).fd
    except (FileNotFoundError, NotADirectoryError):
        return None


def _regular(dir_fd: int | None, name: str) -> os.stat_result | None:
    if dir_fd is None:
        return None
    st = fsops.lstat(dir_fd, name)
    return st if st is not None and stat.S_ISREG(st.st_mode) else None


def _sha(dir_fd: int | None, name: str) -> str | None:
    return None if dir_fd is None else fsops.hash_file(dir_fd, name)


def _remove(dir_fd: int | None, name: str) -> bool:
    if dir_fd is None or fsops.lstat(dir_fd, name) is None:
        return False
    fsops.unlink(dir_fd, name)
    fsops.fsync_dir(dir_fd)
    return True


class Recovery:
    """Resolves journal entries against the disk; used by Quarantine under its lock."""

    def __init__(self, journal: Journal, layout: Layout) -> None:
        self._journal = journal
        self._layout = layout

    def run(self) -> list[JournalEntry]:
        changed: list[int] = []
        for entry in self._journal.journal_pending():
            if self._guarded(self._resolve_move, entry):
                changed.append(entry.id)
        unaccounted = 0
        for entry in self._journal.journal_entries([JournalState.DONE]):
            outcome = self._guarded(self._resolve_done, entry)
            if outcome is None:
                unaccounted += 1
            elif outcome:
                changed.append(entry.id)
        if unaccounted:
            # Files deleted from the quarantine by hand rather than purged: one summary line at
            # start-up rather than a warning per file.
            log.warning("quarantine_entries_without_file", count=unaccounted)
        return [e for i in changed if (e := self._journal.journal_entry(i)) is not None]

    def _guarded(self, resolve: _Resolver, entry: JournalEntry) -> bool | None:
        try:
            return resolve(entry)
        except OSError as exc:
            log.error("quarantine_recovery_failed", error=str(exc), **entry_fields(entry))
            return False

    def settle_failed_move(self, entry: JournalEntry) -> None:
        """After a move raised: record whatever the disk shows, or leave it for start-up."""
        try:
            self._resolve_move(entry)
        except Exception as exc:
            log.error("quarantine_move_unresolved", error=str(exc), **entry_fields(entry))

    def _places(self, entry: JournalEntry) -> tuple[Place, Place] | None:
        try:
            return (
                self._layout.original(entry.original_path),
                self._layout.quarantined(entry.quarantine_path),
            )
        except QuarantineError as exc:
            log.error("quarantine_entry_refused", reason=str(exc), **entry_fields(entry))
            return None

    def _set(self, entry: JournalEntry, state: JournalState, event: str, **why: object) -> bool:
        self._journal.journal_set_state(entry.id, state)
        level = log.error if event == "quarantine_recovery_conflict" else log.info
        level(event, state=state.value, **why, **entry_fields(entry))
        return True

    def _resolve_move(self, entry: JournalEntry) -> bool:
        """Finish or roll back one INTENT entry; False if it must wait (root not available)."""
        places = self._places(entry)
        if places is None:
            # A row that points outside the roots is never acted on; it cannot be pending.
            return self._set(entry, JournalState.ROLLED_BACK, "quarantine_rolled_back")
        original, held = places
        with ExitStack() as stack:
            dirs = _Dirs(stack, self._layout, original, held)
            _remove(dirs.held, partial_name(entry.id))
            src = _regular(dirs.orig, original.name)
            dst = _regular(dirs.held, held.name)
            if src is not None and dst is None:
                return self._set(entry, JournalState.ROLLED_BACK, "quarantine_rolled_back")
            if not dirs.available:
                # No quarantine directory: most likely the share is not mounted. Wait for it
                # rather than conclude the file is lost.
                log.warning("quarantine_recovery_deferred", **entry_fields(entry))
                return False
            if dst is not None and src is None:
                if _sha(dirs.held, held.name) == entry.sha256:
                    return self._set(entry, JournalState.DONE, "quarantine_recovered")
                return self._set(
                    entry,
                    JournalState.ROLLED_BACK,
                    "quarantine_recovery_conflict",
                    detail="the original is gone and the quarantine holds other bytes",
                )
            if src is None or dst is None:
                return self._set(
                    entry,
                    JournalState.ROLLED_BACK,
                    "quarantine_recovery_conflict",
                    detail="the file is neither at its place nor in the quarantine",
                )
            return self._both_present(entry, dirs, original, held, src, dst)

    def _both_present(
        self,
        entry: JournalEntry,
        dirs: _Dirs,
        original: Place,
        held: Place,
        src: os.stat_result,
        dst: os.stat_result,
    ) -> bool:
        assert dirs.orig is not None and dirs.held is not None
        same_inode = (src.st_dev, src.st_ino) == (dst.st_dev, dst.st_ino)
        held_ok = same_inode or _sha(dirs.held, held.name) == entry.sha256
        if held_ok and (same_inode or _sha(dirs.orig, original.name) == entry.sha256):
            # Interrupted link+unlink, or a verified copy whose source was not yet removed.
            fsops.unlink(dirs.orig, original.name)
            fsops.fsync_dir(dirs.orig)
            return self._set(entry, JournalState.DONE, "quarantine_recovered")
        if held_ok:
            # The original was rewritten after it was copied: the owner replaced those bytes.
            _remove(dirs.held, held.name)
            return self._set(entry, JournalState.ROLLED_BACK, "quarantine_rolled_back")
        return self._set(
            entry,
            JournalState.ROLLED_BACK,
            "quarantine_recovery_conflict",
            detail="two different files; both kept",
        )

    def _resolve_done(self, entry: JournalEntry) -> bool | None:
        """Finish an interrupted restore of a DONE entry; None if its file is unaccounted for."""
        places = self._places(entry)
        if places is None:
            return False
        original, held = places
        with ExitStack() as stack:
            dirs = _Dirs(stack, self._layout, original, held)
            if not dirs.available:
                return False
            _remove(dirs.orig, partial_name(entry.id))
            back = _regular(dirs.orig, original.name)
            there = _regular(dirs.held, held.name)
            if _regular(dirs.held, restoring_name(entry.id)) is not None:
                return self._finish_copy_back(entry, dirs, original, held, back)
            if there is not None and back is not None:
                if (there.st_dev, there.st_ino) != (back.st_dev, back.st_ino):
                    return False  # a new file at the old place; the quarantined one stays
                _remove(dirs.held, held.name)  # an interrupted link+unlink restore
                return self.mark_restored(entry, "quarantine_recovered")
            if there is not None:
                return False
            if back is not None and _sha(dirs.orig, original.name) == entry.sha256:
                return self.mark_restored(entry, "quarantine_recovered")
            return None

    def _finish_copy_back(
        self,
        entry: JournalEntry,
        dirs: _Dirs,
        original: Place,
        held: Place,
        back: os.stat_result | None,
    ) -> bool:
        assert dirs.held is not None
        name = restoring_name(entry.id)
        if back is not None and _sha(dirs.orig, original.name) == entry.sha256:
            _remove(dirs.held, name)
            return self.mark_restored(entry, "quarantine_recovered")
        fsops.rename_noreplace(dirs.held, name, dirs.held, held.name)
        fsops.fsync_dir(dirs.held)
        log.info("quarantine_rolled_back", operation="restore", **entry_fields(entry))
        return False

    def mark_restored(self, entry: JournalEntry, event: str = "file_restored") -> bool:
        """Record a restore and remember the owner's verdict that the pair is not duplicates."""
        if (
            entry.file_id is not None
            and entry.duplicate_of is not None
            and entry.file_id != entry.duplicate_of
        ):
            self._journal.add_not_duplicate(entry.file_id, entry.duplicate_of)
        self._journal.journal_set_state(entry.id, JournalState.RESTORED)
        log.info(event, operation="restore", **entry_fields(entry))
        return True

    def purge_one(self, entry: JournalEntry) -> JournalEntry | None:
        """Delete one quarantined file for good; None if there was nothing to delete."""
        places = self._places(entry)
        if places is None:
            return None
        _, held = places
        with ExitStack() as stack:
            q_dir = _open(stack, held.root, held.dirs)
            if _regular(q_dir, held.name) is None or not _remove(q_dir, held.name):
                return None
        _prune_empty_dirs(held, self._layout.dir_name)
        self._journal.journal_set_state(entry.id, JournalState.PURGED)
        log.info("quarantine_purged", **entry_fields(entry))
        return self._journal.journal_entry(entry.id)


def _prune_empty_dirs(held: Place, dir_name: str) -> None:
    """Remove directories the purge left empty, up to (not including) the quarantine's top."""
    dirs = held.dirs
    while len(dirs) > 1 and dirs[0] == dir_name:
        try:
            with fsops.open_dir(held.root, dirs[:-1]) as parent:
                os.rmdir(dirs[-1], dir_fd=parent.fd)
        except OSError:
            return
        dirs = dirs[:-1]
