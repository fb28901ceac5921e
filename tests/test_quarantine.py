"""Quarantine: moves that keep every byte and attribute, never overwrite, survive crashes."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import skimage.data
from faults import exdev_once, run_in_fork, tmpfs_at
from structlog.testing import capture_logs

from dupwatch import fsops
from dupwatch.errors import FileChanged, QuarantineError, RestoreRefused
from dupwatch.quarantine import Quarantine
from dupwatch.records import JournalEntry, JournalState, StatKey, Tier
from dupwatch.store import Store

QDIR = ".dupwatch-quarantine"
LITTER_PREFIXES = (".dupwatch-partial-", ".dupwatch-restoring-")


# --- real photos and helpers ---


def _jpeg(image: np.ndarray[Any, Any], quality: int = 90) -> bytes:
    ok, buf = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


PHOTO = _jpeg(skimage.data.astronaut())
OTHER_PHOTO = _jpeg(skimage.data.coffee())


def write_photo(path: Path, data: bytes = PHOTO, *, mode: int = 0o640, mtime_ns: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    stamp = mtime_ns or 1_600_000_000_123_456_789
    os.utime(path, ns=(stamp - 10**9, stamp))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def try_set_xattrs(path: Path) -> bool:
    try:
        os.setxattr(path, "user.dupwatch.test", b"kept \x00 bytes")
        os.setxattr(path, "user.DOSATTRIB", b"0x20")
    except OSError:
        return False
    return True


def xattrs(path: Path) -> dict[str, bytes]:
    return {name: os.getxattr(path, name) for name in os.listxattr(path)}


def move(q: Quarantine, path: Path, **overrides: Any) -> JournalEntry:
    args: dict[str, Any] = {
        "file_id": 7,
        "duplicate_of": 3,
        "tier": Tier.EXACT,
        "similarity": 1.0,
        "rule": "exact_bytes",
    }
    args.update(overrides)
    if "expected" not in args:
        args["expected"] = StatKey.of(path)
    if "sha256" not in args:
        args["sha256"] = sha(path)
    return q.move(path, **args)


def all_files(*tops: Path) -> list[Path]:
    return sorted(p for top in tops for p in top.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    state = tmp_path / "state"
    state.mkdir()
    db = Store.open(state / "dupwatch.db")
    try:
        yield db
    finally:
        db.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "photos"
    path.mkdir()
    return path


@pytest.fixture
def q(store: Store, root: Path) -> Quarantine:
    return Quarantine(store, [root])


# --- moving in ---


def test_move_keeps_bytes_mode_mtime_xattrs_and_inode(q: Quarantine, root: Path) -> None:
    photo = write_photo(root / "2023" / "trip" / "IMG_0001.JPG", mode=0o604)
    has_xattrs = try_set_xattrs(photo)
    before = photo.lstat()
    before_xattrs = xattrs(photo)

    entry = move(q, photo)

    kept = root / QDIR / "2023" / "trip" / "IMG_0001.JPG"
    assert entry.quarantine_path == kept
    assert entry.state is JournalState.DONE
    assert not photo.exists()
    after = kept.lstat()
    assert kept.read_bytes() == PHOTO
    assert stat.S_IMODE(after.st_mode) == 0o604
    assert after.st_mtime_ns == before.st_mtime_ns
    assert after.st_ino == before.st_ino  # a rename, not a copy
    assert xattrs(kept) == before_xattrs
    if not has_xattrs:
        pytest.skip("this filesystem refuses user.* xattrs; bytes, mode and mtime were checked")


def test_move_records_the_decision_in_the_journal(q: Quarantine, store: Store, root: Path) -> None:
    photo = write_photo(root / "a.jpg")
    entry = move(q, photo, tier=Tier.DUPLICATE, similarity=0.97, rule="verified_same_photo")
    stored = store.journal_entry(entry.id)
    assert stored == entry
    assert (stored.original_path, stored.sha256) == (photo, hashlib.sha256(PHOTO).hexdigest())
    assert (stored.file_id, stored.duplicate_of, stored.tier) == (7, 3, Tier.DUPLICATE)
    assert stored.rule == "verified_same_photo"
    assert store.journal_pending() == []


def test_quarantine_directories_mirror_the_original_modes(q: Quarantine, root: Path) -> None:
    photo = write_photo(root / "private" / "x.jpg")
    (root / "private").chmod(0o700)
    root.chmod(0o757)
    move(q, photo)
    assert stat.S_IMODE((root / QDIR).stat().st_mode) == 0o755  # never world-writable
    assert stat.S_IMODE((root / QDIR / "private").stat().st_mode) == 0o700


def test_move_logs_file_quarantined_with_its_reasons(q: Quarantine, root: Path) -> None:
    photo = write_photo(root / "a.jpg")
    with capture_logs() as logs:
        entry = move(q, photo)
    (event,) = [e for e in logs if e["event"] == "file_quarantined"]
    assert event["path"] == photo
    assert event["quarantine_path"] == entry.quarantine_path
    assert (event["duplicate_of"], event["tier"], event["rule"]) == (3, "exact", "exact_bytes")


@pytest.mark.parametrize(
    "count", [200, pytest.param(1000, marks=pytest.mark.slow)], ids=lambda n: f"{n}-files"
)
def test_quarantine_never_overwrites_existing_file(q: Quarantine, root: Path, count: int) -> None:
    # The same name arrives again and again, each a different file: every one must survive.
    photo = root / "DCIM" / "IMG_0001.JPG"
    hashes = []
    for n in range(count):
        data = PHOTO + n.to_bytes(4, "big")  # bytes after the JPEG's end marker: still a photo
        hashes.append(hashlib.sha256(data).hexdigest())
        move(q, write_photo(photo, data))
    kept = all_files(root / QDIR)
    assert len(kept) == count
    assert sorted(sha(p) for p in kept) == sorted(hashes)
    assert (root / QDIR / "DCIM" / f"IMG_0001 ({count}).JPG").exists()


def test_names_from_different_directories_keep_their_relative_paths(
    q: Quarantine, root: Path
) -> None:
    for n in range(50):
        move(q, write_photo(root / f"phone{n}" / "IMG_0001.JPG", PHOTO + bytes([n])))
    kept = all_files(root / QDIR)
    assert [p.relative_to(root / QDIR).parts[1] for p in kept] == ["IMG_0001.JPG"] * 50
    assert len({sha(p) for p in kept}) == 50


def test_a_foreign_file_in_the_quarantine_is_not_overwritten(q: Quarantine, root: Path) -> None:
    foreign = write_photo(root / QDIR / "a.jpg", OTHER_PHOTO)
    entry = move(q, write_photo(root / "a.jpg"))
    assert foreign.read_bytes() == OTHER_PHOTO
    assert entry.quarantine_path == root / QDIR / "a (2).jpg"
    assert entry.quarantine_path.read_bytes() == PHOTO


def test_name_taken_between_choice_and_rename_gets_the_next_name(
    q: Quarantine, store: Store, root: Path
) -> None:
    photo = write_photo(root / "a.jpg")
    intruder = root / QDIR / "a.jpg"

    def another_writer(operation: str) -> None:
        if operation == "rename" and not intruder.exists():
            intruder.write_bytes(OTHER_PHOTO)

    fsops.set_fault_hook(another_writer)
    try:
        entry = move(q, photo)
    finally:
        fsops.set_fault_hook(None)
    assert intruder.read_bytes() == OTHER_PHOTO
    assert entry.quarantine_path == root / QDIR / "a (2).jpg"
    assert store.journal_entry(entry.id) == entry
    assert entry.quarantine_path.read_bytes() == PHOTO


def test_long_names_get_a_suffix_within_the_name_limit(q: Quarantine, root: Path) -> None:
    name = "é" * 123 + ".jpg"  # 250 bytes
    move(q, write_photo(root / name))
    entry = move(q, write_photo(root / name, OTHER_PHOTO))
    assert len(os.fsencode(entry.quarantine_path.name)) <= 255
    assert entry.quarantine_path.name.endswith(" (2).jpg")
    assert entry.quarantine_path.read_bytes() == OTHER_PHOTO


def test_non_utf8_names_round_trip(q: Quarantine, store: Store, root: Path) -> None:
    name = os.fsdecode(b"caf\xe9 \n\x1b[31m.jpg")
    photo = write_photo(root / name)
    entry = move(q, photo)
    assert os.fsencode(entry.quarantine_path.name) == b"caf\xe9 \n\x1b[31m.jpg"
    assert q.restore(entry.id) == photo
    assert photo.read_bytes() == PHOTO


# --- the identity check ---


def _touch_later(path: Path) -> None:
    st = path.lstat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))


def _rewrite(path: Path) -> None:
    path.write_bytes(OTHER_PHOTO)


def _replace(path: Path) -> None:
    new = path.with_name("new.jpg")
    write_photo(new)
    new.replace(path)


def _symlink(path: Path) -> None:
    target = path.with_name("target.jpg")
    path.rename(target)
    path.symlink_to(target)


@pytest.mark.parametrize(
    "change",
    [_touch_later, _rewrite, _replace, _symlink, Path.unlink],
    ids=["mtime", "bytes", "replaced", "symlink", "deleted"],
)
def test_identity_change_aborts_move(
    q: Quarantine, store: Store, root: Path, change: Callable[[Path], None]
) -> None:
    photo = write_photo(root / "a.jpg")
    expected, digest = StatKey.of(photo), sha(photo)
    change(photo)
    before = {p: p.read_bytes() for p in all_files(root)}
    with pytest.raises(FileChanged):
        move(q, photo, expected=expected, sha256=digest)
    assert {p: p.read_bytes() for p in all_files(root)} == before
    assert store.journal_entries([JournalState.INTENT, JournalState.DONE]) == []


def test_identity_change_after_the_journal_intent_rolls_back(
    q: Quarantine, store: Store, root: Path
) -> None:
    photo = write_photo(root / "a.jpg")
    expected, digest = StatKey.of(photo), sha(photo)

    real_intent = store.journal_intent

    def intent_then_edit(**kwargs: Any) -> JournalEntry:
        entry = real_intent(**kwargs)
        _touch_later(photo)
        return entry

    store.journal_intent = intent_then_edit  # type: ignore[method-assign]
    with pytest.raises(FileChanged):
        move(q, photo, expected=expected, sha256=digest)
    assert photo.read_bytes() == PHOTO
    (entry,) = store.journal_entries()
    assert entry.state is JournalState.ROLLED_BACK
    assert all_files(root) == [photo]


def test_a_directory_swapped_for_a_symlink_is_never_followed(
    q: Quarantine, tmp_path: Path, root: Path
) -> None:
    photo = write_photo(root / "album" / "a.jpg")
    expected, digest = StatKey.of(photo), sha(photo)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.link(photo, outside / "a.jpg")  # same inode: only the path tells them apart
    (root / "album").rename(root / "album-moved")
    (root / "album").symlink_to(outside)
    with pytest.raises(FileChanged):
        move(q, photo, expected=expected, sha256=digest)
    assert (outside / "a.jpg").read_bytes() == PHOTO
    assert not (root / QDIR).exists() or all_files(root / QDIR) == []


def test_files_inside_the_quarantine_or_outside_the_roots_are_refused(
    q: Quarantine, tmp_path: Path, root: Path
) -> None:
    entry = move(q, write_photo(root / "a.jpg"))
    with pytest.raises(QuarantineError, match="inside the quarantine"):
        move(q, entry.quarantine_path)
    stranger = write_photo(tmp_path / "elsewhere" / "b.jpg")
    with pytest.raises(QuarantineError, match="outside the watched roots"):
        move(q, stranger)
    with pytest.raises(QuarantineError, match=r"'\.\.'"):
        move(q, root / "x" / ".." / "a.jpg", expected=StatKey.of(stranger), sha256="0" * 64)
    assert stranger.exists()


# --- rename without replace, and its fallback ---


def test_link_fallback_moves_without_leaving_a_second_name(
    q: Quarantine, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(*_args: object) -> None:
        raise OSError(errno.EINVAL, "RENAME_NOREPLACE not supported by this filesystem")

    monkeypatch.setattr(fsops, "_renameat2", unsupported)
    write_photo(root / QDIR / "a.jpg", OTHER_PHOTO)
    photo = write_photo(root / "a.jpg")
    inode = photo.lstat().st_ino
    entry = move(q, photo)
    assert not photo.exists()
    assert entry.quarantine_path.lstat().st_ino == inode
    assert entry.quarantine_path.lstat().st_nlink == 1
    assert (root / QDIR / "a.jpg").read_bytes() == OTHER_PHOTO


def test_rename_noreplace_refuses_an_existing_name(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            fsops.rename_noreplace(fd, "a", fd, "b")
    finally:
        os.close(fd)
    assert (tmp_path / "a").read_bytes() == b"a"
    assert (tmp_path / "b").read_bytes() == b"b"


# --- across filesystems ---


def test_cross_filesystem_move_copies_verifies_and_keeps_metadata(
    q: Quarantine, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = write_photo(root / "a" / "b.jpg", mode=0o600)
    has_xattrs = try_set_xattrs(photo)
    digest = sha(photo)  # reading first, so the atime compared below is the final one
    before, before_xattrs = photo.lstat(), xattrs(photo)
    calls = exdev_once(monkeypatch)
    entry = move(q, photo, sha256=digest)
    assert calls == ["b.jpg", ".dupwatch-partial-1"]
    kept = entry.quarantine_path
    after = kept.lstat()
    assert not photo.exists()
    assert kept.read_bytes() == PHOTO
    assert after.st_ino != before.st_ino  # really the copy path
    assert stat.S_IMODE(after.st_mode) == 0o600
    assert (after.st_mtime_ns, after.st_atime_ns) == (before.st_mtime_ns, before.st_atime_ns)
    assert xattrs(kept) == before_xattrs
    assert all_files(root) == [kept]
    assert entry.state is JournalState.DONE
    if not has_xattrs:
        pytest.skip("this filesystem refuses user.* xattrs; the rest was checked")


def test_cross_filesystem_move_stops_if_the_source_changes_during_the_copy(
    q: Quarantine, store: Store, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = write_photo(root / "a.jpg")
    exdev_once(monkeypatch)
    edited = False

    def edit_after_copy(operation: str) -> None:
        nonlocal edited
        if operation == "utime" and not edited:
            edited = True
            photo.write_bytes(OTHER_PHOTO)  # the owner saves an edit mid-copy

    fsops.set_fault_hook(edit_after_copy)
    try:
        with pytest.raises(FileChanged):
            move(q, photo)
    finally:
        fsops.set_fault_hook(None)
    assert all_files(root) == [photo]
    assert photo.read_bytes() == OTHER_PHOTO
    assert [e.state for e in store.journal_entries()] == [JournalState.ROLLED_BACK]


def test_cross_filesystem_move_names_an_xattr_it_cannot_copy(
    q: Quarantine, store: Store, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = write_photo(root / "a.jpg")
    if not try_set_xattrs(photo):
        pytest.skip("this filesystem refuses user.* xattrs")
    exdev_once(monkeypatch)
    real_setxattr = os.setxattr

    def refuse_dos_attributes(target: Any, name: str, value: bytes, *args: Any) -> None:
        if name == "user.DOSATTRIB":
            raise OSError(errno.ENOTSUP, "Operation not supported")
        real_setxattr(target, name, value, *args)

    monkeypatch.setattr(os, "setxattr", refuse_dos_attributes)
    with pytest.raises(QuarantineError, match=r"user\.DOSATTRIB"):
        move(q, photo)
    assert all_files(root) == [photo]
    assert photo.read_bytes() == PHOTO
    assert [e.state for e in store.journal_entries()] == [JournalState.ROLLED_BACK]


@pytest.fixture
def tmpfs_card(root: Path) -> Iterator[Path]:
    """A real second filesystem (tmpfs) mounted inside the root, like a memory card."""
    card = root / "card"
    card.mkdir()
    with tmpfs_at(card, "size=16m") as mounted:
        yield mounted


def test_cross_filesystem_move_and_restore_for_real(
    q: Quarantine, store: Store, root: Path, tmpfs_card: Path
) -> None:
    photo = write_photo(tmpfs_card / "DCIM" / "IMG_0001.JPG", mode=0o644)
    has_xattrs = try_set_xattrs(photo)
    before, before_xattrs = photo.lstat(), xattrs(photo)
    assert before.st_dev != root.lstat().st_dev

    entry = move(q, photo)
    kept = root / QDIR / "card" / "DCIM" / "IMG_0001.JPG"
    assert entry.quarantine_path == kept
    assert not photo.exists()
    assert kept.read_bytes() == PHOTO
    assert (stat.S_IMODE(kept.lstat().st_mode), kept.lstat().st_mtime_ns) == (
        0o644,
        before.st_mtime_ns,
    )
    assert xattrs(kept) == before_xattrs

    assert q.restore(entry.id) == photo
    assert photo.read_bytes() == PHOTO
    assert photo.lstat().st_mtime_ns == before.st_mtime_ns
    assert xattrs(photo) == before_xattrs
    assert all_files(root) == [photo]
    assert store.journal_entry(entry.id).state is JournalState.RESTORED  # type: ignore[union-attr]
    if not has_xattrs:
        pytest.skip("tmpfs refuses user.* xattrs on this kernel; the rest was checked")


# --- restore ---


def test_restore_round_trip_is_byte_identical_with_mode_mtime_and_xattrs(
    q: Quarantine, store: Store, root: Path
) -> None:
    photo = write_photo(root / "2023" / "a.jpg", mode=0o604)
    has_xattrs = try_set_xattrs(photo)
    before, before_xattrs = photo.lstat(), xattrs(photo)
    entry = move(q, photo, file_id=11, duplicate_of=5)

    with capture_logs() as logs:
        assert q.restore(entry.id) == photo

    after = photo.lstat()
    assert photo.read_bytes() == PHOTO
    assert (stat.S_IMODE(after.st_mode), after.st_mtime_ns) == (0o604, before.st_mtime_ns)
    assert xattrs(photo) == before_xattrs
    assert all_files(root) == [photo]
    restored = store.journal_entry(entry.id)
    assert restored is not None and restored.state is JournalState.RESTORED
    assert restored.restored_at is not None
    assert store.is_not_duplicate(11, 5)
    assert [e["event"] for e in logs if e["event"] == "file_restored"] == ["file_restored"]
    if not has_xattrs:
        pytest.skip("this filesystem refuses user.* xattrs; the rest was checked")


def test_restore_refuses_to_overwrite(q: Quarantine, store: Store, root: Path) -> None:
    photo = write_photo(root / "a.jpg")
    entry = move(q, photo)
    write_photo(photo, OTHER_PHOTO)
    with pytest.raises(RestoreRefused, match="already exists"):
        q.restore(entry.id)
    assert photo.read_bytes() == OTHER_PHOTO
    assert entry.quarantine_path.read_bytes() == PHOTO
    assert store.journal_entry(entry.id) == entry


def test_restore_refuses_a_dangling_symlink_at_the_original_place(
    q: Quarantine, tmp_path: Path, root: Path
) -> None:
    photo = write_photo(root / "a.jpg")
    entry = move(q, photo)
    victim = tmp_path / "victim.txt"
    photo.symlink_to(victim)
    with pytest.raises(RestoreRefused):
        q.restore(entry.id)
    assert not victim.exists()
    assert entry.quarantine_path.read_bytes() == PHOTO


def test_restore_recreates_missing_directories_with_their_modes(q: Quarantine, root: Path) -> None:
    photo = write_photo(root / "album" / "day1" / "a.jpg")
    (root / "album" / "day1").chmod(0o750)
    entry = move(q, photo)
    shutil.rmtree(root / "album")
    assert q.restore(entry.id) == photo
    assert photo.read_bytes() == PHOTO
    assert stat.S_IMODE((root / "album" / "day1").stat().st_mode) == 0o750


def _crafted_entry(store: Store, original: Path, held: Path) -> int:
    entry = store.journal_intent(
        file_id=1,
        original_path=original,
        quarantine_path=held,
        sha256=hashlib.sha256(PHOTO).hexdigest(),
        duplicate_of=2,
        tier=Tier.EXACT,
        similarity=1.0,
        rule="exact_bytes",
    )
    store.journal_set_state(entry.id, JournalState.DONE)
    return entry.id


@pytest.mark.parametrize(
    "original",
    ["photos/../../escaped.jpg", "photos/a/../../escaped.jpg", "escaped.jpg", "photos-x/a.jpg"],
)
def test_restore_refuses_a_crafted_row_leaving_the_roots(
    q: Quarantine, store: Store, tmp_path: Path, root: Path, original: str
) -> None:
    held = write_photo(root / QDIR / "a.jpg")
    entry_id = _crafted_entry(store, tmp_path / original, held)
    with pytest.raises(RestoreRefused):
        q.restore(entry_id)
    assert held.read_bytes() == PHOTO
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "state"]


def test_restore_refuses_a_crafted_row_taking_a_file_from_outside_the_quarantine(
    q: Quarantine, store: Store, tmp_path: Path, root: Path
) -> None:
    secret = write_photo(tmp_path / "secret.jpg")
    library = write_photo(root / "keeper.jpg")
    for held in (secret, library, root / QDIR / ".." / "keeper.jpg"):
        entry_id = _crafted_entry(store, root / "stolen.jpg", held)
        with pytest.raises(RestoreRefused):
            q.restore(entry_id)
    assert not (root / "stolen.jpg").exists()
    assert secret.exists() and library.exists()


def test_restore_never_follows_a_symlinked_directory_out_of_the_root(
    q: Quarantine, tmp_path: Path, root: Path
) -> None:
    photo = write_photo(root / "album" / "a.jpg")
    entry = move(q, photo)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "album").rmdir()
    (root / "album").symlink_to(outside)
    with pytest.raises(RestoreRefused):
        q.restore(entry.id)
    assert list(outside.iterdir()) == []
    assert entry.quarantine_path.read_bytes() == PHOTO


def test_restore_refuses_unknown_and_already_restored_entries(q: Quarantine, root: Path) -> None:
    entry = move(q, write_photo(root / "a.jpg"))
    q.restore(entry.id)
    with pytest.raises(RestoreRefused, match="restored"):
        q.restore(entry.id)
    with pytest.raises(RestoreRefused, match="no quarantine entry"):
        q.restore(999)


def test_restore_reports_a_quarantined_file_that_went_missing(q: Quarantine, root: Path) -> None:
    entry = move(q, write_photo(root / "a.jpg"))
    entry.quarantine_path.unlink()
    with pytest.raises(QuarantineError, match="no longer there"):
        q.restore(entry.id)
    assert not (root / "a.jpg").exists()


def test_cross_filesystem_restore_by_injected_exdev(
    q: Quarantine, store: Store, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = write_photo(root / "a.jpg", mode=0o600)
    before = photo.lstat()
    entry = move(q, photo)
    calls = exdev_once(monkeypatch)
    assert q.restore(entry.id) == photo
    assert calls[0] == "a.jpg"
    assert photo.read_bytes() == PHOTO
    assert (stat.S_IMODE(photo.lstat().st_mode), photo.lstat().st_mtime_ns) == (
        0o600,
        before.st_mtime_ns,
    )
    assert all_files(root) == [photo]
    assert store.journal_entry(entry.id).state is JournalState.RESTORED  # type: ignore[union-attr]


# --- purge and listings ---


def test_purge_deletes_only_entries_older_than_asked(store: Store, root: Path) -> None:
    now = [0.0]
    q = Quarantine(store, [root], clock=lambda: now[0])
    old = move(q, write_photo(root / "old" / "a.jpg"))
    time.sleep(0.05)
    new = move(q, write_photo(root / "b.jpg", OTHER_PHOTO))
    gap = new.created_at - old.created_at
    assert gap > 0
    now[0] = new.created_at + 3600
    with capture_logs() as logs:
        purged = q.purge(older_than_seconds=3600 + gap / 2)
    assert [(e.id, e.state) for e in purged] == [(old.id, JournalState.PURGED)]
    assert store.journal_entry(new.id).state is JournalState.DONE  # type: ignore[union-attr]
    assert not old.quarantine_path.exists()
    assert not (root / QDIR / "old").exists()  # emptied directories go too
    assert [e["event"] for e in logs] == ["quarantine_purged"]
    assert new.quarantine_path.read_bytes() == OTHER_PHOTO
    assert [e.id for e in q.purge(older_than_seconds=0)] == [new.id]
    assert (root / QDIR).is_dir()
    assert q.purge(older_than_seconds=0) == []
    assert q.entries(include_missing=True) == []  # purged entries are no longer quarantined
    assert [e.id for e in store.journal_entries([JournalState.PURGED])] == [old.id, new.id]


def test_listing_shows_what_is_in_the_quarantine(store: Store, root: Path) -> None:
    q = Quarantine(store, [root], clock=lambda: 2e9)
    a = move(q, write_photo(root / "a.jpg"), duplicate_of=40, rule="exact_bytes")
    b = move(q, write_photo(root / "b.jpg", OTHER_PHOTO), tier=Tier.DUPLICATE, rule="verified")
    q.restore(b.id)
    (item,) = q.entries()
    assert item.entry == a
    assert item.size == len(PHOTO)
    assert item.age_seconds == pytest.approx(2e9 - a.created_at)
    assert (item.entry.duplicate_of, item.entry.tier, item.entry.rule) == (
        40,
        Tier.EXACT,
        "exact_bytes",
    )
    a.quarantine_path.with_name("kept.jpg").hardlink_to(a.quarantine_path)
    a.quarantine_path.unlink()  # gone by hand: listed only when asked for
    assert q.entries() == []
    (missing,) = q.entries(include_missing=True)
    assert (missing.entry, missing.size) == (a, None)
    a.quarantine_path.hardlink_to(a.quarantine_path.with_name("kept.jpg"))
    assert q.find(root / "a.jpg") == [a]
    assert q.find(a.quarantine_path) == [a]
    assert q.find(root / "b.jpg") == []
    assert q.contains(a.quarantine_path)
    assert not q.contains(root / "a.jpg")
    assert q.quarantine_dirs() == [root / QDIR]


# --- recovery of pending moves, decided by the disk ---


def _pending(store: Store, root: Path, name: str = "a.jpg") -> JournalEntry:
    return store.journal_intent(
        file_id=1,
        original_path=root / "album" / name,
        quarantine_path=root / QDIR / "album" / name,
        sha256=hashlib.sha256(PHOTO).hexdigest(),
        duplicate_of=2,
        tier=Tier.EXACT,
        similarity=1.0,
        rule="exact_bytes",
    )


def _at_source(root: Path, data: bytes = PHOTO) -> Path:
    return write_photo(root / "album" / "a.jpg", data)


def _in_quarantine(root: Path, data: bytes = PHOTO) -> Path:
    return write_photo(root / QDIR / "album" / "a.jpg", data)


def _hard_linked(root: Path) -> None:
    (root / QDIR / "album").mkdir(parents=True)
    os.link(_at_source(root), root / QDIR / "album" / "a.jpg")


def _with_partial(root: Path) -> None:
    _at_source(root)
    write_photo(root / QDIR / "album" / ".dupwatch-partial-1", PHOTO[:1000])


RECOVERY_CASES: dict[str, tuple[Callable[[Path], Any], JournalState, dict[str, bytes], str]] = {
    "only at the source": (
        _at_source,
        JournalState.ROLLED_BACK,
        {"album/a.jpg": PHOTO},
        "quarantine_rolled_back",
    ),
    "only in the quarantine": (
        _in_quarantine,
        JournalState.DONE,
        {f"{QDIR}/album/a.jpg": PHOTO},
        "quarantine_recovered",
    ),
    "two names of one inode (link fallback)": (
        _hard_linked,
        JournalState.DONE,
        {f"{QDIR}/album/a.jpg": PHOTO},
        "quarantine_recovered",
    ),
    "verified copy beside its source": (
        lambda r: (_at_source(r), _in_quarantine(r)),
        JournalState.DONE,
        {f"{QDIR}/album/a.jpg": PHOTO},
        "quarantine_recovered",
    ),
    "source rewritten after the copy": (
        lambda r: (_at_source(r, OTHER_PHOTO), _in_quarantine(r)),
        JournalState.ROLLED_BACK,
        {"album/a.jpg": OTHER_PHOTO},
        "quarantine_rolled_back",
    ),
    "two different files": (
        lambda r: (_at_source(r), _in_quarantine(r, OTHER_PHOTO)),
        JournalState.ROLLED_BACK,
        {"album/a.jpg": PHOTO, f"{QDIR}/album/a.jpg": OTHER_PHOTO},
        "quarantine_recovery_conflict",
    ),
    "source gone, other bytes in the quarantine": (
        lambda r: _in_quarantine(r, OTHER_PHOTO),
        JournalState.ROLLED_BACK,
        {f"{QDIR}/album/a.jpg": OTHER_PHOTO},
        "quarantine_recovery_conflict",
    ),
    "neither": (
        lambda r: (r / QDIR).mkdir(),
        JournalState.ROLLED_BACK,
        {},
        "quarantine_recovery_conflict",
    ),
    "a partial copy beside the source": (
        _with_partial,
        JournalState.ROLLED_BACK,
        {"album/a.jpg": PHOTO},
        "quarantine_rolled_back",
    ),
}


@pytest.mark.parametrize("case", list(RECOVERY_CASES))
def test_recover_resolves_a_pending_move_from_the_disk(
    q: Quarantine, store: Store, root: Path, case: str
) -> None:
    setup, state, files, event = RECOVERY_CASES[case]
    entry = _pending(store, root)
    setup(root)
    with capture_logs() as logs:
        changed = q.recover()
    assert [(e.id, e.state) for e in changed] == [(entry.id, state)]
    assert store.journal_pending() == []
    assert {str(p.relative_to(root)): p.read_bytes() for p in all_files(root)} == files
    assert event in [e["event"] for e in logs]
    if event == "quarantine_recovery_conflict":
        assert any(e["log_level"] == "error" for e in logs)


def test_recover_waits_for_a_root_that_is_not_mounted(
    q: Quarantine, store: Store, root: Path
) -> None:
    entry = _pending(store, root)
    with capture_logs() as logs:
        assert q.recover() == []
    assert store.journal_pending() == [entry]
    assert "quarantine_recovery_deferred" in [e["event"] for e in logs]
    _at_source(root)
    (root / QDIR).mkdir()
    assert [e.state for e in q.recover()] == [JournalState.ROLLED_BACK]


def _done(q: Quarantine, root: Path) -> JournalEntry:
    return move(q, write_photo(root / "album" / "a.jpg"))


def test_recover_finishes_a_restore_interrupted_after_the_rename(
    q: Quarantine, store: Store, root: Path
) -> None:
    entry = _done(q, root)
    entry.quarantine_path.rename(entry.original_path)
    assert [e.state for e in q.recover()] == [JournalState.RESTORED]
    assert store.is_not_duplicate(7, 3)


def test_recover_finishes_a_restore_interrupted_between_link_and_unlink(
    q: Quarantine, store: Store, root: Path
) -> None:
    entry = _done(q, root)
    os.link(entry.quarantine_path, entry.original_path)
    assert [e.state for e in q.recover()] == [JournalState.RESTORED]
    assert all_files(root) == [entry.original_path]


def test_recover_rolls_back_an_unfinished_cross_filesystem_restore(
    q: Quarantine, store: Store, root: Path
) -> None:
    entry = _done(q, root)
    marker = entry.quarantine_path.with_name(f".dupwatch-restoring-{entry.id}")
    entry.quarantine_path.rename(marker)
    write_photo(root / "album" / f".dupwatch-partial-{entry.id}", PHOTO[:500])
    assert q.recover() == []
    assert all_files(root) == [entry.quarantine_path]
    assert store.journal_entry(entry.id) == entry
    assert q.restore(entry.id) == entry.original_path


def test_recover_completes_a_cross_filesystem_restore_whose_copy_landed(
    q: Quarantine, store: Store, root: Path
) -> None:
    entry = _done(q, root)
    marker = entry.quarantine_path.with_name(f".dupwatch-restoring-{entry.id}")
    shutil.copy2(entry.quarantine_path, entry.original_path)
    entry.quarantine_path.rename(marker)
    assert [e.state for e in q.recover()] == [JournalState.RESTORED]
    assert all_files(root) == [entry.original_path]


def test_recover_leaves_quarantined_files_alone_when_a_copy_reappears(
    q: Quarantine, store: Store, root: Path
) -> None:
    # A phone syncing the same photo back is not the owner restoring it.
    entry = _done(q, root)
    write_photo(entry.original_path)
    assert q.recover() == []
    assert store.journal_entry(entry.id) == entry
    assert len(all_files(root)) == 2


def test_recover_summarises_entries_whose_file_is_gone(
    q: Quarantine, store: Store, root: Path
) -> None:
    entries = [move(q, write_photo(root / f"{n}.jpg", PHOTO + bytes([n]))) for n in range(3)]
    for entry in entries:
        entry.quarantine_path.unlink()
    with capture_logs() as logs:
        assert q.recover() == []
    (summary,) = [e for e in logs if e["event"] == "quarantine_entries_without_file"]
    assert summary["log_level"] == "warning"
    assert summary["count"] == 3


# --- crash safety: the process dies at every step, recovery runs in a fresh process ---

JOURNAL_WRITES = frozenset(
    {"journal_intent", "journal_set_state", "journal_update_quarantine_path", "add_not_duplicate"}
)
CRASHED = 70


class CheckpointedJournal:
    """The real store, with a crash checkpoint before each journal write."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name not in JOURNAL_WRITES:
            return attr

        def write(*args: Any, **kwargs: Any) -> Any:
            fsops.checkpoint(name)
            return attr(*args, **kwargs)

        return write


