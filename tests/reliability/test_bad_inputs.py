"""Bad inputs through the real ``dupwatch scan``: broken, hostile and non-regular files.

Next to each truncated photo the library holds its complete original, so a decoder that
accepted a half-written file would make it look like a duplicate. Expected: no crash, no hang,
no quarantine of anything incomplete or undecodable, each file reported once with its reason,
the decoder worker's peak memory bounded; completed files are then processed normally.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from audit import Baseline, audit
from conftest import CONFIG, Home
from photos import encode, photo, write

from dupwatch.records import JournalState
from dupwatch.statepaths import database_path
from dupwatch.store import Store

PEAK_RSS_LIMIT_MIB = 512
HANG_LIMIT_S = 30.0


def png_bomb(width: int, height: int) -> bytes:
    """A valid grey PNG of ``width`` x ``height`` zero pixels: about 1 MB for 400 megapixels."""
    squeeze = zlib.compressobj(9)
    row = bytes(1 + width)  # filter byte + pixels
    body = b"".join(squeeze.compress(row) for _ in range(height)) + squeeze.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A real small JPEG whose frame header claims ``width`` x ``height``."""
    data = bytearray(encode(photo(7)))
    at = 2
    while at < len(data):
        marker, length = data[at + 1], struct.unpack(">H", data[at + 2 : at + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[at + 5 : at + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        at += 2 + length
    raise AssertionError("no frame header found")


class PeakRss:
    """Samples the peak RSS (VmHWM) of every child of one process while it runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kib, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for status in Path("/proc").glob("[0-9]*/status"):
                try:
                    fields = dict(
                        line.split(":", 1)
                        for line in status.read_text().splitlines()
                        if ":" in line
                    )
                except OSError:
                    continue
                if fields.get("PPid", "").strip() == str(self.pid) and "VmHWM" in fields:
                    self.peak_kib = max(self.peak_kib, int(fields["VmHWM"].split()[0]))


def scan_json(home: Home, *paths: Path) -> tuple[list[dict[str, object]], int, float]:
    """Run ``dupwatch scan --json``; returns the per-file reports, worker peak KiB, seconds."""
    started = time.monotonic()
    process = subprocess.Popen(
        [*home.argv(), "scan", "--json", *map(str, paths or (home.root,))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with PeakRss(process.pid) as rss:
        out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    reports = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return reports, rss.peak_kib, time.monotonic() - started


@pytest.fixture
def special_files(tmp_path: Path) -> Iterator[Callable[[Path], list[Path]]]:
    sockets: list[socket.socket] = []

    def make(root: Path) -> list[Path]:
        fifo = root / "odd" / "fifo.jpg"
        fifo.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(fifo)
        sock_path = root / "odd" / "socket.jpg"
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(os.fspath(sock_path))
        sockets.append(sock)
        return [fifo, sock_path]

    try:
        yield make
    finally:
        for sock in sockets:
            sock.close()


def test_bad_inputs_never_crash_hang_or_get_quarantined_and_complete_files_are_processed(
    make_home: Callable[..., Home], special_files: Callable[[Path], list[Path]]
) -> None:
    home = make_home()
    root = home.root
    originals: dict[Path, bytes] = {}
    truncated: dict[Path, bytes] = {}
    for n, ext in enumerate((".jpg", ".png", ".webp")):
        for cut in (10, 50, 99):
            full = encode(photo(20 + n * 3 + cut % 7), ext)
            originals[write(root / "originals" / f"{ext[1:]}-{cut}{ext}", full)] = full
            part = root / "incoming" / f"{ext[1:]}-{cut}{ext}"
            truncated[write(part, full[: len(full) * cut // 100])] = full
    bad = {
        write(root / "bad" / "zero.jpg", b""): "empty",
        write(root / "bad" / "one.jpg", b"\xff"): "one byte",
        write(root / "bad" / "bomb.png", png_bomb(20_000, 20_000)): "decompression bomb",
        write(root / "bad" / "huge-header.jpg", jpeg_claiming(65_500, 65_500)): "bomb header",
        write(root / "bad" / "text.jpg", b"Dear diary,\n" * 200): "text",
        write(root / "bad" / "noise.png", os.urandom(50_000)): "noise",
        write(root / "bad" / "zip.webp", b"PK\x03\x04" + os.urandom(5000)): "zip",
        write(root / "bad" / "html.tiff", b"<html><body>404</body></html>"): "html",
    }
    sparse = root / "bad" / "sparse-1TB.jpg"
    with sparse.open("wb") as fh:
        fh.truncate(1 << 40)
    bad[sparse] = "1 TB sparse"
    specials = special_files(root)
    # Not the sparse file: hashing it would read a terabyte of zeros.
    baseline = Baseline.take([p for p in [*originals, *bad] if p != sparse])
    assert (root / "bad" / "bomb.png").stat().st_size < 2 * 2**20

    reports, peak_kib, seconds = scan_json(home)
    print(f"bad inputs: scan {seconds:.1f} s, worker peak RSS {peak_kib / 1024:.0f} MiB")
    by_path: dict[str, list[dict[str, object]]] = {}
    for r in reports:
        by_path.setdefault(str(r["path"]), []).append(r)
    for path in [*bad, *truncated]:
        (report,) = by_path[str(path)]  # reported exactly once
        assert report["tier"] == "failed", (path, report)
        assert report["reason"], (path, report)
        assert report["moved"] is None
    for path in specials:
        assert str(path) not in by_path  # never a photo; never opened (a FIFO would block)
    assert peak_kib / 1024 <= PEAK_RSS_LIMIT_MIB
    assert seconds < HANG_LIMIT_S * 4
    with Store.open(database_path(home.state)) as store:
        moved = {e.original_path for e in store.journal_entries([JournalState.DONE])}
    assert moved.isdisjoint([*bad, *truncated])

    # The uploads complete: each file is now a byte copy of its original and is processed.
    for path, full in truncated.items():
        with path.open("ab") as fh:
            fh.write(full[path.stat().st_size :])
        baseline.add(path)
    reports, _, _ = scan_json(home)
    done = {str(r["path"]): r for r in reports}
    for path in truncated:
        assert done[str(path)]["tier"] == "exact", done[str(path)]
    audit(baseline, [root], home.state)


NOBODY = 65534
DROP = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
SPAWN_PROBE = (
    "import multiprocessing as m\n"
    "import dupwatch.cli, numpy\n"
    "if __name__ == '__main__':\n"
    "    p = m.get_context('spawn').Process(target=print); p.start(); p.join()\n"
    "    raise SystemExit(p.exitcode)\n"
)


def unprivileged_python() -> tuple[list[str], dict[str, str]] | None:
    """A command prefix running this project's Python as ``nobody``, and its environment.

    A virtualenv made from an interpreter under /root points at a binary ``nobody`` cannot
    execute, and the worker process is spawned from that binary. The system's interpreter of
    the same minor version loads the same packages (same ABI) when given their directories.
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, *filter(None, [shutil.which(version, path="/usr/bin:/bin")])]
    # Everything this interpreter imports from beyond its own standard library.
    own = [p for p in sys.path if p and Path(p).is_dir() and not p.startswith(sys.base_prefix)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(own)}
    for python in candidates:
        probe = subprocess.run(
            [*DROP, python, "-c", SPAWN_PROBE],
            capture_output=True, env=env, cwd="/", timeout=120, check=False,
        )  # fmt: skip
        if probe.returncode == 0:
            return [*DROP, python], env
    return None


def test_mode_000_files_and_unreadable_directories_are_reported_not_quarantined(
    model_cache: Path,
) -> None:
    """Run as an unprivileged user (root reads mode-000 files), the way the unit runs it."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv to drop privileges")
    base = Path(tempfile.mkdtemp(prefix="dupwatch-mode000-"))
    try:
        home = Home(base / "photos", base / "state", base / "config.toml")
        home.root.mkdir()
        shutil.copytree(model_cache, home.state / "models")
        home.config.write_text(CONFIG.format(settle=0.3))
        data = encode(photo(64))
        locked = write(home.root / "locked.jpg", data, mtime_ns=10**18)
        copy = write(home.root / "copy.jpg", data, mtime_ns=2 * 10**18)
        hidden = write(home.root / "closed" / "inside.jpg", data)
        for path in [base, *base.rglob("*")]:
            os.lchown(path, NOBODY, NOBODY)
        baseline = Baseline.take([locked, copy, hidden])
        locked.chmod(0)
        hidden.parent.chmod(0)
        argv, env = home.argv(), dict(os.environ)
        if os.geteuid() == 0:
            found = unprivileged_python()
            if found is None:
                pytest.skip("no Python here that an unprivileged user can run with our packages")
            argv, env = [*found[0], *argv[1:]], found[1]
        done = subprocess.run(
            [*argv, "scan", "--json", str(home.root)],
            capture_output=True,
            text=True,
            env=env,
            cwd=base,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        reports = {r["path"]: r for r in map(json.loads, done.stdout.splitlines())}
        assert reports[str(locked)]["tier"] == "failed" and reports[str(locked)]["reason"]
        assert reports[str(copy)]["moved"] is None
        assert str(hidden) not in reports
        assert "walk_unreadable" in done.stderr
        locked.chmod(0o644)
        hidden.parent.chmod(0o755)
        audit(baseline, [home.root], home.state, check_store=False)
    finally:
        for path in [base, *base.rglob("*")]:
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    path.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)
