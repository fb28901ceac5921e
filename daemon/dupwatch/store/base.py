"""The store's connection: PRAGMAs, migrations at open, and explicit transactions."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

import structlog
from sqlite_utils import Database

from dupwatch.errors import StoreError
from dupwatch.statedir import check_state_dir
from dupwatch.store.migrations import MIGRATIONS

log = structlog.get_logger(__name__)

# How long a connection waits for another writer before failing. Writes are short (one file, one
# journal step), so a minute is only ever reached if something is badly wrong; a CLI reading
# while the daemon writes never waits at all in WAL mode.
BUSY_TIMEOUT_S = 60.0


def connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` with the PRAGMAs every dupwatch connection needs."""
    try:
        # isolation_level=None: the driver never opens transactions behind our back; every
        # write below starts its own BEGIN IMMEDIATE, so two writers queue instead of failing.
        conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{path}: cannot switch the database to WAL mode (got {mode})")
        # NORMAL: a commit survives a crash of the process; a power cut may undo the last
        # ones, which a reconciliation redoes. Writes that must survive power loss too (a
        # quarantine intent before the file is touched) are made durable one by one.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        raise StoreError(f"{path}: cannot open the database: {_explain(path, exc)}") from exc
    return conn


# Below this much free space SQLite's "disk I/O error" or "database or disk is full" is
# almost certainly a full filesystem, and saying so is what the owner needs to read.
_NEARLY_FULL = 1 << 20


def _explain(path: Path, exc: sqlite3.Error) -> str:
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return str(exc)
    if free < _NEARLY_FULL:
        return f"the state directory's filesystem is full ({free} bytes free; {exc})"
    return str(exc)


class StoreBase:
    """One connection shared by the threads of one process, serialised by a lock."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._db = Database(conn)
        self._lock = threading.RLock()
        # A durable write made inside a batch: the batch's commit syncs.
        self._sync_at_commit = False

    @classmethod
    def open(cls, path: Path) -> Self:
        """Open (creating if needed) and migrate the database at ``path``.

        Raises StateDirError if its directory is missing or on a network filesystem, and
        StoreError if the database cannot be opened or migrated.
        """
        check_state_dir(path.parent)
        conn = connect(path)
        store = cls(path, conn)
        try:
            store._migrate()
        except BaseException:
            conn.close()
            raise
        return store

    def _migrate(self) -> None:
        pending = [m.name for m in MIGRATIONS.pending(self._db)]
        if not pending:
            return
        # One IMMEDIATE transaction around every pending migration: two processes opening a
        # new database at once cannot both migrate, and a crash leaves the old schema intact.
        try:
            with self._write(durable=True):
                MIGRATIONS.apply(self._db)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot migrate the database: {exc}") from exc
        log.info("store_migrated", path=self.path, applied=pending)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction: all of it is committed, or none of it.

        Inside ``batch()`` it becomes a savepoint, so a failed call undoes only its own part.
        ``durable``: on disk when this returns (or when the enclosing batch commits), power
        cut or not. A write SQLite refuses (a full disk, an I/O error) raises StoreError
        naming the cause.
        """
        try:
            with self._transaction(durable) as conn:
                yield conn
        except sqlite3.OperationalError as exc:
            raise StoreError(f"{self.path}: cannot write: {_explain(self.path, exc)}") from exc

    def _sync_log(self) -> None:
        """Flush the write-ahead log to disk: what synchronous=FULL does at every commit."""
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            fd = os.open(wal, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot sync the write-ahead log: {exc}") from exc

    @contextmanager
    def _transaction(self, durable: bool) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn.in_transaction:
                self._conn.execute("SAVEPOINT store_write")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK TO store_write")
                    self._conn.execute("RELEASE store_write")
                    raise
                self._conn.execute("RELEASE store_write")
                self._sync_at_commit |= durable
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._sync_at_commit = False
                # SQLite may already have rolled back (a full disk does that).
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            try:
                self._conn.execute("COMMIT")
            except BaseException:
                self._sync_at_commit = False
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            if durable or self._sync_at_commit:
                self._sync_at_commit = False
                self._sync_log()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group many writes into one transaction (one fsync): a scan, an import, a benchmark.

        Other threads of this process wait until the batch ends; keep batches to seconds.
        """
        with self._write():
            yield

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """Reads under the lock; callers consume their cursors inside the block."""
        with self._lock:
            yield self._conn

    def copy_to(self, path: Path) -> None:
        """Write a consistent copy of the database to ``path`` (a dry run works on one)."""
        target = sqlite3.connect(path)
        try:
            with self._lock:
                self._conn.backup(target)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot copy the database: {exc}") from exc
        finally:
            target.close()

    def schema_version(self) -> list[str]:
        """Names of the migrations applied, in order."""
        with self._read():
            return [m.name for m in MIGRATIONS.applied(self._db)]

    def integrity_problems(self, *, quick: bool = True) -> list[str]:
        """An empty list if the database is sound; otherwise SQLite's description of each fault."""
        pragma = "quick_check" if quick else "integrity_check"
        with self._read() as conn:
            rows = [str(r[0]) for r in conn.execute(f"PRAGMA {pragma}")]
            rows += [str(tuple(r)) for r in conn.execute("PRAGMA foreign_key_check")]
        return [] if rows == ["ok"] else [r for r in rows if r != "ok"]

    def get_state(self, key: str) -> str | None:
        """A value from the small key/value state table (snapshot names, scan progress)."""
        with self._read() as conn:
            row = conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_state(self, key: str, value: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO state (key, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at",
                (key, value, time.time()),
            )