@dataclasses.dataclass(frozen=True)
class Scene:
    root: Path
    db: Path
    photo: Path
    expected: StatKey
    entry_id: int | None
    xattrs: dict[str, bytes]
    bystanders: dict[Path, bytes]


def make_scene(base: Path, *, quarantined: bool, fresh: bool = False) -> Scene:
    """A photo to move (or already quarantined, to restore) beside files nothing may touch.

    Unless ``fresh``, the photo's name is already taken in the quarantine; if ``fresh``, the
    quarantine does not exist yet (a move) or the photo's directory is gone (a restore).
    """
    root, state = base / "photos", base / "state"
    state.mkdir(parents=True)
    photo = write_photo(root / "album" / "IMG_0001.JPG", mode=0o640)
    try_set_xattrs(photo)
    keeper = write_photo(root / "keeper.jpg", OTHER_PHOTO)
    bystanders = {keeper: OTHER_PHOTO}
    if not fresh:
        taken = write_photo(root / QDIR / "album" / "IMG_0001.JPG", PHOTO + b"another")
        bystanders[taken] = taken.read_bytes()
    before = xattrs(photo)
    entry_id = None
    with Store.open(state / "dupwatch.db") as store:
        if quarantined:
            entry_id = move(Quarantine(store, [root]), photo, file_id=7, duplicate_of=3).id
            if fresh:
                (root / "album").rmdir()
    return Scene(
        root,
        state / "dupwatch.db",
        photo,
        StatKey.of(photo) if not quarantined else StatKey(0, 0, 0, 0, 0),
        entry_id,
        before,
        bystanders,
    )


