"""Store: opening and migrating, the quarantine journal, pair verdicts, state, concurrency."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dupwatch.errors import StateDirError, StoreError
from dupwatch.records import JournalState, Tier
from dupwatch.statedir import check_state_dir, is_network_type, mount_type
from dupwatch.store import MIGRATIONS, Store, base
from dupwatch.store.base import connect


def _intent(store: Store, name: str = "a.jpg", **overrides: object) -> object:
    fields: dict[str, object] = {
        "file_id": 7,
        "original_path": Path("/photos") / name,
        "quarantine_path": Path("/photos/.dupwatch-quarantine") / name,
        "sha256": "ab" * 32,
        "duplicate_of": 3,
        "tier": Tier.DUPLICATE,
        "similarity": 0.97,
        "rule": "near_duplicate",
    }
    fields.update(overrides)
    return store.journal_intent(**fields)  # type: ignore[arg-type]


def test_open_sets_wal_normal_sync_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    with Store.open(tmp_path / "db.sqlite") as store:
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 30_000
        assert store.schema_version() == [m.name for m in MIGRATIONS._migrations]
        assert store.integrity_problems(quick=False) == []


def _count_log_syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files ``os.fsync`` is called on from the store, by name."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(str(Path(f"/proc/self/fd/{fd}").readlink()))
        real(fd)

    monkeypatch.setattr(base.os, "fsync", fsync)
    return synced


def test_journal_steps_and_verdicts_reach_the_disk_before_returning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store.open(tmp_path / "db.sqlite") as store:
        synced = _count_log_syncs(monkeypatch)
        entry = _intent(store)
        assert synced == [str(tmp_path / "db.sqlite-wal")]
        store.journal_set_state(entry.id, JournalState.DONE)  # type: ignore[attr-defined]
        store.add_not_duplicate(1, 2)
        assert len(synced) == 3


def test_ordinary_writes_are_not_synced_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store.open(tmp_path / "db.sqlite") as store:
        synced = _count_log_syncs(monkeypatch)
        store.set_state("k", "v")
        assert synced == []


def test_durable_write_inside_a_batch_is_synced_when_the_batch_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store.open(tmp_path / "db.sqlite") as store:
        synced = _count_log_syncs(monkeypatch)
        with store.batch():
            store.set_state("k", "v")
            _intent(store)
            assert synced == []  # nothing is committed yet
        assert synced == [str(tmp_path / "db.sqlite-wal")]


def test_journal_intent_round_trips_every_field_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    with Store.open(path) as store:
        entry = _intent(store)
    with Store.open(path) as store:
        again = store.journal_entry(entry.id)  # type: ignore[attr-defined]
    assert again == entry
    assert again is not None
    assert again.state == JournalState.INTENT
    assert again.original_path == Path("/photos/a.jpg")
    assert again.tier == Tier.DUPLICATE
    assert again.similarity == pytest.approx(0.97)
    assert again.restored_at is None


def test_journal_paths_keep_undecodable_bytes_and_normalisation_forms(tmp_path: Path) -> None:
    raw = Path(os.fsdecode(b"/photos/caf\xe9-latin1.jpg"))
    nfc = Path("/photos/caf\u00e9.jpg")
    nfd = Path("/photos/cafe\u0301.jpg")
    with Store.open(tmp_path / "db.sqlite") as store:
        ids = [_intent(store, original_path=p).id for p in (raw, nfc, nfd)]  # type: ignore[attr-defined]
        got = [store.journal_entry(i) for i in ids]
    assert [os.fsencode(e.original_path) for e in got if e] == [
        b"/photos/caf\xe9-latin1.jpg",
        "/photos/caf\u00e9.jpg".encode(),
        "/photos/cafe\u0301.jpg".encode(),
    ]


def test_journal_states_move_only_forward(tmp_path: Path) -> None:
    with Store.open(tmp_path / "db.sqlite") as store:
        done = _intent(store, "done.jpg").id  # type: ignore[attr-defined]
        back = _intent(store, "back.jpg").id  # type: ignore[attr-defined]
        store.journal_set_state(done, JournalState.DONE)
        store.journal_set_state(done, JournalState.DONE)  # repeating a step is harmless
        store.journal_set_state(back, JournalState.ROLLED_BACK)
        assert store.journal_pending() == []
        with pytest.raises(StoreError, match="rolled_back to restored"):
            store.journal_set_state(back, JournalState.RESTORED)
        with pytest.raises(StoreError, match="done to intent"):
            store.journal_set_state(done, JournalState.INTENT)
        with pytest.raises(StoreError, match="does not exist"):
            store.journal_set_state(999, JournalState.DONE)
        before = time.time()
        store.journal_set_state(done, JournalState.RESTORED)
        restored = store.journal_entry(done)
        assert restored is not None
        assert restored.state == JournalState.RESTORED
        assert restored.restored_at is not None
        assert restored.restored_at >= before


def test_only_a_done_entry_can_be_purged_and_a_purged_one_stays_purged(tmp_path: Path) -> None:
    with Store.open(tmp_path / "db.sqlite") as store:
        held = _intent(store, "held.jpg").id  # type: ignore[attr-defined]
        pending = _intent(store, "pending.jpg").id  # type: ignore[attr-defined]
        with pytest.raises(StoreError, match="intent to purged"):
            store.journal_set_state(pending, JournalState.PURGED)
        store.journal_set_state(held, JournalState.DONE)
        store.journal_set_state(held, JournalState.PURGED)
        store.journal_set_state(held, JournalState.PURGED)  # repeating a step is harmless
        for later in (JournalState.RESTORED, JournalState.DONE, JournalState.ROLLED_BACK):
            with pytest.raises(StoreError, match="purged to"):
                store.journal_set_state(held, later)
    with Store.open(tmp_path / "db.sqlite") as store:
        purged = store.journal_entry(held)
        assert purged is not None
        assert (purged.state, purged.restored_at) == (JournalState.PURGED, None)
        assert [e.id for e in store.journal_entries([JournalState.DONE])] == []


def test_journal_lists_pending_and_filters_by_state(tmp_path: Path) -> None:
    with Store.open(tmp_path / "db.sqlite") as store:
        ids = [_intent(store, f"{i}.jpg").id for i in range(4)]  # type: ignore[attr-defined]
        store.journal_set_state(ids[1], JournalState.DONE)
        store.journal_set_state(ids[2], JournalState.ROLLED_BACK)
        store.journal_update_quarantine_path(ids[3], Path("/q/3 (1).jpg"))
        assert [e.id for e in store.journal_pending()] == [ids[0], ids[3]]
        assert store.journal_pending()[1].quarantine_path == Path("/q/3 (1).jpg")
        assert [e.id for e in store.journal_entries()] == ids
        assert [e.id for e in store.journal_entries({JournalState.DONE})] == [ids[1]]
        assert store.journal_entries([]) == []
        assert store.journal_entry(12345) is None
        with pytest.raises(StoreError):
            store.journal_update_quarantine_path(12345, Path("/q/x"))


def test_not_duplicate_verdicts_are_symmetric(tmp_path: Path) -> None:
    with Store.open(tmp_path / "db.sqlite") as store:
        assert not store.is_not_duplicate(5, 2)
        store.add_not_duplicate(5, 2)
        store.add_not_duplicate(2, 5)  # recorded once
        assert store.is_not_duplicate(2, 5)
        assert store.is_not_duplicate(5, 2)
        assert not store.is_not_duplicate(2, 6)
        with pytest.raises(ValueError):
            store.add_not_duplicate(4, 4)


def test_state_values_are_replaced_and_persist(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    with Store.open(path) as store:
        assert store.get_state("snapshot") is None
        store.set_state("snapshot", "one")
        store.set_state("snapshot", "two")
    with Store.open(path) as store:
        assert store.get_state("snapshot") == "two"


# --- concurrency and crashes, with a second real process -----------------------------------

_CHILD_READ = """
import sys, time
from pathlib import Path
from dupwatch.store import MIGRATIONS, Store
start = time.monotonic()
with Store.open(Path(sys.argv[1])) as store:
    n = len(store.journal_entries())
