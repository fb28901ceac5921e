"""One file through the whole flow, for the daemon and for ``dupwatch scan`` alike.

read -> sha256 -> exact match? -> decode + embed -> search (snapshot + buffer + hashes) ->
verify -> decide -> record -> act. Every step that can fail on one file turns into a recorded,
logged outcome for that file; failures of the store or the disk propagate and stop the caller.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from numpy.typing import NDArray

from dupwatch.candidates import CandidateSearch, Pair, facts_of, hash_near, meta_facts
from dupwatch.config import Config
from dupwatch.deferred import DeferredMoves
from dupwatch.errors import (
    FileChanged,
    FileChanging,
    FileRejected,
    FileVanished,
    QuarantineError,
)
from dupwatch.hashindex import HashIndex
from dupwatch.images import FileBytes, read_file
from dupwatch.index import VectorIndex
from dupwatch.logs import printable
from dupwatch.policy import Candidate, Decision, PhotoFacts, decide
from dupwatch.quarantine import Quarantine
from dupwatch.records import Action, FileStatus, StatKey, Tier
from dupwatch.renames import follow_rename
from dupwatch.store import Store
from dupwatch.store.records import FileRecord
from dupwatch.worker import Fingerprint
from dupwatch.workerpool import AnalysisPool

log = structlog.get_logger(__name__)

# The file whose decision to quarantine is recorded but not yet carried out. Written in the
# same transaction as the decision, cleared once the move is done or given up, so a crash in
# between leaves a note that start-up acts on: the file looks unchanged, and would otherwise
# never be examined again while the duplicate stays where it is.
IN_FLIGHT_STATE_KEY = "pipeline_in_flight"


@dataclass(frozen=True, slots=True)
class FileResult:
    """What happened to one file: the canonical ``file_processed`` line and the scan report."""

    path: Path
    tier: Tier
    action: Action  # done, or (dry run) what would have been done
    rule: str
    duplicate_of: Path | None = None
    similarity: float | None = None
    reason: str | None = None  # failure code or why a planned action did not happen
    detail: str | None = None
    moved: Path | None = None  # the file that went (or would go) into the quarantine
    nearest: Path | None = None  # the most similar known file, whatever the tier
    dry_run: bool = False
    duration_ms: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "tier": self.tier.value,
            "duplicate_of": None if self.duplicate_of is None else str(self.duplicate_of),
            "similarity": None if self.similarity is None else round(self.similarity, 6),
            "action": self.action.value,
            "rule": self.rule,
            "reason": self.reason,
            "moved": None if self.moved is None else str(self.moved),
            "nearest": None if self.nearest is None else str(self.nearest),
            "dry_run": self.dry_run,
        }


@dataclass(frozen=True, slots=True)
class _Assessment:
    facts: PhotoFacts
    decision: Decision
    pairs: list[Pair]
    fingerprint: Fingerprint | None
    same_bytes: FileRecord | None  # a known file with these bytes, when no decode was needed


class Pipeline:
    """Processes one file at a time against the library held by ``store`` and ``index``."""

    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        index: VectorIndex,
        hashes: HashIndex,
        worker: AnalysisPool,
        quarantine: Quarantine | None,
        model_id: str,
        dry_run: bool = False,
    ) -> None:
        self._config = config
        self._store = store
        self._index = index
        self._hashes = hashes
        self._worker = worker
        self._quarantine = quarantine
        self._model_id = model_id
        self._dry_run = dry_run or quarantine is None
        self._deferred = DeferredMoves(store)
        self._search = CandidateSearch(
            config=config,
            store=store,
            index=index,
            hashes=hashes,
            worker=worker,
            model_id=model_id,
        )

    # --- the flow ----------------------------------------------------------------------------

    def process(self, path: Path, *, force: bool = False) -> FileResult | None:
        """Process ``path``; None when it is already known unchanged (and ``force`` is off)."""
        started = time.perf_counter()
        known = self._store.file_by_path(path)
        if not force and known is not None and self._unchanged(path, known):
            return None
        try:
            file = read_file(path, max_file_bytes=self._config.decode.max_file_bytes)
            if known is None and self._follow_rename(file) is not None:
                return None  # a known photo under a new name, not a new one
            result = self._examine(file, known)
        except FileRejected as exc:
            result = self._rejected(path, known, exc)
        result = dataclasses.replace(
            result,
            dry_run=self._dry_run,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        self._log(result)
        return result

    def _follow_rename(self, file: FileBytes) -> FileRecord | None:
        return follow_rename(self._store, self._index, self._hashes, self._model_id, file)

    def _unchanged(self, path: Path, known: FileRecord) -> bool:
        if known.status not in (FileStatus.INDEXED, FileStatus.FAILED):
            return False
        try:
            return known.stat.same_content_version(StatKey.of(path))
        except OSError:
            return False

    def _assess(self, file: FileBytes, known: FileRecord | None) -> _Assessment:
        """Everything up to the decision; nothing is written."""
        exact, same_bytes = self._search.exact_matches(file, known)
        fingerprint: Fingerprint | None = None
        if exact and same_bytes is not None:
            facts = facts_of(dataclasses.replace(same_bytes, path=file.path), None)
            facts = dataclasses.replace(facts, mtime_ns=file.stat.mtime_ns)
            pairs = [Pair(exact[0], 1.0, verified=True)]
        else:
            fingerprint = self._worker.fingerprint(file)
            facts = PhotoFacts(
                path=file.path,
                size=file.stat.size,
                width=fingerprint.width,
                height=fingerprint.height,
                format=fingerprint.format,
                mtime_ns=file.stat.mtime_ns,
                **meta_facts(fingerprint.meta),
            )
            pairs = self._search.examine(fingerprint, file, known)
        candidates = [
            Candidate(
                file_id=p.record.id,
                facts=facts_of(p.record, p.meta),
                similarity=p.similarity,
                exact=bool(exact) and p.record.sha256 == file.sha256,
                verified=p.verified,
                hash_near=hash_near(p),
                not_duplicate_verdict=self._search.kept_apart(known, p.record),
            )
            for p in pairs
        ]
        decision = decide(facts, candidates, self._config.policy)
        return _Assessment(facts, decision, pairs, fingerprint, same_bytes)

    def _examine(self, file: FileBytes, known: FileRecord | None) -> FileResult:
        assessment = self._assess(file, known)
        record = self._record(file, assessment)
        result = self._act(file, record, assessment.decision)
        if assessment.decision.action is Action.QUARANTINE and not self._dry_run:
            self._store.set_state(IN_FLIGHT_STATE_KEY, "")
        return result

    def resume_interrupted(self) -> FileResult | None:
        """Examine again the file whose quarantine a crash interrupted (call after recovery).

        The journal has already finished or rolled back the move itself; if the file is still
        in place, its duplicate is found again and the decision carried out this time.
        """
        if self._dry_run:
            return None
        note = self._store.get_state(IN_FLIGHT_STATE_KEY)
        if not note:
            return None
        record = self._store.file(int(note))
        result = None
        if record is not None and record.status in (FileStatus.INDEXED, FileStatus.FAILED):
            log.info("pipeline_resumed", path=record.path, file_id=record.id)
            result = self.process(record.path, force=True)
        self._store.set_state(IN_FLIGHT_STATE_KEY, "")
        return result

    def retry_deferred(self) -> int:
        """Try again the quarantines that failed for want of disk, when their backoff allows.

        Returns how many files were examined again.
        """
        if self._dry_run or not self._deferred.due():
            return 0
        failed_again = False
        ids = self._deferred.take()
        for file_id in ids:
            record = self._store.file(file_id)
            if record is None or record.status not in (FileStatus.INDEXED, FileStatus.FAILED):
                continue
            result = self.process(record.path, force=True)
            failed_again |= result is not None and result.reason == "quarantine_failed"
        self._deferred.settled(failed_again)
        return len(ids)

    def explain(self, path: Path) -> str:
        """What dupwatch would decide about ``path`` and why; changes nothing."""
        file = read_file(path, max_file_bytes=self._config.decode.max_file_bytes)
        known = self._store.file_by_path(path)
        a = self._assess(file, known)
        lines = [
            f"file: {printable(path)}",
            f"  {a.facts.width} x {a.facts.height} {a.facts.format}, {a.facts.size} bytes, "
            f"sha256 {file.sha256[:16]}...",
        ]
        if a.facts.camera or a.facts.capture_time:
            lines.append(f"  camera {a.facts.camera or '?'}, taken {a.facts.capture_time or '?'}")
        lines.append(f"neighbours ({len(a.pairs)}):")
        for pair in a.pairs[:10]:
            lines.append(f"  {pair.similarity:+.4f}  {printable(pair.record.path)}")
            if pair.verification is not None:
                verdict = "same photo" if pair.verified else "not the same photo"
                reason = pair.verification.get("reason", "")
                transform = pair.verification.get("transform", "")
                lines.append(f"           verification: {verdict} ({reason}) {transform}")
        d = a.decision
        lines.append(f"decision: {d.tier.value}, action {d.action.value}, rule {d.rule}")
        if d.match is not None and d.action is Action.QUARANTINE:
            victim = path if d.quarantine_new else d.match.facts.path
            lines.append(f"  would quarantine {printable(victim)}")
        return "\n".join(lines)

    # --- recording and acting ----------------------------------------------------------------

    def _record(self, file: FileBytes, assessment: _Assessment) -> FileRecord:
        """Store the file, its vector and the decision in one transaction."""
        fingerprint, same_bytes = assessment.fingerprint, assessment.same_bytes
        decision, pairs = assessment.decision, assessment.pairs
        if fingerprint is not None:
            shape: dict[str, Any] = {
                "phash": fingerprint.phash,
                "width": fingerprint.width,
                "height": fingerprint.height,
                "format": fingerprint.format,
            }
            vector: NDArray[np.float32] | None = fingerprint.vector
        else:
            if same_bytes is None:
                raise ValueError("a file without a fingerprint needs a record of its bytes")
            shape = {
                "phash": same_bytes.phash,
                "width": same_bytes.width,
                "height": same_bytes.height,
                "format": same_bytes.format,
            }
            vector = self._store.vector(same_bytes.id, self._model_id)
        match = decision.match
        evidence = next(
            (p.verification for p in pairs if match and p.record.id == match.file_id), None
        )
        with self._store.batch():
            record = self._store.upsert_file(
                file.path, file.stat, sha256=file.sha256, status=FileStatus.INDEXED, **shape
            )
            if vector is not None:
                self._store.put_vector(record.id, self._model_id, vector)
            self._keep_glances(record.id, assessment)
            self._store.record_decision(
                record.id,
                tier=decision.tier,
                action=decision.action,
                rule=decision.rule,
                neighbour_id=None if match is None else match.file_id,
                similarity=decision.similarity,
                verification=evidence,
            )
            if decision.action is Action.QUARANTINE and not self._dry_run:
                self._store.set_state(IN_FLIGHT_STATE_KEY, str(record.id))
        if vector is not None:
            self._remember(record, vector)
        return record

    def _keep_glances(self, file_id: int, assessment: _Assessment) -> None:
        """The file's glance (a byte copy shares its twin's), and those made of known files
        while verifying it; a file without one loses any glance of its old content."""
        fingerprint, same_bytes = assessment.fingerprint, assessment.same_bytes
        glance = None
        if fingerprint is not None and fingerprint.glance is not None:
            glance = fingerprint.glance.encode()
        elif fingerprint is None and same_bytes is not None:
            glance = self._store.glance(same_bytes.id)
        if glance is None:
            self._store.drop_glance(file_id)
        else:
            self._store.put_glance(file_id, glance)
        for pair in assessment.pairs:
            if pair.new_known_glance is not None:
                self._store.put_glance(pair.record.id, pair.new_known_glance.encode())

    def _remember(self, record: FileRecord, vector: NDArray[np.float32]) -> None:
        self._index.add(record.id, vector)
        if record.phash is not None:
            self._hashes.add(record.id, record.phash)

    def _forget(self, file_id: int) -> None:
        self._index.remove(file_id)
        self._hashes.remove(file_id)

    def _act(self, file: FileBytes, record: FileRecord, decision: Decision) -> FileResult:
        match = decision.match
        keeper = self._store.file(match.file_id) if match else None
        if decision.quarantine_new or keeper is None:
            victim, other = record, keeper
        else:
            victim, other = keeper, record
        result = FileResult(
            path=file.path,
            tier=decision.tier,
            action=decision.action,
            rule=decision.rule,
            # A unique file has a nearest neighbour (its similarity is reported) but no original.
            duplicate_of=None if keeper is None or decision.tier is Tier.UNIQUE else keeper.path,
            similarity=decision.similarity,
            nearest=None if keeper is None else keeper.path,
        )
        if decision.action is not Action.QUARANTINE or other is None:
            return result
        result = dataclasses.replace(result, moved=victim.path)
        if self._dry_run or self._quarantine is None:
            if victim.id == record.id:
                self._forget(record.id)  # as if it had gone: later files are not its copies
            return result
        try:
            self._quarantine.move(
                victim.path,
                expected=victim.stat,
                sha256=victim.sha256 or file.sha256,
                file_id=victim.id,
                duplicate_of=other.id,
                tier=decision.tier,
                similarity=decision.similarity,
                rule=decision.rule,
            )
        except FileChanged as exc:
            log.info("quarantine_skipped", path=victim.path, reason="changed", detail=str(exc))
            return dataclasses.replace(result, action=Action.NONE, moved=None, reason="changed")
        except (QuarantineError, OSError) as exc:
            # Most often a full or read-only disk: kept, and retried on a backoff.
            self._deferred.add(record.id, victim.path, str(exc))
            return dataclasses.replace(
                result, action=Action.NONE, moved=None, reason="quarantine_failed", detail=str(exc)
            )
        self._store.set_file_status(victim.id, FileStatus.QUARANTINED)
        self._forget(victim.id)
        return result

    # --- failures ------------------------------------------------------------------------------

    def _rejected(self, path: Path, known: FileRecord | None, exc: FileRejected) -> FileResult:
        if isinstance(exc, FileVanished):
            if known is not None:
                self._store.set_file_status(known.id, FileStatus.GONE)
                self._forget(known.id)
            return FileResult(path, Tier.FAILED, Action.NONE, "vanished", reason=exc.reason)
        if isinstance(exc, FileChanging):
            # Still being written: nothing is recorded, so the next event or walk retries it.
            return FileResult(
                path, Tier.FAILED, Action.NONE, exc.reason, reason=exc.reason, detail=exc.detail
            )
        try:
            stat = StatKey.of(path)
        except OSError:
            stat = None
        if stat is not None:
            with self._store.batch():
                record = self._store.upsert_file(
                    path, stat, status=FileStatus.FAILED, failure_reason=exc.reason
                )
                self._store.record_decision(
                    record.id, tier=Tier.FAILED, action=Action.NONE, rule=exc.reason
                )
            if known is not None:
                self._forget(known.id)
        return FileResult(
            path, Tier.FAILED, Action.NONE, exc.reason, reason=exc.reason, detail=exc.detail
        )

    def _log(self, result: FileResult) -> None:
        fields = {
            "path": result.path,
            "tier": result.tier.value,
            "action": result.action.value,
            "rule": result.rule,
            "duration_ms": result.duration_ms,
        }
        if result.duplicate_of is not None:
            fields["duplicate_of"] = result.duplicate_of
        if result.similarity is not None:
            fields["similarity"] = round(result.similarity, 4)
        if result.moved is not None:
            fields["moved"] = result.moved
        if result.reason is not None:
            fields["reason"] = result.reason
        if result.dry_run:
            fields["dry_run"] = True
        if result.tier is Tier.FAILED:
            log.warning("file_failed", detail=result.detail, **fields)
        else:
            log.info("file_processed", **fields)