def move_in(scene: Scene) -> None:
    with Store.open(scene.db) as store:
        Quarantine(CheckpointedJournal(store), [scene.root]).move(  # type: ignore[arg-type]
            scene.photo,
            expected=scene.expected,
            sha256=hashlib.sha256(PHOTO).hexdigest(),
            file_id=7,
            duplicate_of=3,
            tier=Tier.EXACT,
            similarity=1.0,
            rule="exact_bytes",
        )


def restore_out(scene: Scene) -> None:
    assert scene.entry_id is not None
    with Store.open(scene.db) as store:
        Quarantine(CheckpointedJournal(store), [scene.root]).restore(  # type: ignore[arg-type]
            scene.entry_id
        )


def no_patch() -> None:
    pass


def patch_link_fallback() -> None:
    def unsupported(*_args: object) -> None:
        raise OSError(errno.EINVAL, "RENAME_NOREPLACE not supported")

    fsops._renameat2 = unsupported  # type: ignore[assignment]  # in the forked child only


def run_crashing_at(k: int, work: Callable[[], None]) -> int:
    """Run ``work`` in a forked child that dies at its k-th disk or journal write."""
    seen = 0

    def die_at_k(_operation: str) -> None:
        nonlocal seen
        seen += 1
        if seen == k:
            os._exit(CRASHED)  # no cleanup, no flush: as abrupt as SIGKILL

    def crashing_work() -> None:
        fsops.set_fault_hook(die_at_k)
        work()

    return run_in_fork(crashing_work)


