"""The quarantine journal and the "not a duplicate" pair verdicts.

Each journal step is its own durable transaction (synced to disk), so an intent is on disk
before the file moves and recovery at start-up can finish or roll back whatever was pending.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from dupwatch.errors import StoreError
from dupwatch.records import JournalEntry, JournalState, Tier
from dupwatch.store.base import StoreBase
from dupwatch.store.records import blob_to_path, path_to_blob

_COLUMNS = (
    "id, file_id, state, original_path, quarantine_path, sha256, duplicate_of, tier, "
    "similarity, rule, created_at, restored_at"
)

# Allowed moves between journal states; repeating the current state is a harmless no-op, so
# recovery can re-apply a step it is unsure was recorded.
_TRANSITIONS: dict[JournalState, frozenset[JournalState]] = {
    JournalState.INTENT: frozenset({JournalState.DONE, JournalState.ROLLED_BACK}),
    JournalState.DONE: frozenset({JournalState.RESTORED, JournalState.PURGED}),
    JournalState.ROLLED_BACK: frozenset(),
    JournalState.RESTORED: frozenset(),
    JournalState.PURGED: frozenset(),
}


def _entry(row: Any) -> JournalEntry:
    (id_, file_id, state, original, quarantine, sha, dup, tier, sim, rule, created, restored) = row
    return JournalEntry(
        id=int(id_),
        file_id=None if file_id is None else int(file_id),
        state=JournalState(state),
        original_path=blob_to_path(original),
        quarantine_path=blob_to_path(quarantine),
        sha256=str(sha),
        duplicate_of=None if dup is None else int(dup),
        tier=Tier(tier),
        similarity=None if sim is None else float(sim),
        rule=str(rule),
        created_at=float(created),
        restored_at=None if restored is None else float(restored),
    )


class JournalMixin(StoreBase):
    def journal_intent(
        self,
        *,
        file_id: int | None,
        original_path: Path,
        quarantine_path: Path,
        sha256: str,
        duplicate_of: int | None,
        tier: Tier,
        similarity: float | None,
        rule: str,
    ) -> JournalEntry:
        """Record (durably) that ``original_path`` is about to move to ``quarantine_path``."""
        now = time.time()
        with self._write(durable=True) as conn:
            cur = conn.execute(
                "INSERT INTO journal (file_id, state, original_path, quarantine_path, sha256, "
                "duplicate_of, tier, similarity, rule, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING " + _COLUMNS,
                (
                    file_id,
                    JournalState.INTENT.value,
                    path_to_blob(original_path),
                    path_to_blob(quarantine_path),
                    sha256,
                    duplicate_of,
                    tier.value,
                    similarity,
                    rule,
                    now,
                    now,
                ),
            )
            return _entry(cur.fetchone())

    def journal_set_state(self, entry_id: int, state: JournalState) -> None:
        """Move an entry on: INTENT to DONE or ROLLED_BACK, DONE to RESTORED or PURGED.

        RESTORED also records the time of the restore. Raises StoreError for an unknown entry
        or a move the journal does not allow (such as restoring a rolled-back move).
        """
        now = time.time()
        with self._write(durable=True) as conn:
            row = conn.execute("SELECT state FROM journal WHERE id = ?", (entry_id,)).fetchone()
            if row is None:
                raise StoreError(f"journal entry {entry_id} does not exist")
            current = JournalState(row[0])
            if current == state:
                return
            if state not in _TRANSITIONS[current]:
                raise StoreError(
                    f"journal entry {entry_id} cannot go from {current.value} to {state.value}"
                )
            restored_at = now if state == JournalState.RESTORED else None
            conn.execute(
                "UPDATE journal SET state = ?, updated_at = ?, "
                "restored_at = COALESCE(?, restored_at) WHERE id = ?",
                (state.value, now, restored_at, entry_id),
            )

    def journal_update_quarantine_path(self, entry_id: int, quarantine_path: Path) -> None:
        """Record a different destination (the first choice was taken) for a pending move."""
        with self._write(durable=True) as conn:
            cur = conn.execute(
                "UPDATE journal SET quarantine_path = ?, updated_at = ? WHERE id = ?",
                (path_to_blob(quarantine_path), time.time(), entry_id),
            )
            if cur.rowcount != 1:
                raise StoreError(f"journal entry {entry_id} does not exist")

    def journal_pending(self) -> list[JournalEntry]:
        """Moves recorded as intended but not yet finished or rolled back, oldest first."""
        return self.journal_entries([JournalState.INTENT])

    def journal_entry(self, entry_id: int) -> JournalEntry | None:
        with self._read() as conn:
            sql = f"SELECT {_COLUMNS} FROM journal WHERE id = ?"
            row = conn.execute(sql, (entry_id,)).fetchone()
        return None if row is None else _entry(row)

    def journal_entries(self, states: Collection[JournalState] | None = None) -> list[JournalEntry]:
        """Entries in the given states (all if None), oldest first."""
        sql = f"SELECT {_COLUMNS} FROM journal"
        params: list[str] = []
        if states is not None:
            if not states:
                return []
            params = [s.value for s in states]
            sql += f" WHERE state IN ({', '.join('?' * len(params))})"
        with self._read() as conn:
            return [_entry(r) for r in conn.execute(sql + " ORDER BY id", params)]

    def add_not_duplicate(self, file_a: int, file_b: int) -> None:
        """Remember that the owner said these two files are not duplicates of each other."""
        if file_a == file_b:
            raise ValueError("a file cannot be its own non-duplicate")
        low, high = sorted((file_a, file_b))
        with self._write(durable=True) as conn:
            conn.execute(
                "INSERT OR IGNORE INTO pair_verdicts (file_a, file_b, verdict, created_at) "
                "VALUES (?, ?, 'not_duplicate', ?)",
                (low, high, time.time()),
            )

    def is_not_duplicate(self, file_a: int, file_b: int) -> bool:
        low, high = sorted((file_a, file_b))
        with self._read() as conn:
            row = conn.execute(
                "SELECT 1 FROM pair_verdicts WHERE file_a = ? AND file_b = ?", (low, high)
            ).fetchone()
        return row is not None
