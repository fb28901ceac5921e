"""Numbered schema migrations, applied in order when the store opens.

A migration that has shipped is never edited: a database in the field may already have run it.
Change the schema by appending a new function. Tests migrate from empty and from every earlier
version, so each migration must work on a database that holds real rows.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

MIGRATIONS = Migrations("dupwatch")


@MIGRATIONS(name="0001_quarantine_journal")
def _quarantine_journal(db: Database) -> None:
    # No foreign keys here on purpose: the journal is the record of what happened to a user's
    # photo and must be writable (and kept) whatever becomes of the file rows.
    db.execute(
        """
        CREATE TABLE journal (
            id INTEGER PRIMARY KEY,
            file_id INTEGER,
            state TEXT NOT NULL
                CHECK (state IN ('intent', 'done', 'rolled_back', 'restored')),
            original_path BLOB NOT NULL,
            quarantine_path BLOB NOT NULL,
            sha256 TEXT NOT NULL,
            duplicate_of INTEGER,
            tier TEXT NOT NULL,
            similarity REAL,
            rule TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            restored_at REAL
        )
        """
    )
    db.execute("CREATE INDEX journal_state ON journal (state)")
    # "Not a duplicate" verdicts, stored once per unordered pair (file_a < file_b).
    db.execute(
        """
        CREATE TABLE pair_verdicts (
            file_a INTEGER NOT NULL,
            file_b INTEGER NOT NULL,
            verdict TEXT NOT NULL CHECK (verdict IN ('not_duplicate')),
            created_at REAL NOT NULL,
            PRIMARY KEY (file_a, file_b),
            CHECK (file_a < file_b)
        )
        """
    )
    db.execute(
        "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL)"
    )