def recover_and_audit(scene: Scene) -> Path:
    """Recover in this process, check every invariant, and return where the photo is."""
    with Store.open(scene.db) as store:
        Quarantine(store, [scene.root]).recover()
        assert store.journal_pending() == []
        assert store.integrity_problems(quick=False) == []
        files = all_files(scene.root)
        assert [p for p in files if p.name.startswith(LITTER_PREFIXES)] == []
        digest = hashlib.sha256(PHOTO).hexdigest()
        (where,) = [p for p in files if sha(p) == digest]  # exactly once: no loss, no limbo
        assert {p: p.read_bytes() for p in scene.bystanders} == scene.bystanders
        assert len(files) == 1 + len(scene.bystanders)
        st = where.lstat()
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, 1_600_000_000_123_456_789)
        assert xattrs(where) == scene.xattrs
        done = [e for e in store.journal_entries() if e.state is JournalState.DONE]
        if where == scene.photo:
            assert done == []
        else:
            assert [e.quarantine_path for e in done] == [where]
        restored = [e for e in store.journal_entries() if e.state is JournalState.RESTORED]
        # Only a restore (the photo started in the quarantine) may mark the pair as not alike.
        restore_finished = scene.entry_id is not None and where == scene.photo
        assert bool(restored) == store.is_not_duplicate(7, 3) == restore_finished
    return where


