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


def _seed_0001(conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO journal (file_id, state, original_path, quarantine_path, sha256, "
        "duplicate_of, tier, similarity, rule, created_at, updated_at) "
        "VALUES (1, 'done', ?, ?, 'ff', 2, 'exact', NULL, 'exact_bytes', 1.0, 1.0)",
        (b"/p/old\xff.jpg", b"/p/q/old.jpg"),
    )
    conn.execute("INSERT INTO pair_verdicts VALUES (1, 2, 'not_duplicate', 1.0)")
    conn.execute("INSERT INTO state VALUES ('k', 'v', 1.0)")


def _check_0001(store: Store) -> None:
    [entry] = store.journal_entries()
    assert os.fsencode(entry.original_path) == b"/p/old\xff.jpg"
    assert entry.state == JournalState.DONE
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


# Every shipped migration gets a seeder (rows written with that version's schema) and a check
# (those rows still read back through the API once migrated to the newest version).
SEEDS: dict[str, tuple[Callable[[sqlite3.Connection], None], Callable[[Store], None]]] = {
    "0001_quarantine_journal": (_seed_0001, _check_0001),
    "0002_files_vectors_decisions": (_seed_0002, _check_0002),
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


def test_a_failing_migration_leaves_the_previous_schema(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    conn = connect(path)
    MIGRATIONS.apply(Database(conn), stop_before=list(SEEDS)[-1])
    # A table the last migration wants to create already exists: it fails halfway.
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