print(n, round(time.monotonic() - start, 3))
"""


def test_a_second_process_reads_while_a_write_is_open(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    with Store.open(path) as store:
        _intent(store, "committed.jpg")
        writer = connect(path)
        try:
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("UPDATE journal SET rule = 'uncommitted'")
            writer.execute("DELETE FROM pair_verdicts")
            result = subprocess.run(
                [sys.executable, "-c", _CHILD_READ, str(path)],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            count, seconds = result.stdout.split()
            # The reader sees the committed row at once; it neither waits nor fails.
            assert int(count) == 1
            assert float(seconds) < 5.0
            writer.execute("ROLLBACK")
        finally:
            writer.close()


_CHILD_WRITE = """
import sys
from pathlib import Path
from dupwatch.records import Tier
from dupwatch.store import MIGRATIONS, Store
with Store.open(Path(sys.argv[1])) as store:
    store.journal_intent(file_id=None, original_path=Path("/x"), quarantine_path=Path("/q/x"),
        sha256="00", duplicate_of=None, tier=Tier.EXACT, similarity=None, rule="child")
print("written")
"""


def test_a_second_writer_waits_for_the_first_instead_of_failing(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    Store.open(path).close()
    writer = connect(path)
    try:
        writer.execute("BEGIN IMMEDIATE")
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD_WRITE, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            time.sleep(1.5)
            assert child.poll() is None  # still waiting for the lock, not failed
            writer.execute("COMMIT")
            out, err = child.communicate(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(timeout=10)
        assert child.returncode == 0, err
        assert out.strip() == "written"
    finally:
        writer.close()
    with Store.open(path) as store:
        assert [e.rule for e in store.journal_entries()] == ["child"]


_CHILD_CRASH = """
import sys
from pathlib import Path
from dupwatch.store import MIGRATIONS, Store
store = Store.open(Path(sys.argv[1]))
with store._write() as conn:
    for i in range(100):
        conn.execute("INSERT INTO state VALUES (?, 'first', 0)", (f"a{i}",))
