"""Fuzzing: mutated JPEG/PNG/WebP/TIFF/HEIC files through the real scan and its worker.

A seeded mutator (bit flips, overwritten bytes, duplicated or dropped runs, truncation, header
fields) turns real photos into hostile files. Every one goes through ``dupwatch scan``, whose
worker process decodes and embeds: the scan must never crash (a decoder crash costs only its
worker, which is restarted), each file is reported once, and nothing that does not fully decode
is ever quarantined. The originals sit beside them, so a mutant decoded "successfully" from
garbage would look like a duplicate.
"""

from __future__ import annotations

import io
import json
import random
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from audit import Baseline, audit
from conftest import Home
from photos import photo
from PIL import Image

from dupwatch.records import JournalState
from dupwatch.statepaths import database_path
from dupwatch.store import Store

CI_FILES = 500
INTERESTING = (0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE)


def seeds() -> dict[str, bytes]:
    """Real photos in every format the daemon reads (HEIC if pillow-heif can write it)."""
    formats = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "tiff": "TIFF"}
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        formats["heic"] = "HEIF"
    except ImportError:
        pass
    out = {}
    for n, (ext, fmt) in enumerate(formats.items()):
        buf = io.BytesIO()
        Image.fromarray(photo(300 + n)[:240, :320]).save(buf, format=fmt)
        out[ext] = buf.getvalue()
    return out


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four seeded mutations of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(6)
        at = rng.randrange(len(out))
        if kind == 0:  # flip bits
            for _ in range(rng.randint(1, 8)):
                i = rng.randrange(len(out))
                out[i] ^= 1 << rng.randrange(8)
        elif kind == 1:  # interesting bytes, often in the header
            i = rng.randrange(min(len(out), 256)) if rng.random() < 0.6 else at
            out[i] = rng.choice(INTERESTING)
        elif kind == 2:  # duplicate a run
            run = out[at : at + rng.randint(1, 512)]
            out[at:at] = run
        elif kind == 3:  # drop a run
            del out[at : at + rng.randint(1, 512)]
        elif kind == 4:  # truncate
            del out[max(1, at) :]
        elif len(out) > 2:  # a 16-bit size field, big-endian or little-endian, made odd
            i = rng.randrange(min(len(out) - 2, 512))
            out[i : i + 2] = rng.choice((b"\xff\xff", b"\x00\x00", b"\xff\xdc", b"\x01\x00"))
        if not out:
            out = bytearray(b"\x00")
    return bytes(out)


def decodes_fully(path: Path) -> bool:
    """Pillow decodes every pixel (warnings about skipped metadata tags are not failures)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                image.load()
    except Exception:
        return False
    return True


def fuzz_run(home: Home, count: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    originals = seeds()
    for ext, data in originals.items():
        (home.root / "originals").mkdir(parents=True, exist_ok=True)
        (home.root / "originals" / f"seed.{ext}").write_bytes(data)
    mutants = []
    exts = sorted(originals)
    for i in range(count):
        ext = exts[i % len(exts)]
        path = home.root / "fuzz" / f"{i // 100:02d}" / f"m{i:05d}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(mutate(originals[ext], rng))
        mutants.append(path)
    baseline = Baseline.take([p for p in home.root.rglob("*") if p.is_file()])

    done = home.cli("scan", "--json", str(home.root), timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    paths = [r["path"] for r in reports]
    assert sorted(paths) == sorted(str(p) for p in baseline.files)  # each exactly once
    with Store.open(database_path(home.state)) as store:
        moved = store.journal_entries([JournalState.DONE])
    undecodable_moved = [e.original_path for e in moved if not decodes_fully(e.quarantine_path)]
    assert undecodable_moved == []
    audit(baseline, [home.root], home.state)
    failed = sum(r["tier"] == "failed" for r in reports)
    return {
        "files": count,
        "failed": failed,
        "quarantined": len(moved),
        "worker_restarts": done.stderr.count('"worker_restarted"'),
    }


def test_mutated_photos_never_crash_the_scan_or_get_quarantined_undecodable(
    make_home: Callable[..., Home],
) -> None:
    figures = fuzz_run(make_home(), CI_FILES, seed=1)
    print(f"fuzz: {figures}")


@pytest.mark.slow
def test_fuzz_long(make_home: Callable[..., Home]) -> None:
    figures = fuzz_run(make_home(), 10_000, seed=2)
    print(f"fuzz: {figures}")


def test_the_mutator_is_seeded_and_changes_files() -> None:
    data = seeds()["png"]
    first = [mutate(data, random.Random(5)) for _ in range(3)]
    assert first == [mutate(data, random.Random(5)) for _ in range(3)]
    assert all(m != data for m in first)
    rng = random.Random(6)
    for _ in range(2000):  # tiny leftovers of earlier truncations mutate without error
        assert mutate(bytes(rng.randrange(1, 4)), rng)
