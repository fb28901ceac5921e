"""The store: SQLite as the source of truth, and the only code that speaks SQL.

Everything dupwatch knows lives in one database in the state directory: the files it has seen
and their fingerprints, vectors, decisions, the quarantine journal, "not a duplicate" verdicts
and a little state. Callers get typed frozen records, never rows.
"""

from __future__ import annotations

from dupwatch.store.journal import JournalMixin
from dupwatch.store.migrations import MIGRATIONS


class Store(JournalMixin):
    """The dupwatch database. Open with ``Store.open(path)``; close when done."""


__all__ = ["MIGRATIONS", "Store"]
