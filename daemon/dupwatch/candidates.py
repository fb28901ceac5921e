"""Which known files a new one may copy, and what verification says about each.

Byte copies are found by SHA-256. Everything else is proposed by the embedding (of the whole
image and of a photo inside a frame) and by near perceptual hashes under the eight symmetries,
then the closest few are verified: first from the glances of both files (glance.py), which
turn most look-alikes down at once, the rest on the analysis workers. Nothing here writes to
the store.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import structlog
from numpy.typing import NDArray

from dupwatch.config import Config
from dupwatch.errors import FileRejected
from dupwatch.glance import Glance, turned_down
from dupwatch.hashindex import HashIndex
from dupwatch.images import FileBytes, PhotoMeta
from dupwatch.index import VectorIndex
from dupwatch.policy import PhotoFacts, veto
from dupwatch.records import FileStatus, StatKey
from dupwatch.store import Store
from dupwatch.store.records import FileRecord
from dupwatch.worker import Fingerprint, Verified
from dupwatch.workerpool import AnalysisPool

log = structlog.get_logger(__name__)

# A quarter-turned or mirrored copy's hash under the matching symmetry stays this close to the
# original's (the common pHash default); verification decides, so generous is safe.
HASH_CANDIDATE_DISTANCE = 10
# A hash match this close goes to verification whatever its embedding similarity, and
# first. Calibrated (bench/calibrate.py): 6 let dark look-alikes, whose hashes are all
# close, take the verified slots before the real original; 4 finds more copies with fewer
# verifications, on the whole set and on each half of it.
HASH_VERIFY_DISTANCE = 4
# Verification costs a decode of the known file; the closest few candidates are enough.
MAX_VERIFIED_CANDIDATES = 3
# Byte copies looked at before all of them are read.
_FIRST_COPIES = 8


@dataclass(slots=True)
class Pair:
    """A candidate being examined: the known file and the evidence so far."""

    record: FileRecord
    similarity: float
    variant: int = 0  # phash.DIHEDRAL index that maps the new image onto the known one
    hash_distance: int | None = None  # pHash bits apart under the closest symmetry, if near
    verified: bool = False
    verification: dict[str, Any] | None = None
    meta: PhotoMeta | None = None
    # The known file's glance made while verifying it, when the store had none to give.
    new_known_glance: Glance | None = None


def proposed(pair: Pair, threshold: float) -> bool:
    """Whether a candidate goes to verification: similar enough, or a near perceptual hash.

    The hash route finds copies whose embedding moved more than their luminance layout did (a
    grayscale or recoloured copy); verification still decides.
    """
    return pair.similarity >= threshold or hash_near(pair)


def hash_near(pair: Pair) -> bool:
    return pair.hash_distance is not None and pair.hash_distance <= HASH_VERIFY_DISTANCE


def facts_of(record: FileRecord, meta: PhotoMeta | None) -> PhotoFacts:
    return PhotoFacts(
        path=record.path,
        size=record.size,
        width=record.width or 0,
        height=record.height or 0,
        format=record.format or "",
        mtime_ns=record.mtime_ns,
        **meta_facts(meta),
    )


def meta_facts(meta: PhotoMeta | None) -> dict[str, Any]:
    if meta is None:
        return {}
    camera = " ".join(p for p in (meta.make, meta.model) if p) or None
    capture = meta.datetime_original
    if capture and meta.subsec:
        capture = f"{capture}.{meta.subsec}"
    return {"exif_tag_count": meta.exif_tag_count, "camera": camera, "capture_time": capture}


def present(record: FileRecord) -> bool:
    """The known file is still on disk as recorded (a keeper must exist before a copy goes)."""
    try:
        now = StatKey.of(record.path)
    except OSError:
        return False
    return record.stat.same_content_version(now)


class CandidateSearch:
    """Finds and verifies the candidates of one file against the library."""

    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        index: VectorIndex,
        hashes: HashIndex,
        worker: AnalysisPool,
        model_id: str,
    ) -> None:
        self._config = config
        self._store = store
        self._index = index
        self._hashes = hashes
        self._worker = worker
        self._model_id = model_id

    def exact_matches(
        self, file: FileBytes, known: FileRecord | None
    ) -> tuple[list[FileRecord], FileRecord | None]:
        """The known file this one is a byte copy of, and a record of a file with these bytes.

        The record gives the copy its fingerprints without decoding it. Content quarantined
        before and now synced back again is a copy of the file it duplicated then.
        """
        # The oldest copy still in place is the one that counts. A library may hold thousands
        # of logged byte copies of one photo: look at the first few before reading them all.
        for limit in (_FIRST_COPIES, None):
            same = self._store.files_by_sha256(file.sha256, limit=limit)
            keeper = next(
                (
                    r
                    for r in same
                    if r.size == file.stat.size
                    and not self.same_file(r, file, known)
                    and present(r)
                ),
                None,
            )
            if keeper is not None:
                return [keeper], keeper
            if limit is None or len(same) < limit:
                break
        for gone in self._store.files_by_sha256(file.sha256, (FileStatus.QUARANTINED,)):
            if self.same_file(gone, file, known):
                continue
            keeper = self.keeper_of(gone)
            if keeper is not None and present(keeper):
                return [dataclasses.replace(keeper, sha256=file.sha256)], gone
        return [], None

    def kept_apart(self, known: FileRecord | None, other: FileRecord) -> bool:
        """The owner restored ``known`` as not a copy of ``other`` or of a byte copy of it.

        A verdict names one file, but the owner judged its content: after restoring a resized
        copy and an exact copy of one photo, the resized copy must not go as a copy of the
        restored exact copy.
        """
        if known is None:
            return False
        if self._store.is_not_duplicate(known.id, other.id):
            return True
        if other.sha256 is None:
            return False
        twins = self._store.files_by_sha256(other.sha256, tuple(FileStatus))
        return any(
            self._store.is_not_duplicate(known.id, twin.id)
            for twin in twins
            if twin.id not in (other.id, known.id)
        )

    def keeper_of(self, quarantined: FileRecord) -> FileRecord | None:
        """The file that ``quarantined`` was found to duplicate, if it is still in the library."""
        for decision in reversed(self._store.decisions_for(quarantined.id)):
            if decision.file_id == quarantined.id and decision.neighbour_id is not None:
                keeper = self._store.file(decision.neighbour_id)
                if keeper is not None and keeper.status is FileStatus.INDEXED:
                    return keeper
                return None
        return None

    @staticmethod
    def same_file(record: FileRecord, file: FileBytes, known: FileRecord | None) -> bool:
        """Hard links, bind mounts and overlapping roots: one file is never its own copy."""
        if known is not None and record.id == known.id:
            return True
        return (record.dev, record.inode) == (file.stat.dev, file.stat.inode)

    def examine(
        self, fingerprint: Fingerprint, file: FileBytes, known: FileRecord | None
    ) -> list[Pair]:
        queries = [fingerprint.vector]
        if fingerprint.framed_vector is not None:
            queries.append(fingerprint.framed_vector)  # the photo inside a screenshot's frame
        similarities: dict[int, float] = {}
        for query in queries:
            for neighbour in self._index.search(query, self._config.index.neighbours):
                seen = similarities.get(neighbour.file_id)
                if seen is None or neighbour.similarity > seen:
                    similarities[neighbour.file_id] = neighbour.similarity
        records = self._store.files(similarities)
        pairs = {
            file_id: Pair(records[file_id], similarity)
            for file_id, similarity in similarities.items()  # in search order, for ties
            if file_id in records
        }
        oriented: dict[int, NDArray[np.float32]] = {}
        for match in self._hashes.near(fingerprint.dihedral_hashes, HASH_CANDIDATE_DISTANCE):
            pair = pairs.get(match.file_id)
            if pair is not None and match.variant == 0:
                pair.hash_distance = match.distance
                continue
            record = pair.record if pair is not None else self._store.file(match.file_id)
            if record is not None:
                similarity = self._oriented_similarity(
                    fingerprint, file, match.variant, record.id, oriented
                )
                if pair is None or similarity > pair.similarity:
                    pairs[record.id] = Pair(
                        record, similarity, variant=match.variant, hash_distance=match.distance
                    )
                else:
                    pair.hash_distance = match.distance
        usable = [
            p
            for p in pairs.values()
            if p.record.status is FileStatus.INDEXED and not self.same_file(p.record, file, known)
        ]
        usable.sort(key=lambda p: p.similarity, reverse=True)
        new_facts = PhotoFacts(
            path=file.path,
            size=0,
            width=0,
            height=0,
            format="",
            mtime_ns=0,
            **meta_facts(fingerprint.meta),
        )
        threshold = self._config.policy.candidate_threshold
        # Near hashes first: a layout this close is the likeliest copy, however the colours
        # moved the embedding (a grayscale copy can sit below several look-alikes).
        worth_it = sorted(
            (p for p in usable if proposed(p, threshold)), key=lambda p: not hash_near(p)
        )
        # All handed over at once to the worker holding the file's pixels and taken in order:
        # the outcome is the same as one at a time, and what is not needed yet is dropped.
        chosen = worth_it[:MAX_VERIFIED_CANDIDATES]
        pending = [self._verify_later(fingerprint, file, p) for p in chosen]
        try:
            for pair, verification in zip(chosen, pending, strict=True):
                self._take_verification(pair, verification)
                # One confirmed original is enough; a vetoed one (a burst neighbour) is not.
                if pair.verified and not veto(
                    new_facts, facts_of(pair.record, pair.meta), self._config.policy
                ):
                    break
        finally:
            for verification in pending:
                if isinstance(verification, Future):
                    verification.cancel()
        self._log_candidates(file.path, usable)
        return usable

    @staticmethod
    def _log_candidates(path: Path, usable: list[Pair]) -> None:
        """One debug line per candidate with its signals: what bench/calibrate.py reads."""
        if not log.is_enabled_for(logging.DEBUG):  # the normal path builds nothing
            return
        for rank, pair in enumerate(usable):
            reason = None if pair.verification is None else pair.verification.get("reason")
            log.debug(
                "candidate_examined",
                path=path,
                candidate=pair.record.path,
                rank=rank,
                similarity=round(pair.similarity, 6),
                variant=pair.variant,
                hash_distance=pair.hash_distance,
                verified=None if pair.verification is None else pair.verified,
                reason=reason,
            )

    def _oriented_similarity(
        self,
        fingerprint: Fingerprint,
        file: FileBytes,
        variant: int,
        file_id: int,
        oriented: dict[int, NDArray[np.float32]],
    ) -> float:
        """Embedding similarity once the new image is turned the way the known one is.

        ``oriented`` keeps the new image's vector per symmetry, so each is embedded once.
        """
        stored = self._store.vector(file_id, self._model_id)
        if stored is None:
            return -1.0
        vector = fingerprint.vector
        if variant != 0:
            if variant not in oriented:
                oriented[variant] = self._worker.embed_variant(fingerprint, file, variant)
            vector = oriented[variant]
        return float(np.dot(vector, stored) / max(float(np.linalg.norm(stored)), 1e-12))

    def _verify_later(
        self,
        fingerprint: Fingerprint,
        file: FileBytes,
        pair: Pair,
    ) -> Future[Verified] | Verified:
        """The verification of ``pair``: settled at once when the glances of both files turn
        it down, else started on an analysis worker."""
        known: Glance | None = None
        if fingerprint.glance is not None:
            stored = self._store.glance(pair.record.id)
            known = None if stored is None else Glance.decode(stored)
            if known is not None:
                try:
                    verdict = turned_down(fingerprint.glance, known, fingerprint.mirrored_features)
                except (cv2.error, ValueError) as exc:
                    # A glance only saves work: without one the pair is verified in full.
                    log.warning("glance_failed", candidate=pair.record.path, error=str(exc))
                    verdict = None
                if verdict is not None:
                    return Verified(verdict, None)
        return self._worker.verify_later(
            fingerprint,
            file,
            pair.record.path,
            # A file indexed before glances were kept, or with one of an older format, gets
            # one now: its pixels are being decoded anyway.
            glance_known=fingerprint.glance is not None and known is None,
        )

    @staticmethod
    def _take_verification(pair: Pair, pending: Future[Verified] | Verified) -> None:
        try:
            verified = pending.result() if isinstance(pending, Future) else pending
        except FileRejected as exc:
            # The known file cannot be read now: no verification, so no automatic action.
            pair.verification = {"same": False, "reason": f"known_file_{exc.reason}"}
            return
        pair.verified = bool(verified.verification.same)
        pair.verification = dataclasses.asdict(verified.verification)
        pair.meta = verified.meta
        pair.new_known_glance = verified.known_glance
