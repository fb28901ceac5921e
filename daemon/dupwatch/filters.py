"""Which names under a watched root are photos to consider, and which are ignored.

A file is wanted only if no component of its path below the root is ignored and its extension
is in the include list. Ignored by default: every dot-name (dotfiles and dot-directories, which
covers AppleDouble ``._*``, ``.Trash-*``, ``.stversions``, ``.@__thumb``, Syncthing's
``.syncthing.*`` and rsync's ``.name.XXXXXX`` temp files), NAS housekeeping directories
(``@eaDir``, ``#recycle``, ``#snapshot``, ...), download and sync temp names (``*.part``,
``*.crdownload``, ``*.tmp``, ``~syncthing~*.tmp``), the quarantine directory, and any extra
glob patterns from the configuration.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from pathlib import Path

from dupwatch.config import DEFAULT_EXTENSIONS

DEFAULT_QUARANTINE_DIR = ".dupwatch-quarantine"

# Housekeeping directories of Synology, QNAP, ext4 and Windows shares: thumbnails, recycle bins
# and snapshots hold copies of photos that must never be taken for the owner's own files.
_IGNORED_NAMES = frozenset(
    {
        "@eaDir",
        "#recycle",
        "#snapshot",
        "@Recycle",
        "@Recently-Snapshot",
        "lost+found",
        "$RECYCLE.BIN",
        "System Volume Information",
    }
)

# Files still being downloaded or synced; the final name arrives later by rename.
_TEMP_NAME = re.compile(
    r"""(?x)
    ( \.part | \.crdownload | \.download | \.tmp | \.partial )$   # browsers, curl, editors
    | ^~syncthing~.*\.tmp$                                          # Syncthing on Windows
    """,
    re.IGNORECASE,
)


class PathFilter:
    """Decides whether a name or a path below a root is ignored or wanted.

    Pure and thread-safe: it looks only at names, never at the disk.
    """

    def __init__(
        self,
        include_extensions: Iterable[str] = DEFAULT_EXTENSIONS,
        ignore_globs: Iterable[str] = (),
        quarantine_dir_name: str = DEFAULT_QUARANTINE_DIR,
    ) -> None:
        self.include_extensions = frozenset(e.lower().lstrip(".") for e in include_extensions)
        self.quarantine_dir_name = quarantine_dir_name
        globs = tuple(ignore_globs)
        # A pattern with a slash is matched against the path relative to the root, the others
        # against each single name, so "*.xmp" and "Scans/raw/*" both do what they look like.
        self._name_globs = tuple(re.compile(fnmatch.translate(g)) for g in globs if "/" not in g)
        self._path_globs = tuple(
            re.compile(fnmatch.translate(g.strip("/"))) for g in globs if "/" in g
        )

    def ignored_name(self, name: str) -> bool:
        """True if a file or directory with this name (and everything below it) is skipped."""
        return (
            name.startswith(".")
            or name in _IGNORED_NAMES
            or name == self.quarantine_dir_name
            or _TEMP_NAME.search(name) is not None
            or any(g.match(name) for g in self._name_globs)
        )

    def wanted_extension(self, name: str) -> bool:
        """True if the name ends in one of the included extensions (case-insensitive)."""
        _, dot, ext = name.rpartition(".")
        return bool(dot) and ext.lower() in self.include_extensions

    def ignored_relative(self, relative: str) -> bool:
        """True if a path relative to its root (``/``-separated) matches a path glob."""
        return any(g.match(relative) for g in self._path_globs)

    def wanted_file(self, path: Path, root: Path) -> bool:
        """True if ``path`` lies strictly below ``root`` and is a photo name nothing ignores."""
        try:
            relative = path.relative_to(root)
        except ValueError:
            return False
        parts = relative.parts
        if not parts or ".." in parts:
            return False
        if any(self.ignored_name(part) for part in parts):
            return False
        if self._path_globs and self.ignored_relative(relative.as_posix()):
            return False
        return self.wanted_extension(parts[-1])

    def wanted_dir(self, path: Path, root: Path) -> bool:
        """True if the walk should descend into ``path`` (a directory at or below ``root``)."""
        try:
            relative = path.relative_to(root)
        except ValueError:
            return False
        parts = relative.parts
        if any(self.ignored_name(part) for part in parts):
            return False
        if not parts or not self._path_globs:
            return True
        # "Raw/*" covers the directory Raw itself as well: "Raw/" matches it.
        text = relative.as_posix()
        return not (self.ignored_relative(text) or self.ignored_relative(text + "/"))


def root_of(path: Path, roots: Iterable[Path]) -> Path | None:
    """The deepest root that contains ``path`` (compared by components, not by text)."""
    best: Path | None = None
    for root in roots:
        inside = path == root or root in path.parents
        if inside and (best is None or len(root.parts) > len(best.parts)):
            best = root
    return best


def absolute_root(root: Path | str) -> Path:
    """An absolute, normalised root path; symlinks in it are kept, as watchdog reports them."""
    # Path.resolve() would follow symlinks; a root given as a link is watched under that name.
    return Path(os.path.abspath(os.fspath(root)))  # noqa: PTH100
