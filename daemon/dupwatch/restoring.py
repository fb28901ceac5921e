"""Putting a quarantined file back: a no-replace rename, or a verified copy across filesystems.

Both directories are walked without following symlinks, and nothing is ever overwritten: a file
(or a dangling symlink) at the original place makes the restore refuse.
"""

from __future__ import annotations

import errno
import os
import stat
from contextlib import ExitStack

from dupwatch import fsops
from dupwatch.errors import FileChanged, QuarantineError, RestoreRefused
from dupwatch.qlayout import Place
from dupwatch.records import JournalEntry
from dupwatch.recovery import partial_name, restoring_name


def put_back(entry: JournalEntry, original: Place, held: Place) -> None:
    """Move a quarantined file back to its original place, never replacing anything."""
    with ExitStack() as stack:
        try:
            q_dir = stack.enter_context(fsops.open_dir(held.root, held.dirs))
        except FileNotFoundError as exc:
            raise QuarantineError(f"{held.path}: missing from the quarantine") from exc
        except NotADirectoryError as exc:
            raise RestoreRefused(f"{held.path}: {exc.strerror} on the way") from exc
        lstat_regular(q_dir.fd, held, missing=QuarantineError)
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
            _copy_back(entry, q_dir.fd, held, o_dir.fd, original)
            return
        fsops.fsync_dir(o_dir.fd)
        fsops.fsync_dir(q_dir.fd)


def _copy_back(entry: JournalEntry, q_dir: int, held: Place, o_dir: int, original: Place) -> None:
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


def lstat_regular(
    dir_fd: int, place: Place, missing: type[QuarantineError] = FileChanged
) -> os.stat_result:
    st = fsops.lstat(dir_fd, place.name)
    if st is None:
        raise missing(f"{place.path}: no longer there")
    if not stat.S_ISREG(st.st_mode):
        raise missing(f"{place.path}: not a regular file (a symlink, directory or device)")
    return st