def recover_in(scene: Scene) -> None:
    with Store.open(scene.db) as store:
        Quarantine(CheckpointedJournal(store), [scene.root]).recover()  # type: ignore[arg-type]


def enumerate_recovery_crashes(scene: Scene) -> int:
    """From one post-crash state, crash the recovery at each of its steps in turn."""
    home = scene.root.parent
    saved = home.with_name(home.name + "-saved")
    shutil.copytree(home, saved, symlinks=True)  # copy2: bytes, modes, times and xattrs
    for j in range(1, 100):
        code = run_crashing_at(j, lambda: recover_in(scene))
        assert code in (CRASHED, 0), f"recovery crash point {j}: the child failed with {code}"
        recover_and_audit(scene)
        shutil.rmtree(home)
        shutil.copytree(saved, home, symlinks=True)
        if code == 0:
            shutil.rmtree(saved)
            return j - 1
    raise AssertionError("recovery never completed")


def enumerate_crash_points(
    base: Path,
    work: Callable[[Scene], None],
    patch: Callable[[], object],
    *,
    quarantined: bool,
    fresh: bool,
    nested: bool,
) -> tuple[int, int]:
    """Crash at every step in turn until the operation completes, and (where the disk holds
    no hard links) crash the recovery of each of those states at every step as well.
    Returns the number of crash points in the operation and in its recoveries."""
    recovery_points = 0
    for k in range(1, 200):
        scene = make_scene(base / f"k{k}", quarantined=quarantined, fresh=fresh)
        code = run_crashing_at(k, lambda scene=scene: (patch(), work(scene)))  # type: ignore[misc]
        assert code in (CRASHED, 0), f"crash point {k}: the child failed with {code}"
        links = [p.lstat().st_nlink for p in all_files(scene.root)]
        if nested and code == CRASHED and set(links) == {1}:
            recovery_points += enumerate_recovery_crashes(scene)
        where = recover_and_audit(scene)
        if code == 0:
            finished_in_quarantine = where != scene.photo
            assert finished_in_quarantine != quarantined
            return k - 1, recovery_points
    raise AssertionError("the operation never completed")


