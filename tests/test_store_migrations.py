"""Store migrations: from an empty file and from every earlier schema version, with real rows."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sqlite_utils import Database

from dupwatch.errors import StoreError
from dupwatch.records import FileStatus, JournalState
from dupwatch.store import MIGRATIONS, Store
from dupwatch.store.base import connect

# Journal rows in every state the 0001 schema allows, with every column set, so the journal
# rebuild of 0003 is checked column by column.
_JOURNAL_0001 = [
    (1, 1, "done", b"/p/old\xff.jpg", b"/p/q/old.jpg", "ff", 2, "exact", None, "exact_bytes"),
    (4, None, "intent", b"/p/b.jpg", b"/p/q/b.jpg", "bb", None, "duplicate", 0.97, "verified"),
    (5, 3, "rolled_back", b"/p/c.jpg", b"/p/q/c.jpg", "cc", 9, "duplicate", 0.91, "verified"),
    (9, 7, "restored", "/p/caf\u00e9.jpg".encode(), b"/p/q/d.jpg", "dd", 1, "exact", 1.0, "r"),
]


def _seed_0001(conn: sqlite3.Connection) -> None:
    for i, row in enumerate(_JOURNAL_0001):
        restored_at = 40.0 + i if row[2] == "restored" else None
        conn.execute(
            "INSERT INTO journal (id, file_id, state, original_path, quarantine_path, sha256, "
            "duplicate_of, tier, similarity, rule, created_at, updated_at, restored_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*row, 10.0 + i, 20.0 + i, restored_at),
        )
    conn.execute("INSERT INTO pair_verdicts VALUES (1, 2, 'not_duplicate', 1.0)")
    conn.execute("INSERT INTO state VALUES ('k', 'v', 1.0)")


def _check_0001(store: Store) -> None:
    entries = [e for e in store.journal_entries() if e.id in {row[0] for row in _JOURNAL_0001}]
    assert len(entries) == len(_JOURNAL_0001)
    for i, (entry, row) in enumerate(zip(entries, _JOURNAL_0001, strict=True)):
        id_, file_id, state, original, quarantine, sha, dup, tier, similarity, rule = row
        assert (entry.id, entry.file_id, entry.state.value) == (id_, file_id, state)
        assert os.fsencode(entry.original_path) == original
        assert os.fsencode(entry.quarantine_path) == quarantine
        assert (entry.sha256, entry.duplicate_of, entry.tier.value) == (sha, dup, tier)
        assert (entry.similarity, entry.rule, entry.created_at) == (similarity, rule, 10.0 + i)
        assert entry.restored_at == (40.0 + i if state == "restored" else None)
    assert store.is_not_duplicate(2, 1)
    assert store.get_state("k") == "v"


def _seed_0002(conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO files (id, path, size, mtime_ns, ctime_ns, dev, inode, sha256, phash, "
        "width, height, format, status, failure_reason, first_seen, last_seen) "
        "VALUES (10, ?, 5, 6, 7, 8, -1, 'aa', -2, 640, 480, 'jpeg', 'indexed', NULL, 1.0, 2.0)",
        (b"/p/a.jpg",),
    )
    vector = np.full(4, 0.5, dtype="<f2").tobytes()
    conn.execute(
        "INSERT INTO vectors (file_id, model_id, vector, created_at) VALUES (10, 'm', ?, 1)",
        (vector,),
    )
    conn.execute(
        "INSERT INTO decisions (file_id, tier, neighbour_id, similarity, verification, action, "
        "rule, decided_at) VALUES (10, 'unique', NULL, NULL, NULL, 'none', 'no_match', 3.0)"
    )


def _check_0002(store: Store) -> None:
    record = store.file(10)
    assert record is not None
    assert record.status == FileStatus.INDEXED
    assert record.inode == 2**64 - 1
    assert record.phash == 2**64 - 2
    vector = store.vector(10, "m")
    assert vector is not None
    np.testing.assert_allclose(vector, 0.5)
    assert [d.rule for d in store.decisions_for(10)] == ["no_match"]


def _seed_0003(conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO journal (id, file_id, state, original_path, quarantine_path, sha256, "
        "duplicate_of, tier, similarity, rule, created_at, updated_at) "
        "VALUES (30, 10, 'purged', ?, ?, 'ee', 11, 'exact', NULL, 'exact_bytes', 5.0, 6.0)",
        (b"/p/e.jpg", b"/p/q/e.jpg"),
    )


def _check_0003(store: Store) -> None:
    entry = store.journal_entry(30)
    assert entry is not None
    assert entry.state == JournalState.PURGED
    assert store.journal_entries([JournalState.PURGED]) == [entry]


def _seed_0004(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO glances (file_id, data) VALUES (10, ?)", (b"\x01glance",))


def _check_0004(store: Store) -> None:
    assert store.glance(10) == b"\x01glance"
    store.put_glance(10, b"\x01again")
    assert store.glance(10) == b"\x01again"


# Every shipped migration gets a seeder (rows written with that version's schema) and a check
# (those rows still read back through the API once migrated to the newest version).
SEEDS: dict[str, tuple[Callable[[sqlite3.Connection], None], Callable[[Store], None]]] = {
    "0001_quarantine_journal": (_seed_0001, _check_0001),
    "0002_files_vectors_decisions": (_seed_0002, _check_0002),
    "0003_journal_purged_state": (_seed_0003, _check_0003),
    "0004_glances": (_seed_0004, _check_0004),
}


def test_every_migration_has_seed_data() -> None:
    assert [m.name for m in MIGRATIONS._migrations] == list(SEEDS)


@pytest.mark.parametrize("version", range(len(SEEDS) + 1))
def test_migrates_from_each_earlier_version(tmp_path: Path, version: int) -> None:
    path = tmp_path / "db.sqlite"
    names = list(SEEDS)
    conn = connect(path)
    if version < len(names):
        MIGRATIONS.apply(Database(conn), stop_before=names[version])
    else:
        MIGRATIONS.apply(Database(conn))
    for name in names[:version]:
        SEEDS[name][0](conn)
    conn.close()
    with Store.open(path) as store:
        assert store.schema_version() == names
        for name in names[:version]:
            SEEDS[name][1](store)
        assert store.integrity_problems(quick=False) == []
    assert _schema(path) == _schema(_fresh(tmp_path / "fresh.sqlite"))


def _fresh(path: Path) -> Path:
    Store.open(path).close()
    return path


def _schema(path: Path) -> list[tuple[str, str, str]]:
    """Every table and index with its table: a lost index or table shows up as a difference."""
    conn = sqlite3.connect(path)
    try:
        sql = "SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        return sorted(conn.execute(sql).fetchall())
    finally:
        conn.close()


def test_migrated_journal_accepts_purged_and_still_rejects_unknown_states(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    conn = connect(path)
    MIGRATIONS.apply(Database(conn), stop_before="0003_journal_purged_state")
    _seed_0001(conn)
    conn.close()
    with Store.open(path) as store:
        store.journal_set_state(1, JournalState.PURGED)  # a 'done' row from before 0003
        assert store.journal_entry(1).state == JournalState.PURGED  # type: ignore[union-attr]
        with pytest.raises(StoreError, match="cannot go from purged"):
            store.journal_set_state(1, JournalState.RESTORED)
    conn = connect(path)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute("UPDATE journal SET state = 'vanished' WHERE id = 4")
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM journal WHERE state = 'done'"
        ).fetchall()
    finally:
        conn.close()
    assert "journal_state" in str(plan)  # the rebuilt table kept its index


def test_a_failing_migration_leaves_the_previous_schema(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    conn = connect(path)
    MIGRATIONS.apply(Database(conn), stop_before="0002_files_vectors_decisions")
    # A table the migration wants to create already exists: it fails halfway.
    conn.execute("CREATE TABLE decisions (x)")
    conn.close()
    with pytest.raises(StoreError, match="decisions"):
        Store.open(path)
    conn = sqlite3.connect(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert "files" not in tables and "vectors" not in tables


def test_a_journal_rebuild_failing_at_its_last_step_keeps_every_row(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    conn = connect(path)
    MIGRATIONS.apply(Database(conn), stop_before="0003_journal_purged_state")
    _seed_0001(conn)
    # The index name the rebuilt journal needs is taken: 0003 fails after dropping the old
    # table, and everything it did must be undone.
    conn.execute("DROP INDEX journal_state")
    conn.execute("CREATE TABLE other (x)")
    conn.execute("CREATE INDEX journal_state ON other (x)")
    conn.close()
    with pytest.raises(StoreError, match="journal_state"):
        Store.open(path)
    conn = sqlite3.connect(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        states = [r[0] for r in conn.execute("SELECT state FROM journal ORDER BY id")]
    finally:
        conn.close()
    assert "journal_0003" not in tables
    assert states == [row[2] for row in _JOURNAL_0001]
