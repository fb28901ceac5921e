"""Reading a file once: its whole content, its SHA-256 and the lstat taken before reading.

Paths come from watched folders anyone on the network can write to, so the path is lstat'ed
first and only a regular file is opened (never a symlink, FIFO, socket or device), refused by
size before any byte is read, and checked after opening to be the very file lstat saw.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from dupwatch.errors import (
    EmptyFile,
    FileChanging,
    FileRejected,
    FileTooLarge,
    FileUnreadable,
    FileVanished,
    NotARegularFile,
)
from dupwatch.records import StatKey

# O_NOFOLLOW: a symlink swapped in after lstat fails with ELOOP instead of being followed.
# O_NONBLOCK: a FIFO swapped in cannot block the open.
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


@dataclass(frozen=True, slots=True)
class FileBytes:
    """A file's whole content as read once, with its SHA-256 and the lstat taken before."""

    path: Path
    data: bytes = field(repr=False)
    sha256: str  # hex
    stat: StatKey


def read_file(path: Path, *, max_file_bytes: int = 512 * 2**20) -> FileBytes:
    """Read a regular file whole, never following a symlink, and hash it.

    Raises NotARegularFile, FileVanished, FileUnreadable, EmptyFile, FileTooLarge, or
    FileChanging when the file changes while it is read.
    """
    try:
        before = os.lstat(path)
    except OSError as exc:
        raise _os_error(path, exc) from exc
    kind = _kind(before.st_mode)
    if kind != "regular file":
        raise NotARegularFile(path, f"is a {kind}")
    if before.st_size == 0:
        raise EmptyFile(path, "file is empty (0 bytes)")
    if before.st_size > max_file_bytes:
        raise FileTooLarge(path, f"{before.st_size} bytes, the limit is {max_file_bytes}")
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise _os_error(path, exc) from exc
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise NotARegularFile(path, f"was replaced by a {_kind(opened.st_mode)}")
        if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
            raise FileChanging(path, "was replaced by another file while being opened")
        # One byte more than lstat saw reveals a file that is still growing.
        data = _read_up_to(fd, before.st_size + 1)
        after = os.fstat(fd)
    except OSError as exc:
        raise FileUnreadable(path, f"read failed: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if len(data) != before.st_size or (after.st_size, after.st_mtime_ns) != (
        before.st_size,
        before.st_mtime_ns,
    ):
        raise FileChanging(path, "changed while being read (still being written?)")
    return FileBytes(path, data, hashlib.sha256(data).hexdigest(), StatKey.from_stat(before))


def _read_up_to(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = os.read(fd, remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def _os_error(path: Path, exc: OSError) -> FileRejected:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return FileVanished(path, "no longer exists")
    if exc.errno == errno.ELOOP:
        return NotARegularFile(path, "is a symbolic link")
    if exc.errno in (errno.ENXIO, errno.ENODEV, errno.EISDIR):
        return NotARegularFile(path, reason)
    if exc.errno in (errno.EACCES, errno.EPERM):
        return FileUnreadable(path, "permission denied")
    return FileUnreadable(path, reason)
