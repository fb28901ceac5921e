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


@MIGRATIONS(name="0002_files_vectors_decisions")
def _files_vectors_decisions(db: Database) -> None:
    # path is the exact filesystem bytes; NFC and NFD spellings of a name are different files.
    db.execute(
        """
        CREATE TABLE files (
            id INTEGER PRIMARY KEY,
            path BLOB NOT NULL UNIQUE,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            ctime_ns INTEGER NOT NULL,
            dev INTEGER NOT NULL,
            inode INTEGER NOT NULL,
            sha256 TEXT,
            phash INTEGER,
            width INTEGER,
            height INTEGER,
            format TEXT,
            status TEXT NOT NULL CHECK (status IN ('indexed', 'gone', 'quarantined', 'failed')),
            failure_reason TEXT,
            first_seen REAL NOT NULL,
            last_seen REAL NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX files_sha256 ON files (sha256)")
    db.execute("CREATE INDEX files_status ON files (status)")
    db.execute("CREATE INDEX files_identity ON files (dev, inode)")
    # AUTOINCREMENT keeps seq strictly increasing even after deletes, so "vectors newer than
    # the snapshot" (seq > the snapshot's last seq) never misses a replaced vector.
    db.execute(
        """
        CREATE TABLE vectors (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            file_id INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
            model_id TEXT NOT NULL,
            vector BLOB NOT NULL,
            created_at REAL NOT NULL,
            UNIQUE (file_id, model_id)
        )
        """
    )
    db.execute("CREATE INDEX vectors_model_seq ON vectors (model_id, seq)")
    db.execute(
        """
        CREATE TABLE decisions (
            id INTEGER PRIMARY KEY,
            file_id INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,
            tier TEXT NOT NULL,
            neighbour_id INTEGER REFERENCES files (id) ON DELETE SET NULL,
            similarity REAL,
            verification TEXT,
            action TEXT NOT NULL,
            rule TEXT NOT NULL,
            decided_at REAL NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX decisions_file ON decisions (file_id)")
    db.execute("CREATE INDEX decisions_neighbour ON decisions (neighbour_id)")


@MIGRATIONS(name="0003_journal_purged_state")
def _journal_purged_state(db: Database) -> None:
    # A purge deletes the quarantined file for good; the entry must say so rather than stay
    # "done". SQLite cannot change a CHECK constraint in place, so the table is rebuilt: a copy
    # with the wider CHECK, every row moved across with its id, the old table dropped, the copy
    # renamed and its index recreated. Nothing refers to the journal, so the rename is safe with
    # foreign keys on, and the whole of it runs in the store's one migration transaction.
    db.execute(
        """
        CREATE TABLE journal_0003 (
            id INTEGER PRIMARY KEY,
            file_id INTEGER,
            state TEXT NOT NULL
                CHECK (state IN ('intent', 'done', 'rolled_back', 'restored', 'purged')),
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
    columns = (
        "id, file_id, state, original_path, quarantine_path, sha256, duplicate_of, tier, "
        "similarity, rule, created_at, updated_at, restored_at"
    )
    db.execute(f"INSERT INTO journal_0003 ({columns}) SELECT {columns} FROM journal")
    db.execute("DROP TABLE journal")
    db.execute("ALTER TABLE journal_0003 RENAME TO journal")
    db.execute("CREATE INDEX journal_state ON journal (state)")


@MIGRATIONS(name="0004_glances")
def _glances(db: Database) -> None:
    # A glance (glance.py) per file, kept apart from the file row: it is the largest thing
    # stored per photo, read only for candidates, and remade when its format changes.
    db.execute(
        """
        CREATE TABLE glances (
            file_id INTEGER PRIMARY KEY REFERENCES files (id) ON DELETE CASCADE,
            data BLOB NOT NULL
        )
        """
    )
