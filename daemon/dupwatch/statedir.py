"""Refuse a state directory on a network filesystem.

SQLite's write-ahead log keeps its index in shared memory beside the database; that only works
when every process using the database runs on the same host, on a local filesystem. On NFS, SMB
or a FUSE mount the database can be corrupted or writes lost, so the daemon will not start there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from dupwatch.errors import StateDirError

# statfs(2) f_type magic numbers of filesystems that are remote or user-space.
NETWORK_MAGIC: dict[int, str] = {
    0x6969: "nfs",
    0x517B: "smb",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x65735546: "fuse",
    0x00C36400: "ceph",
    0x5346414F: "afs",
    0x73757245: "coda",
    0x01021997: "9p",
    0x564C: "ncp",
    0x0BD00BD0: "lustre",
}

# /proc/mounts type names with the same problem (fuse.* covers sshfs, rclone, mergerfs...).
NETWORK_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb3",
        "smbfs",
        "ceph",
        "afs",
        "coda",
        "9p",
        "ncpfs",
        "lustre",
        "glusterfs",
        "davfs",
        "fuse",
        "fuseblk",
        "sshfs",
    }
)


def is_network_type(fstype: str) -> bool:
    """True for a /proc/mounts filesystem type that must not hold the database."""
    return fstype in NETWORK_TYPES or fstype.startswith("fuse.")


def _statfs_type(path: Path) -> int | None:
    """The statfs f_type of ``path``, or None where statfs is unavailable (not Linux)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        statfs = libc.statfs
    except (OSError, AttributeError):
        return None
    # struct statfs is at most 120 bytes on Linux; f_type (a C long) comes first.
    buf = ctypes.create_string_buffer(256)
    if statfs(os.fsencode(path), buf) != 0:
        return None
    return ctypes.c_ulong.from_buffer(buf).value & 0xFFFFFFFF


def mount_type(path: Path, mounts_file: Path = Path("/proc/mounts")) -> str | None:
    """The filesystem type of the mount that holds ``path``, from a mounts table."""
    try:
        lines = mounts_file.read_bytes().splitlines()
    except OSError:
        return None
    target = os.fsencode(path.resolve())
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        # /proc/mounts escapes spaces and other specials as octal (\040).
        point = fields[1].decode("unicode_escape").encode("latin-1")
        inside = target == point or target.startswith(point.rstrip(b"/") + b"/")
        if inside and (best is None or len(point) > best[0]):
            best = (len(point), fields[2].decode("ascii", "replace"))
    return None if best is None else best[1]


def check_state_dir(path: Path, *, mounts_file: Path = Path("/proc/mounts")) -> None:
    """Raise StateDirError unless ``path`` is an existing directory on a local filesystem."""
    if not path.is_dir():
        raise StateDirError(f"{path}: state directory does not exist or is not a directory")
    magic = _statfs_type(path)
    kind = NETWORK_MAGIC.get(magic) if magic is not None else None
    if kind is None:
        fstype = mount_type(path, mounts_file)
        if fstype is not None and is_network_type(fstype):
            kind = fstype
    if kind is not None:
        raise StateDirError(
            f"{path}: the state directory is on a {kind} filesystem; the database needs a "
            "local disk (SQLite's write-ahead log does not work over a network share or FUSE). "
            "Point state_dir at a local directory such as /var/lib/dupwatch."
        )
