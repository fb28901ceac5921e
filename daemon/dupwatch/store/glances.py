"""Glances: one encoded blob per file (glance.py reads and writes the encoding)."""

from __future__ import annotations

from dupwatch.store.base import StoreBase


class GlancesMixin(StoreBase):
    def put_glance(self, file_id: int, data: bytes) -> None:
        """Store (or replace) the glance of ``file_id``."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO glances (file_id, data) VALUES (?, ?) "
                "ON CONFLICT (file_id) DO UPDATE SET data = excluded.data",
                (file_id, data),
            )

    def glance(self, file_id: int) -> bytes | None:
        with self._read() as conn:
            row = conn.execute("SELECT data FROM glances WHERE file_id = ?", (file_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def drop_glance(self, file_id: int) -> None:
        """Forget the glance of ``file_id`` (its content changed and was not glanced at)."""
        with self._write() as conn:
            conn.execute("DELETE FROM glances WHERE file_id = ?", (file_id,))
