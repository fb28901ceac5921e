"""Typed records and enums shared by the store, the index, the policy and the quarantine.

Records are frozen and slotted: they describe a moment (a row read, a decision made) and are
never mutated. Paths are ``pathlib.Path``; names that are not valid UTF-8 carry surrogate escapes
(``os.fsdecode``) and are stored as the exact bytes.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path


class Tier(enum.Enum):
    """How a file relates to the library, from the decision's point of view."""

    UNIQUE = "unique"
    EXACT = "exact"  # identical bytes
    DUPLICATE = "duplicate"  # the same photo, altered (verified)
    SIMILAR = "similar"  # close, but not verified as the same photo: logged only
    FAILED = "failed"  # could not be fingerprinted


class Action(enum.Enum):
    """What dupwatch does about a decision."""

    QUARANTINE = "quarantine"
    LOG = "log"
    NONE = "none"


class FileStatus(enum.Enum):
    """Where a known file stands."""

    INDEXED = "indexed"
    GONE = "gone"
    QUARANTINED = "quarantined"
    FAILED = "failed"


class JournalState(enum.Enum):
    """Life of one quarantine move; INTENT rows are resolved by recovery at start-up."""

    INTENT = "intent"
    DONE = "done"
    ROLLED_BACK = "rolled_back"
    RESTORED = "restored"
    PURGED = "purged"  # deleted from the quarantine for good; the entry stays as the record


@dataclass(frozen=True, slots=True)
class StatKey:
    """The identity and version of a file on disk, from one ``lstat``."""

    size: int
    mtime_ns: int
    ctime_ns: int
    dev: int
    inode: int

    @classmethod
    def from_stat(cls, st: os.stat_result) -> StatKey:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino)

    @classmethod
    def of(cls, path: Path) -> StatKey:
        """lstat ``path`` (never following a symlink)."""
        return cls.from_stat(path.lstat())

    def same_content_version(self, other: StatKey) -> bool:
        """True if nothing suggests the bytes changed (ctime moves on rename, so it is left out)."""
        return (self.size, self.mtime_ns, self.dev, self.inode) == (
            other.size,
            other.mtime_ns,
            other.dev,
            other.inode,
        )


@dataclass(frozen=True, slots=True)
class Neighbour:
    """A search hit: a known file and its cosine similarity in [-1, 1] to the query."""

    file_id: int
    similarity: float


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One quarantine move as recorded in the journal."""

    id: int
    file_id: int | None
    state: JournalState
    original_path: Path
    quarantine_path: Path
    sha256: str
    duplicate_of: int | None
    tier: Tier
    similarity: float | None
    rule: str
    created_at: float
    restored_at: float | None
