"""The store: SQLite as the source of truth, and the only code that speaks SQL.

Everything dupwatch knows lives in one database in the state directory: the files it has seen
and their fingerprints, vectors, glances, decisions, the quarantine journal, "not a duplicate"
verdicts and a little state. Callers get typed frozen records, never rows.
"""

from __future__ import annotations

from dupwatch.store.files import FilesMixin
from dupwatch.store.glances import GlancesMixin
from dupwatch.store.journal import JournalMixin
from dupwatch.store.migrations import MIGRATIONS
from dupwatch.store.records import Decision, FileRecord, VectorBatch
from dupwatch.store.vectors import VectorsMixin


class Store(JournalMixin, FilesMixin, VectorsMixin, GlancesMixin):
    """The dupwatch database. Open with ``Store.open(path)``; close when done."""


__all__ = ["MIGRATIONS", "Decision", "FileRecord", "Store", "VectorBatch"]
