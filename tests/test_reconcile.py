"""Reconciliation walks, filters and root facts on real directory trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from dupwatch import reconcile as reconcile_module
from dupwatch import roots as roots_module
from dupwatch.filters import PathFilter, root_of
from dupwatch.reconcile import LastWalk, WalkStats, is_changed, reconcile, walk_files
from dupwatch.records import StatKey
from dupwatch.roots import RootSentinel, filesystem_type, is_network_filesystem

DATA = b"\xff\xd8\xff\xe0 not decoded by the walk \xff\xd9"


def found(root: Path, stats: WalkStats | None = None) -> set[Path]:
    return {p for p, _ in walk_files(root, PathFilter(), stats=stats)}


def test_walk_never_follows_symlinks_to_files_directories_or_loops(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "album").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(DATA)
    (root / "album" / "real.jpg").write_bytes(DATA)
    (root / "link_to_outside").symlink_to(outside, target_is_directory=True)
    (root / "link_to_file.jpg").symlink_to(outside / "secret.jpg")
    (root / "album" / "loop").symlink_to(root, target_is_directory=True)
    (root / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    stats = WalkStats()
    assert found(root, stats) == {root / "album" / "real.jpg"}
    assert stats.complete


def test_walk_skips_fifos_and_sockets_named_like_photos(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "real.png").write_bytes(DATA)
    assert found(tmp_path) == {tmp_path / "real.png"}


def test_walk_survives_an_unreadable_directory_and_reports_no_missing_below_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked, open_dir = tmp_path / "locked", tmp_path / "open"
    locked.mkdir()
    open_dir.mkdir()
    (locked / "hidden.jpg").write_bytes(DATA)
    (open_dir / "seen.jpg").write_bytes(DATA)
    known = LastWalk()
    for p, k in walk_files(tmp_path, PathFilter()):
        known.record(p, k)
    locked.chmod(0)
    if os.geteuid() == 0:
        # root reads mode-000 directories anyway; make this one fail the way it would for
        # the service user.
        real_scandir = os.scandir

        def scandir(path: str) -> object:
            if os.fspath(path) == os.fspath(locked):
                raise PermissionError(13, "Permission denied", path)
            return real_scandir(path)

        monkeypatch.setattr(reconcile_module.os, "scandir", scandir)
    try:
        with capture_logs() as logs:
            result = reconcile(tmp_path, PathFilter(), known, lambda p, k: None)
    finally:
        locked.chmod(0o755)
    assert result.unreadable == (locked,)
    assert not result.complete
    assert result.missing == ()
    assert any(e["event"] == "walk_unreadable" for e in logs)


def test_walk_handles_non_utf8_and_control_character_names(tmp_path: Path) -> None:
    names = [
        b"caf\xe9.jpg",
        b"line\nbreak.jpg",
        b"\x1b[31mred.jpg",
        b"-rf.jpg",
        b"x" * 251 + b".jpg",
    ]
    base = os.fsencode(tmp_path)
    for name in names:
        fd = os.open(base + b"/" + name, os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, DATA)
        os.close(fd)
    got = found(tmp_path)
    assert {os.fsencode(p) for p in got} == {base + b"/" + n for n in names}


def test_walk_survives_entries_vanishing_mid_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(3):
        (tmp_path / f"d{i}").mkdir()
        (tmp_path / f"d{i}" / "a.jpg").write_bytes(DATA)
    real_scandir = os.scandir

    def scandir(path: str) -> object:
        # The directory is deleted between being listed and being read.
        if os.fspath(path).endswith("d1"):
            raise FileNotFoundError(2, "No such file or directory", path)
        return real_scandir(path)

    monkeypatch.setattr(reconcile_module.os, "scandir", scandir)
    stats = WalkStats()
    assert found(tmp_path, stats) == {tmp_path / "d0" / "a.jpg", tmp_path / "d2" / "a.jpg"}
    assert stats.vanished == 1


def test_reconcile_yields_only_new_or_changed_files_and_lists_missing(tmp_path: Path) -> None:
    same, changed, new, gone = (
        tmp_path / n for n in ("same.jpg", "changed.jpg", "new.jpg", "x.jpg")
    )
    for p in (same, changed):
        p.write_bytes(DATA)
    known = LastWalk()
    known.record(same, StatKey.of(same))
    known.record(changed, StatKey.of(changed))
    known.record(gone, StatKey(1, 1, 1, 1, 1))
    changed.write_bytes(DATA + b"longer")
    new.write_bytes(DATA)
    offered: list[Path] = []
    result = reconcile(tmp_path, PathFilter(), known, lambda p, k: offered.append(p))
    assert sorted(offered) == sorted([changed, new])
    assert result.missing == (gone,)
    assert result.files == 3 and result.changed == 2


def test_is_changed_ignores_device_and_on_network_roots_ctime_and_inode() -> None:
    base = StatKey(10, 100, 200, 1, 5)
    assert not is_changed(base, StatKey(10, 100, 200, 2, 5), strict=True)
    assert is_changed(base, StatKey(10, 100, 201, 1, 5), strict=True)
    assert not is_changed(base, StatKey(10, 100, 999, 9, 77), strict=False)
    assert is_changed(base, StatKey(11, 100, 200, 1, 5), strict=False)
    assert is_changed(None, base, strict=False)


@pytest.mark.parametrize(
    ("relative", "wanted"),
    [
        ("a.jpg", True),
        ("Sub/B.JPEG", True),
        ("x.HEIC", True),
        ("x.txt", False),
        ("x", False),
        (".x.jpg", False),
        ("sub/.thumbs/x.jpg", False),
        ("@eaDir/x.jpg/SYNOPHOTO_THUMB_M.jpg", False),
        ("#recycle/x.jpg", False),
        ("x.jpg.part", False),
        ("x.JPG.crdownload", False),
        ("x.tmp", False),
        ("~syncthing~x.jpg.tmp", False),
        (".x.jpg.AbC123", False),
        ("._x.jpg", False),
        (".dupwatch-quarantine/x.jpg", False),
    ],
)
def test_path_filter_defaults(tmp_path: Path, relative: str, wanted: bool) -> None:
    assert PathFilter().wanted_file(tmp_path / relative, tmp_path) is wanted


def test_path_filter_extra_globs_and_extensions(tmp_path: Path) -> None:
    f = PathFilter(include_extensions=["JPG", ".png"], ignore_globs=["*-edited.*", "Raw/*"])
    assert f.wanted_file(tmp_path / "a.jpg", tmp_path)
    assert f.wanted_file(tmp_path / "b.PNG", tmp_path)
    assert not f.wanted_file(tmp_path / "c.gif", tmp_path)
    assert not f.wanted_file(tmp_path / "a-edited.jpg", tmp_path)
    assert not f.wanted_file(tmp_path / "Raw" / "a.jpg", tmp_path)
    assert f.wanted_file(tmp_path / "Other" / "Raw" / "a.jpg", tmp_path)
    assert not f.wanted_dir(tmp_path / "Raw", tmp_path)
    assert not f.wanted_file(tmp_path.parent / "elsewhere.jpg", tmp_path)


def test_root_of_picks_the_deepest_root(tmp_path: Path) -> None:
    outer, inner = tmp_path, tmp_path / "inner"
    assert root_of(inner / "a.jpg", [outer, inner]) == inner
    assert root_of(tmp_path / "a.jpg", [outer, inner]) == outer
    assert root_of(Path("/elsewhere/a.jpg"), [outer, inner]) is None
    # A sibling whose name starts like the root is not inside it.
    assert root_of(Path(str(inner) + "2") / "a.jpg", [inner]) is None


def test_filesystem_type_reads_the_longest_mount_point_with_escapes(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    share = tmp_path / "My Photos"
    share.mkdir()
    escaped = str(share).replace(" ", "\\040")
    mounts.write_text(
        "/dev/vda / ext4 rw 0 0\n"
        f"//nas/photos {escaped} cifs rw 0 0\n"
        f"server:/x {tmp_path}/My nfs4 rw 0 0\n"
    )
    assert filesystem_type(share / "sub", mounts) == "cifs"
    assert filesystem_type(tmp_path, mounts) == "ext4"


@pytest.mark.parametrize(
    ("fs_type", "network"),
    [
        ("nfs4", True),
        ("cifs", True),
        ("smb3", True),
        ("fuse.sshfs", True),
        ("fuse.mergerfs", True),
        ("fuseblk", False),
        ("ext4", False),
        ("btrfs", False),
        (None, False),
    ],
)
def test_network_filesystem_types(fs_type: str | None, network: bool) -> None:
    assert is_network_filesystem(fs_type) is network


def test_sentinel_detects_missing_emptied_and_returned_roots(tmp_path: Path) -> None:
    root = tmp_path / "share"
    root.mkdir()
    (root / "a.jpg").write_bytes(DATA)
    sentinel = RootSentinel(root)
    assert sentinel.check() is None
    (root / "a.jpg").unlink()
    assert sentinel.check() == "emptied"
    root.rmdir()
    assert sentinel.check() == "missing"
    root.write_bytes(DATA)
    assert sentinel.check() == "not_a_directory"
    root.unlink()
    root.mkdir()
    (root / "a.jpg").write_bytes(DATA)
    assert sentinel.check() is None


def test_sentinel_pauses_an_empty_mount_point_the_store_knows_files_for(tmp_path: Path) -> None:
    def knows() -> bool:
        return True

    sentinel = RootSentinel(tmp_path, knows)
    assert sentinel.check() == "emptied"
    (tmp_path / "a.jpg").write_bytes(DATA)
    assert sentinel.check() is None
    assert RootSentinel(tmp_path / "new").check() == "missing"
    (tmp_path / "new").mkdir()
    assert RootSentinel(tmp_path / "new").check() is None  # a new, empty library is fine


def test_sentinel_pauses_a_root_on_another_device(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(DATA)
    sentinel = RootSentinel(tmp_path)
    assert sentinel.check() is None
    # Stand-in for a remount: the device first seen healthy differs from the current one.
    sentinel._device = tmp_path.stat().st_dev + 1
    assert sentinel.check() == "device_changed"


def test_a_root_renamed_away_while_it_is_checked_is_missing_not_unreadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "share"
    root.mkdir()
    sentinel = RootSentinel(root)

    def renamed_away_meanwhile(path: Path) -> bool:
        path.rename(tmp_path / "share-away")  # after the stat, before the listing
        raise FileNotFoundError(2, "No such file or directory", str(path))

    monkeypatch.setattr(roots_module, "_has_entries", renamed_away_meanwhile)
    assert sentinel.check() == "missing"
