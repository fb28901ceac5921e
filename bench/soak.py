"""Soak: ``dupwatch run`` for an hour while photos arrive, files are renamed and a share drops out.

    python bench/soak.py                            # 20,000 files over 60 minutes
    python bench/soak.py --files 1000 --minutes 4   # a quick check of the bench itself

Two roots: ``library`` and ``share``. Files arrive at a steady rate (small JPEGs cut from real
photos, each distinct; a share of them exact copies of earlier arrivals, which the daemon
quarantines). Now and then an already processed file is renamed into another folder of its
root: a rename is not a new photo and must not be processed again. Halfway, the share root is
renamed away for ``--outage-minutes`` and back (an unmounted share): no state change for it
meanwhile, re-attached within 90 s, its files not treated as new. Every few seconds the
daemon's and its children's RSS, thread count and open fds are read from /proc.

At the end: every arrival processed exactly once (``file_processed``/``file_failed`` lines and
the store), RSS growth after the first 1,000 files, threads and fds, then the reliability
audit (tests/reliability/audit.py). Prints a Markdown block; exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
sys.path[:0] = [str(HERE), str(TESTS), str(TESTS / "reliability")]
from audit import Baseline, audit  # noqa: E402
from daemon_harness import DaemonProcess, write_config  # noqa: E402
from proc_sampler import Sampler  # noqa: E402
from soak_photos import PhotoMaker  # noqa: E402
from soak_report import Outage, report  # noqa: E402

from dupwatch.statepaths import database_path, model_cache_dir  # noqa: E402
from dupwatch.store import Store  # noqa: E402

MODELS = HERE / ".cache" / "daemon-bench-models"  # daemon_bench.py's converted model, if made
OUTCOMES = ("file_processed", "file_failed")


class Soak:
    """The files put in, where each one is now, and what the daemon said about them."""

    def __init__(self, daemon: DaemonProcess, library: Path, share: Path, seed: int) -> None:
        self.daemon, self.library, self.share = daemon, library, share
        self.rng = random.Random(seed)
        self.baseline = Baseline()
        self.arrived: dict[Path, bytes] = {}  # arrival path -> bytes
        self.current: dict[Path, Path] = {}  # current path -> arrival path
        self.renames: list[tuple[Path, Path, float]] = []  # arrival path, new path, when
        self.renamable: list[Path] = []  # arrival paths processed, in place, never renamed
        self.outcomes: Counter[Path] = Counter()
        self.moved: set[Path] = set()  # arrival paths whose file went into the quarantine
        self.copies = 0
        self.folders: list[tuple[Path, int]] = []  # folders renamed whole, files in each
        self._seen = 0
        self.done = 0  # arrivals with an outcome; read by the sampler thread

    def consume(self) -> None:
        """Take the daemon's new log lines into the counts."""
        events = self.daemon.snapshot()
        for event in events[self._seen :]:
            if event.get("event") not in OUTCOMES:
                continue
            path = Path(event["path"])
            origin = self.current.get(path, path)
            self.outcomes[path] += 1
            if self.outcomes[path] == 1 and path in self.arrived:
                self.done += 1
            if event.get("moved"):
                self.moved.add(self.current.get(Path(event["moved"]), Path(event["moved"])))
            elif self.outcomes[path] == 1 and origin == path and path in self.arrived:
                self.renamable.append(path)
        self._seen = len(events)

    def consume_all_processed(self) -> bool:
        self.consume()
        return self.processed() == len(self.arrived)

    def arrive(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.arrived[path] = data
        self.current[path] = path
        self.baseline.add(path)

    def rename_one(self, roots: tuple[Path, ...]) -> bool:
        """Rename a processed file into another folder of its root; False if none is free."""
        while self.renamable:
            origin = self.renamable.pop(self.rng.randrange(len(self.renamable)))
            root = self.library if origin.is_relative_to(self.library) else self.share
            if origin in self.moved or root not in roots or not origin.exists():
                continue
            target = root / "renamed" / f"{origin.parent.name}-{origin.name}"
            target.parent.mkdir(exist_ok=True)
            origin.rename(target)
            del self.current[origin]
            self.current[target] = origin
            self.baseline.forget(origin)
            self.baseline.add(target)
            self.renames.append((origin, target, time.time()))
            return True
        return False

    def rename_folder(self, folder: Path) -> int:
        """Rename a whole folder (an owner sorting an album); returns how many files moved."""
        if not folder.is_dir():
            return 0
        target = folder.with_name(folder.name + " (sorted)")
        folder.rename(target)
        moved = 0
        for new in sorted(target.iterdir()):
            old = folder / new.name
            origin = self.current.pop(old, None)
            if origin is None:
                continue
            self.current[new] = origin
            self.baseline.forget(old)
            self.baseline.add(new)
            self.renames.append((origin, new, time.time()))
            moved += 1
        self.folders.append((folder, moved))
        return moved

    def processed(self) -> int:
        return self.done

    def under(self, root: Path) -> list[Path]:
        return [p for p in self.arrived if p.is_relative_to(root)]


def run(args: argparse.Namespace, work: Path) -> int:
    library, share, state = work / "library", work / "share", work / "state"
    for d in (library, share, state):
        d.mkdir(parents=True)
    if MODELS.is_dir():
        shutil.copytree(MODELS, model_cache_dir(state))
    config = write_config(work / "config.toml", settle=args.settle, rescan=args.rescan)
    photos = PhotoMaker(args.seed)
    daemon = DaemonProcess(state, config, [library, share])
    soak = Soak(daemon, library, share, args.seed)
    sampler: Sampler | None = None
    outage = Outage()
    try:
        daemon.wait_started(timeout=900)
        sampler = Sampler(daemon.proc.pid, soak.processed, every=args.sample_seconds)
        rate = args.files / (args.minutes * 60)
        pull_at, back_at = int(args.files * 0.5), None
        folder_renames_at = {int(args.files * q) for q in (0.3, 0.8)}
        roots: tuple[Path, ...] = (library, share)
        begin = time.monotonic()
        for i in range(args.files):
            time.sleep(max(0.0, begin + i / rate - time.monotonic()))
            soak.consume()
            if i == pull_at:
                roots = (library,)
                outage.prepare(soak, share)
                outage.pull(share, state)
                back_at = time.monotonic() + args.outage_minutes * 60
            if back_at is not None and time.monotonic() >= back_at:
                outage.restore(share, state)
                back_at = None
                roots = (library, share)
            root = roots[i % len(roots)]
            path = root / f"album{i // 400:03d}" / f"IMG_{i:05d}.jpg"
            if soak.arrived and soak.rng.random() < args.copy_share:
                data = soak.arrived[soak.rng.choice(list(soak.arrived)[-2000:])]
                soak.copies += 1
            else:
                data = photos.jpeg(i)
            soak.arrive(path, data)
            album = (i - 500) // 400 - 1  # complete for 500 arrivals: processed long ago
            if i in folder_renames_at and album >= 0:
                soak.rename_folder(library / f"album{album:03d}")
            if soak.rng.random() < args.rename_share and not outage.active:
                soak.rename_one(roots if outage.returned_for(60) else (library,))
        if back_at is not None:  # a run shorter than the outage: let it end before draining
            time.sleep(max(0.0, back_at - time.monotonic()))
            outage.restore(share, state)
        fed_s = time.monotonic() - begin
        drain_started = time.monotonic()
        try:
            daemon.wait_for(
                lambda: soak.consume_all_processed(),
                timeout=args.drain_minutes * 60,
                what="every arrival processed",
            )
        except AssertionError as exc:  # report what did happen; the counts show the rest
            print(f"not drained: {str(exc)[:300]}", file=sys.stderr)
            if daemon.proc.poll() is not None:
                raise
        drain_s = time.monotonic() - drain_started
        time.sleep(args.quiet_seconds)  # time for any late re-processing to show
        soak.consume()
        sampler.stop()
        sampler.take()
        outage.check_after(soak, share)
        code, stop_s = daemon.stop(timeout=30)
        soak.consume()
    finally:
        if sampler is not None:
            sampler.stop()
        daemon.close()
    (work / "daemon.log").write_text("\n".join(daemon.raw) + "\n", encoding="utf-8")
    with (work / "samples.jsonl").open("w", encoding="utf-8") as out:
        for sample in sampler.samples:
            out.write(json.dumps(dataclasses.asdict(sample)) + "\n")
    with Store.open(database_path(state)) as store:
        counts = store.file_counts()
    # The audit's reconciliation would first process whatever was left: only after a drain.
    audited = (
        audit(soak.baseline, [library, share], state)
        if soak.processed() == len(soak.arrived)
        else None
    )
    text, ok = report(
        args=args, soak=soak, samples=sampler.samples, outage=outage, counts=counts,
        fed_s=fed_s, drain_s=drain_s, exit_code=code, stop_s=stop_s, audited=audited,
        events=daemon.snapshot(),
    )  # fmt: skip
    print(text)
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--minutes", type=float, default=60.0, help="arrivals spread over this")
    parser.add_argument("--outage-minutes", type=float, default=5.0)
    parser.add_argument("--copy-share", type=float, default=0.05, help="arrivals that are copies")
    parser.add_argument("--rename-share", type=float, default=0.03, help="renames per arrival")
    parser.add_argument("--settle", type=float, default=1.0, help="settle_seconds")
    parser.add_argument("--rescan", default="15m", help="rescan_interval")
    parser.add_argument("--sample-seconds", type=float, default=5.0)
    parser.add_argument("--drain-minutes", type=float, default=30.0)
    parser.add_argument("--quiet-seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--work", type=Path, help="keep the files here (default: a temp dir)")
    args = parser.parse_args()
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=False)
        return run(args, args.work)
    with tempfile.TemporaryDirectory(prefix="dupwatch-soak-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