CRASH_SCENARIOS: dict[str, tuple[Callable[[Scene], None], Callable[[], object], bool, bool]] = {
    "same-fs move": (move_in, no_patch, False, False),
    "same-fs move, new quarantine": (move_in, no_patch, False, True),
    "same-fs move, link fallback": (move_in, patch_link_fallback, False, False),
    "cross-fs move": (move_in, exdev_once, False, False),
    "cross-fs move, new quarantine": (move_in, exdev_once, False, True),
    "restore": (restore_out, no_patch, True, False),
    "restore, parents recreated": (restore_out, no_patch, True, True),
    "restore, link fallback": (restore_out, patch_link_fallback, True, False),
    "cross-fs restore": (restore_out, exdev_once, True, False),
}


def _crash_points(tmp_path: Path, scenario: str, *, nested: bool) -> tuple[int, int]:
    work, patch, quarantined, fresh = CRASH_SCENARIOS[scenario]
    points = enumerate_crash_points(
        tmp_path, work, patch, quarantined=quarantined, fresh=fresh, nested=nested
    )
    # The counts go into the reliability figures; -s shows them.
    print(f"{scenario}: {points[0]} crash points, {points[1]} in recovery")
    return points


@pytest.mark.parametrize("scenario", list(CRASH_SCENARIOS))
def test_every_crash_point_recovers_with_each_file_exactly_once(
    tmp_path: Path, scenario: str
) -> None:
    points, _ = _crash_points(tmp_path, scenario, nested=False)
    assert points >= 4


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(CRASH_SCENARIOS))
def test_a_crash_during_recovery_is_recovered_too(tmp_path: Path, scenario: str) -> None:
    points, recovery_points = _crash_points(tmp_path, scenario, nested=True)
    assert points >= 4 and recovery_points >= 1


