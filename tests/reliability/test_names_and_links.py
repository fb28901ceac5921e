"""Hostile names, symlinks and files reachable twice, through the real scan and restore.

Names: undecodable bytes, a newline, ANSI escapes, a leading dash, 255 bytes, NFC/NFD twins.
Each must round-trip byte-exact through the store, the quarantine and ``dupwatch restore``, with
control characters escaped in every log line. Symlinks to secrets, devices and FIFOs, and a
directory loop, are never read through. A file reachable twice is never its own duplicate.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from audit import Baseline, audit, sha256_of
from conftest import Home
from photos import encode, photo, write

from dupwatch.records import JournalState, Tier
from dupwatch.statepaths import database_path
from dupwatch.store import Store

NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")
HOSTILE = [
    os.fsdecode(b"raw-\xff\xfe-bytes.jpg"),
    "new\nline.jpg",
    "\x1b[31mred\x1b[0m\x07.jpg",
    "-rf --no-preserve-root.jpg",
    "x" * 251 + ".jpg",
    f"{NFC}.jpg",
    f"{NFD}.jpg",
]


def _no_raw_control(text: str) -> None:
    for line in text.splitlines():
        assert "\x1b" not in line and "\x07" not in line, repr(line)
        if line.startswith("{"):
            json.loads(line)  # one event per line, never split by a newline in a name


def test_hostile_names_round_trip_byte_exact_through_quarantine_and_restore(
    make_home: Callable[..., Home],
) -> None:
    home = make_home()
    # Each hostile name is a byte copy of a plainly named keeper, so the scan quarantines it.
    copies = []
    for n, name in enumerate(HOSTILE):
        data = encode(photo(40 + n))
        write(home.root / f"keeper-{n}.jpg", data, mtime_ns=1_500_000_000 * 10**9)
        copies.append(write(home.root / "in" / name, data, mtime_ns=1_600_000_000 * 10**9))
    assert len(list((home.root / "in").iterdir())) == len(HOSTILE)  # NFC and NFD are two files
    baseline = Baseline.take(sorted(p for p in home.root.rglob("*") if p.is_file()))

    scan = home.cli("scan", str(home.root))
    assert scan.returncode == 0, scan.stderr[-3000:]
    _no_raw_control(scan.stdout + scan.stderr)
    with Store.open(database_path(home.state)) as store:
        entries = {e.original_path: e for e in store.journal_entries([JournalState.DONE])}
    assert set(entries) == set(copies)
    for path, entry in entries.items():
        assert os.fsencode(entry.quarantine_path.name) == os.fsencode(path.name)
        assert sha256_of(entry.quarantine_path) == baseline.files[path].sha256

    for path, entry in entries.items():
        done = home.cli("restore", str(entry.id))
        assert done.returncode == 0, done.stderr
        _no_raw_control(done.stdout + done.stderr)
        assert len(done.stdout.splitlines()) == 1
        assert sha256_of(path) == baseline.files[path].sha256  # back at the exact bytes
    audit(baseline, [home.root], home.state)
    with Store.open(database_path(home.state)) as store:
        restored = [e for e in store.journal_entries() if e.state is JournalState.RESTORED]
    assert len(restored) == len(HOSTILE)


@pytest.fixture
def fifo_watch(tmp_path: Path) -> Iterator[tuple[Path, list[int]]]:
    """A FIFO outside the root and a thread counting how often anyone opened it to read."""
    fifo = tmp_path / "outside" / "pipe"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    opened: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.01):
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader, as it must be
                    raise
                continue
            opened.append(1)
            os.close(fd)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield fifo, opened
    finally:
        stop.set()
        thread.join(timeout=10)


def test_symlinks_are_never_read_through(
    make_home: Callable[..., Home], fifo_watch: tuple[Path, list[int]], tmp_path: Path
) -> None:
    home = make_home()
    fifo, opened = fifo_watch
    secret = write(tmp_path / "outside" / "secret.jpg", encode(photo(60)))
    write(home.root / "album" / "real.jpg", encode(photo(61)))
    links = {
        "shadow.jpg": Path("/etc/shadow"),
        "zero.jpg": Path("/dev/zero"),
        "fifo.jpg": fifo,
        "secret.jpg": secret,
        "secret-dir": secret.parent,
        "loop": Path(".."),
    }
    for name, target in links.items():
        (home.root / "album" / name).symlink_to(target)
    baseline = Baseline.take([home.root / "album" / "real.jpg"])

    done = home.cli("scan", "--json", str(home.root), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    reported = [json.loads(line)["path"] for line in done.stdout.splitlines()]
    assert reported == [str(home.root / "album" / "real.jpg")]
    assert opened == []
    with Store.open(database_path(home.state)) as store:
        assert store.files_by_sha256(sha256_of(secret)) == []
    audit(baseline, [home.root], home.state)


def test_a_crafted_journal_row_leaving_the_roots_is_refused_by_restore(
    make_home: Callable[..., Home], tmp_path: Path
) -> None:
    home = make_home()
    write(home.root / "a.jpg", encode(photo(62)))
    assert home.cli("scan", str(home.root)).returncode == 0
    outside = tmp_path / "etc"
    outside.mkdir()
    victim = write(outside / "x", b"must stay")
    crafted = [
        (home.root / ".." / ".." / "etc" / "x", home.root / ".dupwatch-quarantine" / "x"),
        (victim, home.root / ".dupwatch-quarantine" / "y"),
        (home.root / "b.jpg", victim),
    ]
    write(home.root / ".dupwatch-quarantine" / "x", b"planted")
    write(home.root / ".dupwatch-quarantine" / "y", b"planted")
    with Store.open(database_path(home.state)) as store:
        ids = []
        for original, held in crafted:
            entry = store.journal_intent(
                file_id=None,
                original_path=original,
                quarantine_path=held,
                sha256="0" * 64,
                duplicate_of=None,
                tier=Tier.EXACT,
                similarity=1.0,
                rule="crafted",
            )
            store.journal_set_state(entry.id, JournalState.DONE)
            ids.append(entry.id)
    for entry_id in ids:
        done = home.cli("restore", str(entry_id))
        assert done.returncode != 0
        (line,) = done.stderr.strip().splitlines()[-1:]
        assert line.startswith("error: "), done.stderr
    assert victim.read_bytes() == b"must stay"
    assert not (home.root / "b.jpg").exists()


def test_a_file_reachable_twice_is_never_its_own_duplicate(
    make_home: Callable[..., Home],
) -> None:
    home = make_home()
    album = home.root / "album"
    original = write(album / "IMG_0001.jpg", encode(photo(63)))
    os.link(original, home.root / "hardlink.jpg")
    (home.root / "symlinked-album").symlink_to(album)
    bind = home.root / "bind"
    bind.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(album), str(bind)], check=False).returncode
    try:
        baseline = Baseline.take([original])
        # Overlapping: the root and a directory inside it, in one scan.
        done = home.cli("scan", "--json", str(home.root), str(album))
        assert done.returncode == 0, done.stderr[-3000:]
        reports = [json.loads(line) for line in done.stdout.splitlines()]
        assert [r for r in reports if r["moved"] is not None] == []
        assert {r["tier"] for r in reports} <= {"unique"}
        again = home.cli("scan", "--json", str(home.root))
        assert again.returncode == 0, again.stderr[-3000:]
        assert all(json.loads(x)["moved"] is None for x in again.stdout.splitlines())
        audit(baseline, [home.root], home.state, check_store=False)
        assert original.exists() and (home.root / "hardlink.jpg").exists()
    finally:
        if mounted == 0:
            subprocess.run(["umount", str(bind)], check=False)
    if mounted != 0:
        pytest.skip("bind mounts are not allowed here; hard link and symlink were checked")
