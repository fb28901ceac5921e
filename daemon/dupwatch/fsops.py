"""Filesystem primitives for crash-safe moves: no-replace renames, fsync, symlink-proof walks.

Every operation works on a directory file descriptor plus one name, so a directory swapped for a
symlink between a check and an action cannot redirect the action outside the roots. Operations
that change the disk pass through ``checkpoint`` first, which crash tests use to stop the process
at an exact point.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import platform
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from dupwatch.errors import FileChanged, QuarantineError
from dupwatch.records import StatKey

FaultHook = Callable[[str], None]

_fault_hook: FaultHook | None = None

_RENAME_NOREPLACE = 1
_CHUNK = 1 << 20
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
# glibc before 2.28 has no renameat2 wrapper; the raw syscall numbers per architecture.
_RENAMEAT2_SYSCALL = {
    "x86_64": 316,
    "aarch64": 276,
    "riscv64": 276,
    "armv7l": 382,
    "armv6l": 382,
    "i686": 353,
    "ppc64le": 357,
}
_libc = ctypes.CDLL(None, use_errno=True)


def set_fault_hook(hook: FaultHook | None) -> None:
    """Install a function called with the operation's name before each change to the disk."""
    global _fault_hook
    _fault_hook = hook


def checkpoint(operation: str) -> None:
    """Give the fault hook (crash tests only) a chance to stop the process here."""
    if _fault_hook is not None:
        _fault_hook(operation)


def _renameat2(src_dir: int, src: str, dst_dir: int, dst: str, flags: int) -> None:
    args = (
        ctypes.c_int(src_dir),
        ctypes.c_char_p(os.fsencode(src)),
        ctypes.c_int(dst_dir),
        ctypes.c_char_p(os.fsencode(dst)),
        ctypes.c_uint(flags),
    )
    func = getattr(_libc, "renameat2", None)
    if func is not None:
        result = func(*args)
    else:
        number = _RENAMEAT2_SYSCALL.get(platform.machine())
        if number is None:
            raise OSError(errno.ENOSYS, "renameat2 is not available on this platform")
        result = _libc.syscall(ctypes.c_long(number), *args)
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), src, None, dst)


