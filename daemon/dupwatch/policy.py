"""Pure decisions: which tier a file falls in, what to do about it, and which copy stays.

No I/O here. The pipeline gathers the facts (fingerprints, neighbours, verification results,
remembered verdicts) and this module turns them into a ``Decision`` with a trace of the rule that
decided, so every quarantine can be explained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dupwatch.config import PolicyConfig
from dupwatch.records import Action, Tier

# Raw camera formats (read only if the owner adds them to the watched extensions).
RAW_SUFFIXES = frozenset(
    {".3fr", ".arw", ".cr2", ".cr3", ".dng", ".erf", ".iiq", ".kdc", ".mrw", ".nef", ".nrw"}
    | {".orf", ".pef", ".raf", ".raw", ".rw2", ".rwl", ".sr2", ".srf", ".srw", ".x3f"}
)

# Richer formats keep more of the photo: lossless or high-efficiency originals beat JPEG, which
# beats the formats messengers and screenshots produce.
_FORMAT_RANK = {"tiff": 5, "png": 4, "heif": 4, "webp": 2, "jpeg": 2, "bmp": 1, "gif": 0}


@dataclass(frozen=True, slots=True)
class PhotoFacts:
    """What the policy knows about one file."""

    path: Path
    size: int
    width: int
    height: int
    format: str
    mtime_ns: int
    exif_tag_count: int = 0
    camera: str | None = None  # EXIF Make + Model
    capture_time: str | None = None  # EXIF DateTimeOriginal + SubSecTimeOriginal

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True, slots=True)
class Candidate:
    """A known file that the new one may copy, with the evidence gathered for the pair."""

    file_id: int
    facts: PhotoFacts
    similarity: float  # embedding cosine in [-1, 1]; 1.0 for identical bytes
    exact: bool  # identical bytes (sha256 and size)
    verified: bool  # the verification step found the same photo
    # Proposed by a near perceptual hash, so verified whatever its similarity (a grayscale copy).
    hash_near: bool = False
    not_duplicate_verdict: bool = False  # the owner restored this pair before


@dataclass(frozen=True, slots=True)
class Decision:
    tier: Tier
    action: Action
    rule: str  # the rule that decided, for the log and `dupwatch check`
    match: Candidate | None = None
    # Which copy goes to the quarantine when the action is QUARANTINE: the arriving file, or
    # the known one when the arriving file is the better copy (keep = "best").
    quarantine_new: bool = True

    @property
    def similarity(self) -> float | None:
        return self.match.similarity if self.match else None


def _keeper_key(facts: PhotoFacts) -> tuple[int, bool, int, int, int, int]:
    """Sort key: the larger key is the better copy to keep."""
    return (
        facts.pixels,
        # A camera original keeps its capture metadata; a copy converted to a "richer" format
        # (a PNG made from a JPEG) usually loses it and holds no more of the photo.
        facts.camera is not None or facts.capture_time is not None,
        _FORMAT_RANK.get(facts.format, 1),
        facts.size,
        facts.exif_tag_count,
        -facts.mtime_ns,  # older wins
    )


def new_copy_is_better(new: PhotoFacts, known: PhotoFacts) -> bool:
    """True when the arriving file should stay and the known one go (strictly better only)."""
    return _keeper_key(new) > _keeper_key(known)


def camera_times_differ(a: PhotoFacts, b: PhotoFacts) -> bool:
    """Two originals from the same camera taken at different moments are different photos."""
    if not (a.camera and b.camera and a.capture_time and b.capture_time):
        return False
    return a.camera == b.camera and a.capture_time != b.capture_time


def raw_pair(a: PhotoFacts, b: PhotoFacts) -> bool:
    """A camera's raw file and the picture it wrote beside it (IMG_0001.CR2 and IMG_0001.JPG):
    one shot kept twice on purpose, a pair and not duplicates. Same folder, same name, one of
    them raw."""
    if a.path.parent != b.path.parent or a.path.stem.casefold() != b.path.stem.casefold():
        return False
    return (a.path.suffix.lower() in RAW_SUFFIXES) != (b.path.suffix.lower() in RAW_SUFFIXES)


def veto(new: PhotoFacts, known: PhotoFacts, policy: PolicyConfig) -> str | None:
    """The rule that keeps two verified-alike files from being duplicates, if one does."""
    if raw_pair(new, known):
        return "veto:raw_pair"
    if policy.camera_time_veto and camera_times_differ(new, known):
        return "veto:camera_time"
    return None


def _action_for(tier: Tier, policy: PolicyConfig) -> Action:
    if tier is Tier.EXACT:
        return Action(policy.exact_action)
    if tier is Tier.DUPLICATE:
        return Action(policy.duplicate_action)
    if tier is Tier.SIMILAR:
        return Action.LOG
    return Action.NONE


def _with_keeper(
    tier: Tier, rule: str, new: PhotoFacts, match: Candidate, policy: PolicyConfig
) -> Decision:
    quarantine_new = policy.keep == "first-seen" or not new_copy_is_better(new, match.facts)
    if not quarantine_new:
        rule = f"{rule}+keep_best"
    return Decision(tier, _action_for(tier, policy), rule, match, quarantine_new)


def decide(new: PhotoFacts, candidates: Sequence[Candidate], policy: PolicyConfig) -> Decision:
    """Decide what the arriving file is, given the known files it was compared with."""
    eligible = [c for c in candidates if not c.not_duplicate_verdict]
    remembered = len(eligible) < len(candidates)

    exact = [c for c in eligible if c.exact]
    if exact:
        return _with_keeper(Tier.EXACT, "sha256", new, exact[0], policy)

    vetoed: str | None = None
    duplicates = []
    for candidate in eligible:
        if not candidate.verified:
            continue
        if candidate.similarity < policy.candidate_threshold and not candidate.hash_near:
            continue
        rule = veto(new, candidate.facts, policy)
        if rule is not None:
            vetoed = vetoed or rule
            continue
        duplicates.append(candidate)
    if duplicates:
        best = max(duplicates, key=lambda c: c.similarity)
        return _with_keeper(Tier.DUPLICATE, "verified", new, best, policy)

    closest = max(eligible, key=lambda c: c.similarity, default=None)
    if closest is not None and (closest.similarity >= policy.similar_threshold or vetoed):
        return Decision(Tier.SIMILAR, Action.LOG, vetoed or "similarity", closest)
    rule = "verdict:not_duplicate" if remembered else "no_match"
    return Decision(Tier.UNIQUE, Action.NONE, rule, closest)