KILLING_CHILD = """
import os, signal, sys
from pathlib import Path
from dupwatch import fsops
from dupwatch.quarantine import Quarantine
from dupwatch.records import StatKey, Tier
from dupwatch.store import Store

db, root, photo, digest, kill_before = sys.argv[1:]
store = Store.open(Path(db))

def die(*_args, **_kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

class Journal:  # the real store; SIGKILL instead of one chosen journal write
    def __getattr__(self, name):
        return die if name == kill_before else getattr(store, name)

fsops.set_fault_hook(lambda operation: die() if operation == kill_before else None)
path = Path(photo)
Quarantine(Journal(), [Path(root)]).move(
    path, expected=StatKey.of(path), sha256=digest, file_id=7, duplicate_of=3,
    tier=Tier.EXACT, similarity=1.0, rule="exact_bytes",
)
print("not killed")
"""


@pytest.mark.parametrize(
    ("kill_before", "ends_in_quarantine"),
    [("rename", False), ("journal_set_state", True)],
    ids=["between-intent-and-rename", "between-rename-and-done"],
)
def test_sigkill_mid_move_then_restart_keeps_each_file_exactly_once(
    tmp_path: Path, kill_before: str, ends_in_quarantine: bool
) -> None:
    scene = make_scene(tmp_path, quarantined=False)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLING_CHILD,
            str(scene.db),
            str(scene.root),
            str(scene.photo),
            hashlib.sha256(PHOTO).hexdigest(),
            kill_before,
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr.decode(errors="replace")
    with Store.open(scene.db) as store:
        assert [e.state for e in store.journal_entries()] == [JournalState.INTENT]
    where = recover_and_audit(scene)
    assert (where != scene.photo) == ends_in_quarantine


