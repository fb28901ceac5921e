"""Where quarantined files go: one quarantine directory at the top of each root.

A file keeps its path relative to its root inside the quarantine. Paths read back from the
journal are checked here before anything touches the disk, so a crafted row with ``..`` or a
path outside the roots is refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dupwatch.errors import QuarantineError

NAME_MAX = 255


@dataclass(frozen=True, slots=True)
class Place:
    """A file named by its root, the directories below the root, and its own name."""

    root: Path
    dirs: tuple[str, ...]
    name: str

    @property
    def path(self) -> Path:
        return self.root.joinpath(*self.dirs, self.name)

    def renamed(self, name: str) -> Place:
        return Place(self.root, self.dirs, name)


class Layout:
    """Maps files under the roots to their places in the per-root quarantine directories."""

    def __init__(self, roots: Sequence[Path], dir_name: str) -> None:
        if not dir_name or "/" in dir_name or dir_name in {".", ".."} or "\0" in dir_name:
            raise QuarantineError(f"quarantine directory name {dir_name!r} is not a plain name")
        if not roots:
            raise QuarantineError("no roots configured for the quarantine")
        self.dir_name = dir_name
        # Each root is matched as configured and as resolved, deepest first, so a path given
        # through either spelling finds its root.
        forms: list[tuple[Path, Path]] = []
        for root in roots:
            configured = Path(os.path.normpath(Path(root).absolute()))
            forms.append((configured, configured))
            forms.append((Path(os.path.realpath(configured)), configured))
        forms.sort(key=lambda pair: len(pair[0].parts), reverse=True)
        self._forms = forms
        self.roots = tuple(dict.fromkeys(configured for _, configured in forms))

    def quarantine_dirs(self) -> list[Path]:
        return [root / self.dir_name for root in self.roots]

    def _split(self, path: Path) -> tuple[Path, tuple[str, ...]]:
        text = os.fspath(path)
        if "\0" in text:
            raise QuarantineError(f"{path!r}: contains a NUL byte")
        if not path.is_absolute():
            raise QuarantineError(f"{path}: not an absolute path")
        if any(part in {"..", "."} for part in path.parts):
            raise QuarantineError(f"{path}: contains '..'")
        for form, configured in self._forms:
            if path.is_relative_to(form):
                rel = path.relative_to(form).parts
                if rel:
                    return configured, rel
        raise QuarantineError(f"{path}: outside the watched roots")

    def original(self, path: Path) -> Place:
        """Place of a library file; refuses paths outside the roots or inside a quarantine."""
        root, rel = self._split(path)
        if rel[0] == self.dir_name:
            raise QuarantineError(f"{path}: already inside the quarantine")
        return Place(root, rel[:-1], rel[-1])

    def quarantined(self, path: Path) -> Place:
        """Place of a file inside a quarantine directory; refuses anything else."""
        root, rel = self._split(path)
        if rel[0] != self.dir_name or len(rel) < 2:
            raise QuarantineError(f"{path}: not inside a quarantine directory")
        return Place(root, rel[:-1], rel[-1])

    def target(self, original: Place) -> Place:
        """Where ``original`` goes in its root's quarantine (before any collision suffix)."""
        return Place(original.root, (self.dir_name, *original.dirs), original.name)

    def contains(self, path: Path) -> bool:
        """True if ``path`` lies inside one of the quarantine directories."""
        try:
            self.quarantined(path)
        except QuarantineError:
            return False
        return True


def numbered(name: str, number: int) -> str:
    """``IMG_0001.JPG`` -> ``IMG_0001 (2).JPG``, shortened to fit NAME_MAX bytes."""
    stem, dot, ext = name.rpartition(".")
    if not stem or not dot:
        stem, ext = name, ""
    else:
        ext = "." + ext
    tag = f" ({number})"
    room = NAME_MAX - len(os.fsencode(tag + ext))
    if room < 1:
        stem, ext = name, ""
        room = NAME_MAX - len(os.fsencode(tag))
    # Cutting inside a multi-byte character leaves surrogate escapes, which encode back to the
    # same bytes, so the name stays valid for the filesystem.
    return os.fsdecode(os.fsencode(stem)[:room]) + tag + ext