def rename_noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """Rename ``src`` to ``dst`` atomically, failing with FileExistsError if ``dst`` exists.

    Uses renameat2(RENAME_NOREPLACE); where the filesystem or kernel lacks it, links the new
    name (link never replaces) and then unlinks the old one: for that moment both names exist,
    which recovery recognises by their shared inode. Raises OSError(EXDEV) across filesystems.
    """
    checkpoint("rename")
    try:
        _renameat2(src_dir, src, dst_dir, dst, _RENAME_NOREPLACE)
        return
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise
    try:
        os.link(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
    except PermissionError as exc:
        # Filesystems without hard links (FAT, some FUSE) answer EPERM: no safe rename exists.
        raise QuarantineError(
            f"{dst}: the filesystem supports neither rename-without-replace nor hard links"
        ) from exc
    checkpoint("unlink")
    os.unlink(src, dir_fd=src_dir)


def fsync_dir(dir_fd: int) -> None:
    """Make renames, creations and unlinks in this directory durable."""
    checkpoint("fsync_dir")
    os.fsync(dir_fd)


def unlink(dir_fd: int, name: str) -> None:
    checkpoint("unlink")
    os.unlink(name, dir_fd=dir_fd)


def lstat(dir_fd: int, name: str) -> os.stat_result | None:
    """lstat a name in a directory; None if it does not exist."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


@dataclass(frozen=True, slots=True)
class OpenDir:
    """A directory opened without following symlinks; ``modes`` are the walked directories'."""

    fd: int
    path: Path
    modes: tuple[int, ...]


@contextmanager
def open_dir(
    base: Path, parts: Sequence[str], *, create_modes: Sequence[int] | None = None
) -> Iterator[OpenDir]:
    """Open ``base/parts[0]/...`` refusing any symlink below ``base``.

    ``base`` (a configured root) may itself be reached through symlinks. With ``create_modes``,
    missing directories are created with ``create_modes[i]`` for ``parts[i]`` and each creation
    is made durable. Raises FileNotFoundError for a missing directory and NotADirectoryError for
    a component that is a symlink or not a directory.
    """
    with ExitStack() as stack:
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        stack.callback(os.close, fd)
        modes = [stat.S_IMODE(os.fstat(fd).st_mode)]
        for index, part in enumerate(parts):
            try:
                child = os.open(part, _OPEN_DIR, dir_fd=fd)
            except FileNotFoundError:
                if create_modes is None:
                    raise
                child = _make_dir(fd, part, create_modes[index])
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    where = base.joinpath(*parts[: index + 1])
                    raise NotADirectoryError(
                        errno.ENOTDIR, "a symlink or not a directory", str(where)
                    ) from exc
                raise
            stack.callback(os.close, child)
            fd = child
            modes.append(stat.S_IMODE(os.fstat(fd).st_mode))
        yield OpenDir(fd, base.joinpath(*parts), tuple(modes))


def _make_dir(parent: int, name: str, mode: int) -> int:
    checkpoint("mkdir")
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
    except FileExistsError:
        pass  # made by a concurrent mover: open what is there (still refusing symlinks)
    else:
        fd = os.open(name, _OPEN_DIR, dir_fd=parent)
        try:
            os.fchmod(fd, mode)  # exactly the mode asked for, whatever the umask
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        fsync_dir(parent)
    return os.open(name, _OPEN_DIR, dir_fd=parent)


def hash_file(dir_fd: int, name: str) -> str | None:
    """sha256 of a regular file's bytes, or None if it is missing or not a regular file."""
    try:
        fd = os.open(name, _OPEN_READ, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return _hash_fd(fd)
    finally:
        os.close(fd)


def _hash_fd(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def copy_verified(
    src_dir: int,
    src: str,
    dst_dir: int,
    dst: str,
    *,
    sha256: str,
    expected: StatKey | None = None,
) -> None:
    """Copy a regular file into the new name ``dst`` (O_EXCL) with its mode, times and xattrs.

    The copy is fsynced, then read back from disk and its sha256 compared with ``sha256``.
    Raises FileChanged if the source is not what ``expected`` and ``sha256`` describe, and
    QuarantineError if the copy cannot be made faithfully (a failed xattr is named). On any
    failure the partial copy is removed; the source is never touched.
    """
    src_fd = os.open(src, _OPEN_READ, dir_fd=src_dir)
    try:
        st = os.fstat(src_fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileChanged(f"{src}: no longer a regular file")
        if expected is not None and not expected.same_content_version(StatKey.from_stat(st)):
            raise FileChanged(f"{src}: changed since it was examined")
        checkpoint("create")
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        dst_fd = os.open(dst, flags, 0o600, dir_fd=dst_dir)
        try:
            _fill_copy(src_fd, dst_fd, st, sha256, src)
        except BaseException:
            os.close(dst_fd)
            _discard(dst_dir, dst)
            raise
        os.close(dst_fd)
    finally:
        os.close(src_fd)


def _fill_copy(src_fd: int, dst_fd: int, st: os.stat_result, sha256: str, name: str) -> None:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(src_fd, _CHUNK, offset):
        digest.update(chunk)
        checkpoint("write")
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst_fd, view) :]
        offset += len(chunk)
    if digest.hexdigest() != sha256:
        raise FileChanged(f"{name}: its bytes no longer match the fingerprint")
    checkpoint("fsync")
    os.fsync(dst_fd)
    # Drop the cached pages so the check below reads what reached the disk.
    os.posix_fadvise(dst_fd, 0, 0, os.POSIX_FADV_DONTNEED)
    if _hash_fd(dst_fd) != sha256:
        raise QuarantineError(f"{name}: the copy read back differs from the original")
    _copy_xattrs(src_fd, dst_fd, name)
    if os.geteuid() == 0:
        checkpoint("chown")
        os.fchown(dst_fd, st.st_uid, st.st_gid)
    checkpoint("chmod")
    os.fchmod(dst_fd, stat.S_IMODE(st.st_mode))
    checkpoint("utime")
    os.utime(dst_fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    checkpoint("fsync")
    os.fsync(dst_fd)


def _copy_xattrs(src_fd: int, dst_fd: int, name: str) -> None:
    try:
        names = os.listxattr(src_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENODATA):
            return
        raise
    for key in names:
        value = os.getxattr(src_fd, key)
        checkpoint("setxattr")
        try:
            os.setxattr(dst_fd, key, value)
        except OSError as exc:
            raise QuarantineError(
                f"{name}: cannot copy extended attribute {key!r}: {exc.strerror}"
            ) from exc
        if os.getxattr(dst_fd, key) != value:
            raise QuarantineError(f"{name}: extended attribute {key!r} did not copy intact")


def _discard(dir_fd: int, name: str) -> None:
    try:
        unlink(dir_fd, name)
        fsync_dir(dir_fd)
    except FileNotFoundError:
        pass