def test_symlink_swaps_racing_moves_never_touch_files_outside_the_roots(
    q: Quarantine, tmp_path: Path, root: Path
) -> None:
    # Each photo has a twin outside the root with the same inode, so only the path (never the
    # identity check) can tell a move through a swapped-in symlink from a proper one.
    album, outside = root / "album", tmp_path / "outside"
    outside.mkdir()
    photos = [write_photo(album / f"{n}.jpg", PHOTO + bytes([n])) for n in range(60)]
    for photo in photos:
        os.link(photo, outside / photo.name)
    keys = {photo: (StatKey.of(photo), sha(photo)) for photo in photos}
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            album.rename(root / "album-real")
            album.symlink_to(outside)
            time.sleep(0.001)
            album.unlink()
            (root / "album-real").rename(album)
            time.sleep(0.002)  # leave moves a chance to succeed too

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    outcomes = []
    try:
        for photo in photos:
            expected, digest = keys[photo]
            try:
                move(q, photo, expected=expected, sha256=digest)
                outcomes.append("moved")
            except FileChanged:
                outcomes.append("refused")
    finally:
        stop.set()
        swapper.join(timeout=10)
    assert not swapper.is_alive()
    assert sorted(p.name for p in outside.iterdir()) == sorted(p.name for p in photos)
    assert all(p.lstat().st_nlink == 2 for p in outside.iterdir())  # each twin still linked
    assert len(all_files(root)) == len(photos)
    assert outcomes.count("moved") == len(all_files(root / QDIR))
    print("swap race:", outcomes.count("moved"), "moved,", outcomes.count("refused"), "refused")