print("committed", flush=True)
with store._write() as conn:
    i = 0
    while True:
        conn.execute("INSERT INTO state VALUES (?, 'second', 0)", (f"b{i}",))
        conn.execute("UPDATE state SET value = 'changed' WHERE key = 'a0'")
        i += 1
        if i == 2000:
            print("inside", flush=True)
"""


def test_kill_9_mid_transaction_leaves_the_database_consistent(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    Store.open(path).close()
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD_CRASH, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "committed"
        assert child.stdout.readline().strip() == "inside"
        time.sleep(0.2)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL
    with Store.open(path) as store:
        assert store.integrity_problems(quick=False) == []
        conn = store._conn
        rows = dict(conn.execute("SELECT value, count(*) FROM state GROUP BY value").fetchall())
    # The committed transaction is all there; the killed one left nothing behind.
    assert rows == {"first": 100}


# --- state directory on a network filesystem --------------------------------------------------


def test_network_filesystems_are_recognised_by_mount_type() -> None:
    for kind in ("nfs", "nfs4", "cifs", "smb3", "fuse.sshfs", "fuse.mergerfs", "9p"):
        assert is_network_type(kind), kind
    for kind in ("ext4", "btrfs", "xfs", "zfs", "tmpfs", "overlay"):
        assert not is_network_type(kind), kind


def test_mount_table_lookup_picks_the_longest_mount_point(tmp_path: Path) -> None:
    state = tmp_path / "state dir"
    state.mkdir()
    mounts = tmp_path / "mounts"
    escaped = str(state).replace(" ", "\\040")
    mounts.write_text(
        "/dev/sda1 / ext4 rw 0 0\n"
        f"server:/export {escaped} nfs4 rw 0 0\n"
        f"server:/other {escaped}-sibling nfs4 rw 0 0\n",
        encoding="utf-8",
    )
    assert mount_type(state, mounts) == "nfs4"
    assert mount_type(tmp_path, mounts) == "ext4"


def test_state_dir_on_a_network_mount_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(f"nas:/vol {tmp_path} cifs rw 0 0\n", encoding="utf-8")
    with pytest.raises(StateDirError, match=r"cifs filesystem.*local disk"):
        check_state_dir(tmp_path, mounts_file=mounts)
    check_state_dir(tmp_path)  # the real local tmp directory passes
    with pytest.raises(StateDirError, match="does not exist"):
        Store.open(tmp_path / "missing" / "db.sqlite")
