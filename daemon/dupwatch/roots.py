"""Facts about a watched root: is it healthy, is it a network mount, can inotify cover it.

The root sentinel keeps an unmounted or emptied share from looking like a mass deletion: a
root is healthy only while it exists as a directory, sits on the device it was first seen on,
and is not suddenly empty while files were known there.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

# Filesystems where inotify does not see other machines' writes (or any writes, for FUSE
# front-ends such as mergerfs whose branches are also written directly): walk them instead.
# fuseblk (ntfs-3g, exfat on a USB disk) is a local disk written through this kernel.
NETWORK_FS_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "ncpfs",
        "afs",
        "9p",
        "virtiofs",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "beegfs",
        "davfs",
        "fuse",
        "sshfs",
    }
)

SYSCTL_FIX = "sysctl -w fs.inotify.max_user_watches=524288 (and add it to /etc/sysctl.d/)"


def _unescape_mount_field(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as 3-digit octal escapes.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def filesystem_type(path: Path, mounts_file: Path = Path("/proc/mounts")) -> str | None:
    """The type of the filesystem holding ``path`` (longest mount point that contains it)."""
    try:
        real = os.path.realpath(path)
        text = mounts_file.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = _unescape_mount_field(fields[1])
        inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
        if inside and (best is None or len(mount_point) > best[0]):
            best = (len(mount_point), fields[2])
    return best[1] if best else None


def is_network_filesystem(fs_type: str | None) -> bool:
    """True for NFS, CIFS/SMB and FUSE-style types where inotify cannot be trusted."""
    if fs_type is None:
        return False
    if fs_type == "fuseblk":
        return False
    return fs_type in NETWORK_FS_TYPES or fs_type.startswith("fuse.")


def max_user_watches(path: Path = Path("/proc/sys/fs/inotify/max_user_watches")) -> int | None:
    """The per-user inotify watch limit, or None where there is no such file."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def count_directories(root: Path, should_stop: Callable[[], bool] | None = None) -> int:
    """Directories below ``root`` that inotify would watch (symlinks are not followed).

    Ignored directories count too: watchdog's recursive watch cannot skip them.
    """
    count = 0
    stack = [os.fspath(root)]
    while stack:
        if should_stop is not None and should_stop():
            break
        directory = stack.pop()
        count += 1
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                    except OSError:
                        continue
        except OSError:
            continue
    return count


def _has_entries(root: Path) -> bool:
    with os.scandir(root) as entries:
        return next(iter(entries), None) is not None


class RootSentinel:
    """Health of one root: exists, same device as when first seen healthy, not emptied.

    ``knows_files()`` says whether the store holds files for this root, so that an empty
    mount point at start-up is recognised too. ``check()`` returns None when healthy, else a
    short reason code ("missing", "not_a_directory", "unreadable", "device_changed",
    "emptied").
    """

    def __init__(self, root: Path, knows_files: Callable[[], bool] | None = None) -> None:
        self.root = root
        self._knows_files = knows_files or (lambda: False)
        self._device: int | None = None
        self._populated = False

    def check(self) -> str | None:
        try:
            st = self.root.stat()
        except FileNotFoundError:
            return "missing"
        except OSError:
            return "unreadable"
        if not stat.S_ISDIR(st.st_mode):
            return "not_a_directory"
        try:
            has_entries = _has_entries(self.root)
        except FileNotFoundError:  # renamed away or unmounted between the two calls
            return "missing"
        except OSError:
            return "unreadable"
        # An empty root that never held anything is a new library, not an unmounted share.
        if not has_entries and (self._populated or self._knows_files()):
            return "emptied"
        if self._device is not None and st.st_dev != self._device:
            return "device_changed"
        # The device is pinned only once the root looks right, so a daemon started while the
        # share was unmounted follows the share when it is mounted.
        self._device = st.st_dev
        self._populated = self._populated or has_entries
        return None
